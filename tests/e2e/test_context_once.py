"""The buyer's public HE context crosses the wire once per contract, not once per job (issue 13).

A buyer reuses one key pair per contract, so a later job names the same context
digest; the coordinator and each node keep the context they received and the
job carries it by digest only. What must stay true: a node encrypts only under
the context whose digest the buyer signed in *this* job, a daemon that lacks
the context asks for it (spending nothing), and a restarted node is served again.
"""
from __future__ import annotations

import pytest

import fedtrust.coordinator.query_job as query_job
from fedtrust.buyer.query import submit_query, tls_of
from fedtrust.config import load_node_config
from fedtrust.coordinator.node_client import run_query_on_node
from fedtrust.coordinator.query_job import QueryJobs
from fedtrust.demo.federation import build_federation
from fedtrust.errors import ContextNeeded, InvalidInput
from fedtrust.node.daemon import NodeDaemon
from fedtrust.privacy import he
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.jobs import sign_job

from jobs_helper import admit_everywhere, make_job

OWNERS = {"bank-a": 300, "bank-b": 250, "insurer-c": 200}
SQL = "SELECT region, COUNT(*) AS n, AVG(age) AS mean_age FROM loans GROUP BY region"


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    f = build_federation(tmp_path_factory.mktemp("context-once"), OWNERS, min_group_size=5)
    with f:
        yield f


@pytest.fixture
def sent(fed, monkeypatch):
    """Bytes of context per hop of each job: ('coordinator', n) from the buyer, (node, n) from the coordinator."""
    log: list[tuple[str, int]] = []
    to_node = query_job.run_query_on_node

    def spy_node(node, address, tls, job_bytes, contract_bytes, context, *a, **k):
        log.append((node, len(context)))
        return to_node(node, address, tls, job_bytes, contract_bytes, context, *a, **k)

    jobs = fed.coordinator.servicer.kinds.get(QueryJobs)
    from_buyer = jobs.run

    def spy_buyer(peer, job_bytes, contract_bytes, context):
        log.append(("coordinator", len(context)))
        return from_buyer(peer, job_bytes, contract_bytes, context)

    monkeypatch.setattr(query_job, "run_query_on_node", spy_node)
    monkeypatch.setattr(jobs, "run", spy_buyer)
    return log


def query(fed):
    return submit_query(load_identity(fed.buyer_dir), fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)


def released(fed) -> dict[str, int]:
    return {n: len(d.runtime.store.debits()) for n, d in fed.nodes.items()}


def test_the_buyers_context_crosses_the_wire_once_per_contract(fed, sent):
    first = query(fed)
    size = len((fed.buyer_dir / "he-keys" / first.verified.job.contract_digest / "he-public.bin").read_bytes())
    assert size > 100_000
    assert sorted(sent) == sorted([("coordinator", size)] + [(n, size) for n in OWNERS])
    sent.clear()
    second = query(fed)
    assert sorted(sent) == sorted([("coordinator", 0)] + [(n, 0) for n in OWNERS])  # named by digest only
    assert second.table.rows == first.table.rows and second.job_id != first.job_id


def test_a_restarted_node_asks_for_the_context_once_and_the_job_is_charged_once(fed, sent):
    query(fed)
    before = released(fed)
    logged = [j.outcome for j in fed.nodes["insurer-c"].runtime.store.jobs.jobs()]
    fed.nodes["insurer-c"].stop()
    node = NodeDaemon(load_node_config(fed.node_configs["insurer-c"]))
    fed.nodes["insurer-c"] = node
    fed.coordinator.runtime.addresses["insurer-c"] = f"127.0.0.1:{node.start('127.0.0.1:0')}"
    sent.clear()
    query(fed)
    to_c = [n for who, n in sent if who == "insurer-c"]
    assert to_c[0] == 0 and to_c[1] > 100_000 and len(to_c) == 2  # asked for it once, then got it
    assert [n for who, n in sent if who in ("bank-a", "bank-b")] == [0, 0]
    assert released(fed) == {n: c + 1 for n, c in before.items()}
    # asking for the context is not a refusal: the owner's job log shows one more released job, no refusal
    assert [j.outcome for j in node.runtime.store.jobs.jobs()] == logged + ["released"]


def test_a_coordinator_cannot_make_a_node_use_a_context_the_buyer_did_not_sign_for_the_job(fed):
    """A hostile coordinator omits the context of a job whose (new) context the node never received, or sends
    another one: the node asks for it or refuses, and spends nothing; it never falls back to a context it keeps."""
    query(fed)  # every node now keeps the buyer's usual context for this contract
    me = load_identity(fed.buyer_dir)
    fresh = he.BuyerKeys.generate()  # the job signs another context digest
    job, raw, keys = make_job(me, fed.contract_path, SQL, keys=fresh)
    env = sign_job(job, me.signer)
    admissions = admit_everywhere(fed, env.to_json(), raw, first="bank-a")
    coord = tls_of(load_identity(fed.root / "credentials" / "coord"))
    address = f"127.0.0.1:{fed.nodes['bank-a'].port}"
    usual = (fed.buyer_dir / "he-keys" / job.contract_digest / "he-public.bin").read_bytes()
    before = released(fed)

    def run(context: bytes):
        return run_query_on_node("bank-a", address, coord, env.to_json(), raw, context, 60, admissions)

    with pytest.raises(ContextNeeded, match="node bank-a keeps no copy of the buyer's HE context this job names"):
        run(b"")
    with pytest.raises(InvalidInput, match="HE context does not match the digest in the signed job spec"):
        run(usual)  # a context the node keeps for this contract, but not the one this job names
    assert released(fed) == before
    rel = run(keys.public_bytes)
    assert released(fed)["bank-a"] == before["bank-a"] + 1
    assert run(b"").attestation.digest == rel.attestation.digest  # a retry: the recorded release, no second debit


def test_a_coordinator_without_the_context_asks_the_buyer_once(fed, sent):
    """The buyer names the context by digest; a coordinator that lost its copy (restarted) gets it resent."""
    from fedtrust.privacy.context_cache import ContextCache

    query(fed)
    fed.coordinator.servicer.kinds.get(QueryJobs).contexts = ContextCache()  # what a restart leaves
    sent.clear()
    res = query(fed)
    to_coordinator = [n for who, n in sent if who == "coordinator"]
    assert to_coordinator[0] == 0 and to_coordinator[1] > 100_000 and len(to_coordinator) == 2
    assert sorted(n for who, n in sent if who != "coordinator") == [0, 0, 0]  # the nodes still keep theirs
    assert res.table.rows
