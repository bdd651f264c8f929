"""Two-phase dispatch: every owner admits a job (all checks, nothing spent) before any owner computes or
debits, so a job that cannot reach or is refused by one owner costs nobody anything, and the buyer's error
names the job and the owner. Nodes enforce it themselves: no run without every participant's admission."""
from __future__ import annotations

import re

import pytest

from fedtrust.buyer.query import submit_query
from fedtrust.buyer.train import submit_training
from fedtrust.config import load_node_config
from fedtrust.coordinator.node_client import run_query_on_node
from fedtrust.demo.federation import build_federation
from fedtrust.errors import JobFailed, PolicyViolation, VerificationError
from fedtrust.node.daemon import NodeDaemon
from fedtrust.trust.admission import Admission, sign_admission
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import sign_job

from jobs_helper import admit_everywhere, make_job
from training_helper import make_spec

OWNERS = {"bank-a": 600, "bank-b": 500, "insurer-c": 400}
PRIVACY = {"epsilon_total": "4", "delta": "1e-6", "epsilon_per_query": "0.5", "training_epsilon": "1"}
SQL = "SELECT region, COUNT(*) AS n, AVG(age) AS mean_age FROM loans GROUP BY region"


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    f = build_federation(tmp_path_factory.mktemp("twophase"), OWNERS, min_group_size=5, privacy=PRIVACY)
    with f:
        yield f


def spent(fed):
    """Per live node: ledger rows and ε spent, and audited releases."""
    out = {}
    for name, d in fed.nodes.items():
        if d.server is None:
            continue
        store = d.runtime.store
        out[name] = (len(store.debits()), [b.spent_epsilon for b in store.budgets()],
                     sum(1 for e in store.audit_events() if e.event == "released"))
    return out


def newest_job_id(fed) -> str:
    return max((fed.buyer_dir / "jobs").iterdir(), key=lambda p: p.stat().st_mtime).name


def buyer(fed):
    return load_identity(fed.buyer_dir)


def test_one_owner_down_costs_nobody_anything_and_the_error_names_the_job_and_the_owner(fed):
    before = spent(fed)
    fed.nodes["insurer-c"].stop()
    try:
        with pytest.raises(JobFailed) as e:
            submit_query(buyer(fed), fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
        job_id = newest_job_id(fed)
        assert f"job {job_id} was not run and nobody was charged" in str(e.value)
        assert "owner insurer-c is unreachable; contact them or retry later" in str(e.value)
        assert "bank-a" not in str(e.value) and "bank-b" not in str(e.value)
        spec = make_spec(rounds=1, evaluate=False, batch_size=100)
        with pytest.raises(JobFailed, match="owner insurer-c is unreachable; contact them or retry later"):
            submit_training(buyer(fed), fed.buyer_dir, fed.contract_path, fed.coordinator_address, spec)
        after = {n: v for n, v in spent(fed).items()}
        assert after == {n: v for n, v in before.items() if n != "insurer-c"}  # no ε, no query, no release
    finally:
        node = NodeDaemon(load_node_config(fed.node_configs["insurer-c"]))
        fed.nodes["insurer-c"] = node
        fed.coordinator.runtime.addresses["insurer-c"] = f"127.0.0.1:{node.start('127.0.0.1:0')}"
    # the same federation answers once the owner is back, and then every owner pays exactly once
    res = submit_query(buyer(fed), fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
    assert res.table.rows
    for name, (rows, _, released) in spent(fed).items():
        assert rows == before[name][0] + 1 and released == before[name][2] + 1


def test_an_owner_that_refuses_at_admission_costs_the_others_nothing(fed):
    before = spent(fed)
    job, raw, keys = make_job(buyer(fed), fed.contract_path, SQL)
    env = sign_job(job, buyer(fed).signer)
    # insurer-c's ledger already holds this job id for another job: it refuses at admission
    fed.nodes["insurer-c"].runtime.store.debit_job(
        node="insurer-c", contract_digest=Envelope.from_json(raw).digest, kind="query", job_id=job.job_id,
        nonce="n" * 32, job_digest="0" * 64, mechanism="exact")
    from fedtrust.buyer.client import CoordinatorClient
    from fedtrust.buyer.query import tls_of

    client = CoordinatorClient(fed.coordinator_address, tls_of(buyer(fed)), fed.coordinator_name)
    with pytest.raises(JobFailed, match=rf"job {job.job_id} was not run and nobody was charged: owner insurer-c "
                                        r"refused the job \(replay\): job id already used"):
        client.submit_query(env.to_json(), raw, keys.public_bytes)
    after = spent(fed)
    for name in ("bank-a", "bank-b"):
        assert after[name] == before[name]


def run_direct(fed, node, env, raw, keys, admissions):
    coord = load_identity(fed.root / "credentials" / "coord")
    from fedtrust.buyer.query import tls_of

    return run_query_on_node(node, f"127.0.0.1:{fed.nodes[node].port}", tls_of(coord), env.to_json(), raw,
                             keys.public_bytes, timeout=60, admissions=admissions)


def test_a_node_runs_nothing_without_every_participants_valid_admission(fed):
    """A coordinator that skips phase one, drops an owner's admission, forges or reuses one gets nothing."""
    me = buyer(fed)
    job, raw, keys = make_job(me, fed.contract_path, SQL)
    env = sign_job(job, me.signer)
    before = spent(fed)
    with pytest.raises(PolicyViolation, match="not admitted by every participant \\(missing: bank-a, bank-b, "
                                              "insurer-c\\)"):
        run_direct(fed, "bank-a", env, raw, keys, [])
    admissions = admit_everywhere(fed, env.to_json(), raw, first="bank-a")
    assert spent(fed) == before  # admitting spends nothing
    with pytest.raises(PolicyViolation, match="missing: insurer-c"):
        run_direct(fed, "bank-a", env, raw, keys, admissions[:2])
    # an admission signed by the coordinator (not the owner) does not count
    coord = load_identity(fed.root / "credentials" / "coord")
    contract_digest = Envelope.from_json(raw).digest
    forged = sign_admission(Admission.new("insurer-c", env.digest, contract_digest, "query"), coord.signer)
    with pytest.raises(VerificationError, match="no signature by an owner"):
        run_direct(fed, "bank-a", env, raw, keys, admissions[:2] + [forged.to_json()])
    # another job's admissions do not count for this one
    other, _, _ = make_job(me, fed.contract_path, SQL)
    other_env = sign_job(other, me.signer)
    other_adm = admit_everywhere(fed, other_env.to_json(), raw)
    with pytest.raises(VerificationError, match="for another job or contract"):
        run_direct(fed, "bank-a", env, raw, keys, other_adm)
    assert spent(fed) == before
    rel = run_direct(fed, "bank-a", env, raw, keys, admissions)
    assert rel.attestation and spent(fed)["bank-a"][0] == before["bank-a"][0] + 1


def test_an_expired_admission_is_refused_and_names_both_clocks(fed):
    from datetime import datetime, timedelta, timezone

    me = buyer(fed)
    job, raw, keys = make_job(me, fed.contract_path, SQL)
    env = sign_job(job, me.signer)
    admissions = admit_everywhere(fed, env.to_json(), raw)
    contract_digest = Envelope.from_json(raw).digest
    old = datetime.now(timezone.utc) - timedelta(hours=1)
    ident = load_identity(fed.root / "credentials" / "insurer-c")
    stale = sign_admission(Admission.new("insurer-c", env.digest, contract_digest, "query", now=old), ident.signer)
    with pytest.raises(PolicyViolation) as e:
        run_direct(fed, "bank-a", env, raw, keys, admissions[:2] + [stale.to_json()])
    assert re.search(r"admission of node insurer-c expired at \S+ \(this machine's time is \S+, clock skew allowed "
                     r"300 s\); check NTP", str(e.value))
