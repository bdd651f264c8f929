"""Differential privacy end to end: budgets at every node, receipts that carry the spend,
an exchange that checks the chain, and a node killed mid-job."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from decimal import Decimal

import pytest

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.query import plan_for, submit_query, tls_of
from fedtrust.config import load_node_config
from fedtrust.demo.federation import build_federation
from fedtrust.demo.reference import pooled_answer
from fedtrust.errors import Error, JobFailed, VerificationError
from fedtrust.exchange.verify import JOB_KINDS, verify_receipt
from fedtrust.node.store import NodeStore
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.jobs import sign_job
from fedtrust.trust.receipts import (
    GENESIS,
    ReceiptBundle,
    ledger_entry_digest,
    sign_acknowledgement,
    sign_attestation,
    sign_coordinator_statement,
    verify_acknowledgement,
    verify_attestation,
    verify_statement_of_coordinator,
)
from fedtrust.trust.verify import verify_bundle

from jobs_helper import make_job

PRIVACY = {"epsilon_total": "3", "delta": "1e-6", "epsilon_per_query": "1"}
SMALL = {"bank-a": 1500, "bank-b": 1200, "insurer-c": 900}
SQL = "SELECT region, COUNT(*) AS n, AVG(age) AS mean_age FROM loans GROUP BY region"


def ask(fed, sql=SQL):
    buyer = load_identity(fed.buyer_dir)
    return submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, sql)


@pytest.fixture(scope="module")
def dp_fed(tmp_path_factory):
    fed = build_federation(tmp_path_factory.mktemp("dp"), SMALL, min_group_size=5, privacy=PRIVACY)
    with fed:
        yield fed


def test_dp_answers_are_noisy_near_the_truth_and_each_job_costs_its_epsilon(dp_fed):
    res = ask(dp_fed)
    contract = res.verified.contract
    cols, truth = pooled_answer(plan_for(contract, SQL), SQL, list(dp_fed.data.values()), 1)
    truth = {r[0]: r for r in truth}
    for row, err in zip(res.table.rows, res.noisy.stderr):
        exact = truth[row[0]]
        assert abs(row[1] - exact[1]) <= 8 * err[1] + 1  # noisy count near the pooled count
        assert 18 <= row[2] <= 100
    assert res.verified.epsilon_spent == {n: "1.000000" for n in SMALL}
    assert all(a.dp and a.delta == "0.000000" for a in res.verified.attestations)
    assert res.result["dp"]["noise"]["mechanism"] == "discrete-laplace"


def test_budget_runs_out_with_a_message_saying_what_is_left_and_receipts_chain(dp_fed, tmp_path):
    receipts = []
    while True:
        try:
            receipts.append(ask(dp_fed).receipt)
        except JobFailed as e:
            assert "privacy budget exhausted" in str(e) and "only ε=0.000000 of ε=3.000000 is left" in str(e)
            break
    assert len(receipts) >= 2
    for name in SMALL:
        store = dp_fed.nodes[name].runtime.store
        assert store.spent_epsilon(store.budgets()[0].contract_digest) == Decimal(3)
    for r in receipts:
        assert "recorded" in verify_receipt(dp_fed.exchange_dir, r).summary
    # the node's own report, from its config file
    p = subprocess.run([sys.executable, "-m", "fedtrust.cli.main", "node", "budget", "--config",
                        str(dp_fed.node_configs["bank-a"]), "--json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)[0]
    assert report["spent_epsilon"] == "3.000000" and report["remaining_epsilon"] == "0.000000"
    assert report["jobs"] == 3


def test_exchange_flags_a_double_spend_at_one_chain_position(tmp_path):
    fed = build_federation(tmp_path, {"bank-a": 300, "bank-b": 300}, min_group_size=1,
                           privacy={"epsilon_total": "10", "delta": "1e-6", "epsilon_per_query": "1"})
    with fed:
        first, second = ask(fed).receipt, ask(fed).receipt
    verify_receipt(fed.exchange_dir, first)
    # bank-a signs its second release again, claiming the chain position of the first (a double spend)
    ids = {n: load_identity(fed.root / "credentials" / n) for n in ("bank-a", "bank-b", "coord", "analyst")}
    contract = verify_bundle(first, ids["analyst"].exchange_key, JOB_KINDS).contract
    atts = []
    for env in second.attestations:
        att = verify_attestation(env, contract)
        if att.node == "bank-a":
            first_att = [verify_attestation(e, contract) for e in first.attestations if
                         verify_attestation(e, contract).node == "bank-a"][0]
            att = replace(att, chain=first_att.chain)
            env = sign_attestation(att, ids["bank-a"].signer)
        atts.append(env)
    st = verify_statement_of_coordinator(second.statement, contract)
    st = replace(st, attestations=tuple(e.digest for e in atts),
                 relayed=tuple(replace(r, attestation=e.digest) for r, e in zip(st.relayed, atts)))
    statement = sign_coordinator_statement(st, ids["coord"].signer)
    ack = sign_acknowledgement(verify_acknowledgement(second.acknowledgement, contract), ids["analyst"].signer)
    forged = ReceiptBundle(second.contract, second.job, tuple(atts), statement, ack)
    with pytest.raises(VerificationError, match="double spend: node bank-a"):
        verify_receipt(fed.exchange_dir, forged)
    # the honest second receipt still verifies and extends the chain
    verify_receipt(fed.exchange_dir, second)


def _start_node_process(config):
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "fedtrust.cli.main", "node", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"on port (\d+)", line)
        if m:
            return proc, int(m.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("node daemon did not start")


def test_a_node_killed_mid_job_restarts_consistent_and_never_released_an_undebited_result(tmp_path):
    fed = build_federation(tmp_path, {"bank-a": 2000, "bank-b": 2000}, min_group_size=1,
                           privacy={"epsilon_total": "1000", "delta": "1e-6", "epsilon_per_query": "1"})
    # bank-a is a real daemon process we can kill; bank-b and the coordinator run in-process
    proc, port = _start_node_process(fed.node_configs["bank-a"])
    fed.node_configs = {"bank-b": fed.node_configs["bank-b"]}
    try:
        fed.start()
        fed.coordinator.runtime.addresses["bank-a"] = f"127.0.0.1:{port}"
        buyer = load_identity(fed.buyer_dir)
        client = CoordinatorClient(fed.coordinator_address, tls_of(buyer), fed.coordinator_name)
        signed = []
        for _ in range(24):
            job, raw, keys = make_job(buyer, fed.contract_path, SQL)
            signed.append((sign_job(job, buyer.signer), raw, keys))
        outcomes: dict[int, object] = {}

        def run(i):
            env, raw, keys = signed[i]
            try:
                outcomes[i] = client.submit_query(env.to_json(), raw, keys.public_bytes)
            except Error as e:
                outcomes[i] = e

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(signed))]

        def start_all():
            for t in threads:
                t.start()
                time.sleep(0.15)

        starter = threading.Thread(target=start_all)
        starter.start()
        # kill as soon as one job has come back: later jobs are then computing or not yet started
        deadline = time.time() + 60
        while time.time() < deadline and not any(not isinstance(o, Exception) for o in list(outcomes.values())):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        starter.join()
        for t in threads:
            t.join(timeout=120)
        delivered = [i for i, o in outcomes.items() if not isinstance(o, Exception)]
        failed = [i for i, o in outcomes.items() if isinstance(o, Exception)]
        print(f"delivered {len(delivered)}, failed {len(failed)}")
        assert failed, "the kill came too late to interrupt any job"
        assert delivered, "the kill came too early: no job finished before it"

        # the ledger after the crash: a complete, consistent chain within budget
        store = NodeStore(load_node_config(tmp_path / "config" / "bank-a.toml").state)
        debits = store.debits()
        prev, cum = GENESIS, Decimal(0)
        for k, d in enumerate(debits, start=1):
            assert d.chain.seq == k and d.chain.prev == prev
            cum += Decimal(d.epsilon)
            assert Decimal(d.chain.cumulative_epsilon) == cum
            assert ledger_entry_digest("bank-a", d.contract_digest, d.job_digest, d.epsilon, d.delta,
                                       d.chain) == d.entry_digest
            prev = d.entry_digest
        released = {r.debit.job_digest: r for r in store.releases()}
        assert len(released) == len(debits)  # no debit without its attestation and outputs, and vice versa
        # every result a buyer got was debited before it left the node
        for i in delivered:
            assert signed[i][0].digest in released

        # restart: the daemon serves again, and a retried job gets its recorded release without a second debit
        proc, port = _start_node_process(tmp_path / "config" / "bank-a.toml")
        fed.coordinator.runtime.addresses["bank-a"] = f"127.0.0.1:{port}"
        before = len(store.debits())
        for i in failed[:3]:
            env, raw, keys = signed[i]
            client.submit_query(env.to_json(), raw, keys.public_bytes)
        retried_new = sum(1 for i in failed[:3] if signed[i][0].digest not in released)
        assert len(store.debits()) == before + retried_new
    finally:
        proc.kill()
        proc.wait(timeout=30)
        fed.stop()
