"""Refusals, end to end: what the contract forbids is refused with the rule's name, nothing is
released or debited, and the daemons keep serving.

Most tests talk to a node *directly with the coordinator's credentials*, to
show the node enforces the contract by itself even when the coordinator (or
the buyer's CLI) does not check anything.
"""
from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import grpc
import numpy as np
import pytest

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.query import tls_of
from fedtrust.coordinator.node_client import run_query_on_node
from fedtrust.demo.federation import build_federation, issue_signed_contract, sign_by_parties
from fedtrust.errors import (
    BudgetExhausted,
    ConfigError,
    InvalidInput,
    JobFailed,
    PolicyViolation,
    ReplayError,
    VerificationError,
)
from fedtrust.exchange.issuer import list_product, load_exchange
from fedtrust.privacy import he
from fedtrust.privacy.params import HeParams
from fedtrust.query.dataset import file_digest
from fedtrust.trust.canonical import format_time, sha256_hex
from fedtrust.trust.contracts import sign_contract, verify_contract
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import sign_job
from fedtrust.v1 import node_pb2, node_pb2_grpc

from jobs_helper import admit_everywhere, make_job

OK_SQL = "SELECT region, COUNT(*) AS n FROM loans GROUP BY region"


def identity(fed, name):
    return load_identity(fed.root / "credentials" / name)


def tls(fed, name):
    return tls_of(identity(fed, name))


def node_addr(fed, name):
    return f"127.0.0.1:{fed.nodes[name].port}"


def call_node(fed, node, job_env, contract_raw, context, caller="coord"):
    """Both phases, as the coordinator runs them: every owner admits (the node under test first), then run."""
    admissions = admit_everywhere(fed, job_env.to_json(), contract_raw, first=node, caller=caller)
    return run_query_on_node(node, node_addr(fed, node), tls(fed, caller), job_env.to_json(), contract_raw,
                             context, timeout=60, admissions=admissions)


def signed(fed, sql=OK_SQL, signer=None, **changes):
    buyer = identity(fed, "analyst")
    job, raw, keys = make_job(buyer, fed.contract_path, sql, **changes)
    return sign_job(job, signer or buyer.signer), raw, keys, job


def ledger_size(fed, node):
    return len(fed.nodes[node].runtime.store.releases())


def audit(fed, node):
    return fed.nodes[node].runtime.store.audit_events()


def test_node_releases_to_the_coordinator_and_a_retry_gets_the_same_bytes_without_a_second_debit(federation):
    env, raw, keys, job = signed(federation)
    before = ledger_size(federation, "bank-a")
    first = call_node(federation, "bank-a", env, raw, keys.public_bytes)
    second = call_node(federation, "bank-a", env, raw, keys.public_bytes)
    assert first.ciphertexts == second.ciphertexts and first.attestation == second.attestation
    assert ledger_size(federation, "bank-a") == before + 1


@pytest.mark.parametrize(
    "sql, rule",
    [
        ("SELECT * FROM loans", "SELECT \\*"),
        ("SELECT region, income FROM loans", "not grouped"),
        ("SELECT AVG(salary) FROM loans", "salary"),
        ("SELECT MAX(income) FROM loans", "MAX"),
        ("SELECT AVG(income) FROM loans WHERE income > 100000", "income` may not be used in WHERE"),
        ("SELECT age, COUNT(*) FROM loans GROUP BY age", "age"),
        ("SELECT COUNT(*) FROM loans LIMIT 1", "LIMIT"),
        ("SELECT COUNT(*) FROM loans ORDER BY 1", "ORDER BY"),
        ("SELECT COUNT(*) FROM (SELECT * FROM loans)", "subquer"),
        ("SELECT COUNT(*) FROM loans a JOIN loans b ON a.age = b.age", "join"),
        ("SELECT COUNT(*) FROM read_csv('/etc/passwd')", "table function|dataset"),
        ("SELECT COUNT(*) FROM other", "other"),
        # probes for unlisted values in the owners' files: refused, naming the listed values only
        ("SELECT COUNT(*) FROM loans WHERE region = 'dermatology'",
         "outside its public domain; use one of its listed values: north, south, east, west, central"),
        ("SELECT COUNT(*) FROM loans WHERE age > 150", r"outside its public bounds \[18, 100\]"),
    ],
)
def test_node_refuses_sql_the_rules_forbid_and_releases_nothing(federation, sql, rule):
    env, raw, keys, job = signed(federation, sql)
    before = ledger_size(federation, "bank-b")
    with pytest.raises((PolicyViolation, InvalidInput), match=rule):
        call_node(federation, "bank-b", env, raw, keys.public_bytes)
    assert ledger_size(federation, "bank-b") == before
    last = audit(federation, "bank-b")[-1]
    assert last.event == "refused" and last.job_id == job.job_id


def test_coordinator_fails_the_whole_job_when_a_node_refuses(federation):
    """A buyer that skips its CLI's check: every node refuses, the job fails with the node named."""
    env, raw, keys, job = signed(federation, "SELECT AVG(income) FROM loans WHERE income > 1")
    client = CoordinatorClient(federation.coordinator_address, tls(federation, "analyst"), federation.coordinator_name)
    with pytest.raises(JobFailed, match=f"job {job.job_id} was not run and nobody was charged: owners bank-a, bank-b, "
                                        "insurer-c refused the job \\(policy\\): .*may not be used in WHERE"):
        client.submit_query(env.to_json(), raw, keys.public_bytes)
    status = client.job_status(job.job_id)
    assert status.state == "failed" and "may not be used in WHERE" in status.error


def test_node_refuses_a_caller_that_is_not_the_contracts_coordinator(federation):
    env, raw, keys, _ = signed(federation)
    # a buyer's certificate is refused by role before the node reads the request
    with pytest.raises(VerificationError, match="fedtrust://buyer/analyst may not call fedtrust.v1.NodeService"):
        call_node(federation, "bank-a", env, raw, keys.public_bytes, caller="analyst")


def test_node_refuses_a_job_not_signed_by_the_buyer(federation):
    coord = identity(federation, "coord")
    env, raw, keys, _ = signed(federation, signer=coord.signer)
    with pytest.raises(VerificationError, match="signature|signed"):
        call_node(federation, "bank-a", env, raw, keys.public_bytes)


def test_node_refuses_participants_other_than_the_contracts_owners(federation):
    env, raw, keys, _ = signed(federation, participants=("bank-a", "bank-b"))
    with pytest.raises(PolicyViolation, match="participants must be exactly the contract's owners"):
        call_node(federation, "bank-a", env, raw, keys.public_bytes)


def test_node_refuses_a_job_naming_another_coordinator(federation):
    env, raw, keys, _ = signed(federation, coordinator="mallory")
    with pytest.raises(PolicyViolation, match="coordinator"):
        call_node(federation, "bank-a", env, raw, keys.public_bytes)


def test_node_refuses_an_expired_job(federation):
    past = datetime.now(timezone.utc) - timedelta(hours=2)
    env, raw, keys, _ = signed(federation, created_at=format_time(past),
                               expires_at=format_time(past + timedelta(hours=1)))
    with pytest.raises(PolicyViolation, match="expired"):
        call_node(federation, "bank-a", env, raw, keys.public_bytes)


def test_node_refuses_a_reused_nonce_for_another_job(federation):
    env, raw, keys, job = signed(federation)
    call_node(federation, "insurer-c", env, raw, keys.public_bytes)
    env2, raw2, keys2, _ = signed(federation, "SELECT COUNT(*) AS n FROM loans", nonce=job.nonce)
    with pytest.raises(ReplayError, match="nonce already used"):
        call_node(federation, "insurer-c", env2, raw2, keys2.public_bytes)
    env3, _, keys3, _ = signed(federation, "SELECT COUNT(*) AS n FROM loans", job_id=job.job_id)
    with pytest.raises(ReplayError, match="job id already used"):
        call_node(federation, "insurer-c", env3, raw, keys3.public_bytes)


def test_node_refuses_an_expired_contract(federation):
    ex = load_exchange(federation.exchange_dir)
    contract = verify_contract(Envelope.from_json(federation.contract_path.read_bytes()), ex.signer.public_key)
    long_ago = datetime.now(timezone.utc) - timedelta(days=40)
    old = replace(contract, valid_from=format_time(long_ago), valid_until=format_time(long_ago + timedelta(days=30)))
    old_raw = sign_contract(old, ex.signer).to_json()
    old_path = federation.root / "expired-contract.json"
    old_path.write_bytes(old_raw)
    sign_by_parties(old_path, federation.root / "credentials", ["analyst", "bank-a"])
    old_raw = old_path.read_bytes()
    buyer = identity(federation, "analyst")
    job, _, keys = make_job(buyer, old_path, OK_SQL)
    with pytest.raises(PolicyViolation, match="expired"):
        call_node(federation, "bank-a", sign_job(job, buyer.signer), old_raw, keys.public_bytes)


def test_node_refuses_a_product_it_does_not_hold(federation):
    root = federation.root
    relisted = root / "products" / "bank-a-relisted.json"
    list_product(federation.exchange_dir, "bank-a", "loans", root / "schema.toml",
                 file_digest(federation.data["bank-a"]), relisted)
    other = root / "contract-relisted.json"
    issue_signed_contract(root, "analyst", "coord",
                          [relisted, root / "products" / "bank-b.json", root / "products" / "insurer-c.json"],
                          root / "rules.toml", other)
    buyer = identity(federation, "analyst")
    job, raw, keys = make_job(buyer, other, OK_SQL)
    with pytest.raises(PolicyViolation, match="not held by node bank-a"):
        call_node(federation, "bank-a", sign_job(job, buyer.signer), raw, keys.public_bytes)


def test_garbage_he_context_is_rejected_and_the_daemon_keeps_serving(federation):
    garbage = np.random.default_rng(1).integers(0, 256, 600_000, dtype=np.uint8).tobytes()
    params = HeParams(context_digest=sha256_hex(garbage))
    env, raw, keys, _ = signed(federation, he=params)
    before = ledger_size(federation, "bank-a")
    with pytest.raises(InvalidInput, match="HE context|context"):
        call_node(federation, "bank-a", env, raw, garbage)
    assert ledger_size(federation, "bank-a") == before
    env, raw, keys, _ = signed(federation)
    assert call_node(federation, "bank-a", env, raw, keys.public_bytes).ciphertexts


def test_secret_context_is_refused(federation):
    keys = he.BuyerKeys.generate()
    secret = keys.secret_bytes
    env, raw, _, _ = signed(federation, he=HeParams(context_digest=sha256_hex(secret)))
    with pytest.raises(InvalidInput):
        call_node(federation, "bank-a", env, raw, secret)


def test_malformed_messages_are_refused_and_the_daemon_keeps_serving(federation):
    t = tls(federation, "coord")
    from fedtrust.transport.server import secure_channel

    with secure_channel(node_addr(federation, "bank-b"), t, ("node", "bank-b")) as ch:
        stub = node_pb2_grpc.NodeServiceStub(ch)
        cases = [
            [node_pb2.QueryRequest(he_context_chunk=b"x")],  # no header
            [node_pb2.QueryRequest(header=node_pb2.QueryHeader(job_envelope=b"{not json", contract_envelope=b"[]"))],
            [node_pb2.QueryRequest(header=node_pb2.QueryHeader(job_envelope=b"{}", contract_envelope=b"{}",
                                                               he_context_size=1 << 40))],
            [node_pb2.QueryRequest(header=node_pb2.QueryHeader(he_context_size=2)),
             node_pb2.QueryRequest(he_context_chunk=b"abc")],  # more than declared
        ]
        for msgs in cases:
            with pytest.raises(grpc.RpcError) as e:
                list(stub.RunQuery(iter(msgs), timeout=30))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
            assert "internal error" not in e.value.details()
    env, raw, keys, _ = signed(federation)
    assert call_node(federation, "bank-b", env, raw, keys.public_bytes).ciphertexts


def test_coordinator_refuses_a_caller_that_is_not_the_buyer_and_a_job_not_signed_by_it(federation):
    env, raw, keys, _ = signed(federation)
    as_node = CoordinatorClient(federation.coordinator_address, tls(federation, "bank-a"), federation.coordinator_name)
    with pytest.raises(VerificationError, match="fedtrust://node/bank-a may not call fedtrust.v1.CoordinatorService"):
        as_node.submit_query(env.to_json(), raw, keys.public_bytes)
    env, raw, keys, _ = signed(federation, signer=identity(federation, "coord").signer)
    as_buyer = CoordinatorClient(federation.coordinator_address, tls(federation, "analyst"), federation.coordinator_name)
    with pytest.raises(VerificationError):
        as_buyer.submit_query(env.to_json(), raw, keys.public_bytes)


def test_collusion_one_nodes_release_decrypts_to_uniform_noise(federation):
    """Coordinator and buyer together: one node's ciphertext, decrypted with the buyer's key."""
    env, raw, keys, job = signed(federation, "SELECT region, COUNT(*) AS n, AVG(income) AS m, "
                                             "VAR_SAMP(income) AS v, AVG(age) AS a FROM loans GROUP BY region")
    rel = call_node(federation, "bank-a", env, raw, keys.public_bytes)
    values = np.array(he.decrypt(keys.secret_bytes, list(rel.ciphertexts)), dtype=object)
    t = keys.params.plain_modulus
    used = values[: 5 * 50]  # every slot of the public layout carries a mask
    buckets = np.bincount([int(v * 16 // t) for v in values], minlength=16)
    expected = len(values) / 16
    chi2 = float(((buckets - expected) ** 2 / expected).sum())
    assert chi2 < 60, f"not uniform: chi2={chi2}"  # 15 dof: p < 1e-6 above 60
    # none of the true small counts (< 2^32) appear in the clear
    assert sum(1 for v in used if int(v) < 2**32) <= 1


def test_query_cap_refuses_and_debits_nothing(tmp_path):
    fed = build_federation(tmp_path, {"bank-a": 200, "bank-b": 200}, max_queries=2)
    with fed:
        for _ in range(2):
            env, raw, keys, _ = signed(fed)
            call_node(fed, "bank-a", env, raw, keys.public_bytes)
        env, raw, keys, _ = signed(fed)
        with pytest.raises(BudgetExhausted, match="query cap reached"):
            call_node(fed, "bank-a", env, raw, keys.public_bytes)
        assert ledger_size(fed, "bank-a") == 2


def test_the_coordinator_keeps_only_relayed_ciphertexts_and_no_value_in_its_store_or_log(federation, caplog):
    """The coordinator keeps digests and the nodes' masked, encrypted releases it relayed (so the buyer can fetch
    them again); it computes no aggregate, and no value is stored or logged."""
    import logging

    caplog.set_level(logging.DEBUG)
    env, raw, keys, job = signed(federation, "SELECT region, COUNT(*) AS n, AVG(income) AS m FROM loans GROUP BY region")
    client = CoordinatorClient(federation.coordinator_address, tls(federation, "analyst"), federation.coordinator_name)
    outcome = client.submit_query(env.to_json(), raw, keys.public_bytes)
    # what each node released for this job (the nodes memoise it)
    releases = [federation.nodes[n].runtime.store.lookup(job.contract_digest, job.job_id, job.nonce, env.digest)
                for n in federation.nodes]
    state = federation.coordinator.runtime.config.state
    stored = b"".join(p.read_bytes() for p in state.iterdir() if p.is_file())
    relayed = dict(outcome.relayed)
    for node, rel in zip(federation.nodes, releases):
        assert relayed[node] == tuple(rel.outputs)  # relayed unchanged: exactly what the node released
        for ct in rel.outputs:
            assert ct[1000:1064] in stored  # kept encrypted and masked, for `fedtrust job result`
    values = {str(v) for row in ask_rows(keys, outcome, federation) for v in row}
    logged = caplog.text
    # each value as a token of its own: a count such as 1350 may occur inside a random hex job id ("…c1350b…"),
    # which is no leak; "n=1350", "count 1350" or "1350," would be
    leaked = [v for v in values if len(v) > 3 and re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", logged)]
    assert not leaked, "a result value appears in the coordinator's or nodes' log"


def ask_rows(keys, outcome, fed):
    from fedtrust.buyer.query import plan_for
    from fedtrust.exchange.verify import JOB_KINDS
    from fedtrust.query.decode import decode
    from fedtrust.query.layout import Layout
    from fedtrust.trust.receipts import ReceiptBundle
    from fedtrust.trust.verify import check_relayed, verify_bundle

    v = verify_bundle(ReceiptBundle.from_json(outcome.receipt), identity(fed, "analyst").exchange_key, JOB_KINDS)
    plan = plan_for(v.contract, v.job.payload.sql)
    layout = Layout.from_plan(plan, v.contract.schema)
    total = he.add_isolated(keys.public_bytes, v.job.payload.he, check_relayed(v, outcome.relayed), layout.length)
    return decode(plan, layout, v.contract.schema, he.decrypt(keys.secret_bytes, total)).rows


def test_a_node_serves_only_contracts_its_owner_and_the_buyer_signed(federation):
    """The exchange alone cannot commit a node: without its owner's (or the buyer's) signature it refuses."""
    from fedtrust.buyer.query import submit_query

    root = federation.root
    products = [root / "products" / f"{n}.json" for n in ("bank-a", "bank-b", "insurer-c")]
    path = issue_signed_contract(root, "analyst", "coord", products, root / "rules.toml",
                                 root / "contract-unsigned-c.json", unsigned=("insurer-c",))
    buyer = identity(federation, "analyst")
    job, raw, keys = make_job(buyer, path, OK_SQL)
    env = sign_job(job, buyer.signer)
    before = {n: ledger_size(federation, n) for n in ("bank-a", "insurer-c")}
    with pytest.raises(VerificationError, match=r"contract lacks the signature of owner insurer-c "
                                                r"\(fedtrust://node/insurer-c\)"):
        call_node(federation, "insurer-c", env, raw, keys.public_bytes)
    # bank-a (which signed) admits it; the job still fails at insurer-c's admission, before anyone spends
    with pytest.raises(VerificationError, match="lacks the signature of owner insurer-c"):
        call_node(federation, "bank-a", env, raw, keys.public_bytes)
    assert {n: ledger_size(federation, n) for n in before} == before
    # the buyer's own client refuses to submit it at all
    with pytest.raises(VerificationError, match="lacks the signature of owner insurer-c"):
        submit_query(buyer, federation.buyer_dir, path, federation.coordinator_address, OK_SQL)
    # signed by the owners but not the buyer: every node refuses, naming the buyer
    path = issue_signed_contract(root, "analyst", "coord", products, root / "rules.toml",
                                 root / "contract-unsigned-buyer.json", unsigned=("analyst",))
    job, raw, keys = make_job(buyer, path, OK_SQL)
    with pytest.raises(VerificationError, match="lacks the signature of buyer analyst"):
        call_node(federation, "bank-b", sign_job(job, buyer.signer), raw, keys.public_bytes)
    # another party's key cannot sign in an owner's name
    from fedtrust.trust.contracts import sign_as
    from fedtrust.trust.contracts import verify_contract as vc

    c = vc(Envelope.from_json(raw), identity(federation, "bank-a").exchange_key)
    with pytest.raises(ConfigError, match="signing key is not the one the contract names for owner bank-b"):
        sign_as(Envelope.from_json(raw), c, "node", "bank-b", identity(federation, "bank-a").signer)
