"""A malicious coordinator, in a real federation: it relays anything but the nodes' own releases.

The coordinator daemon runs for real (mTLS on 127.0.0.1:0); its query handler's
`run` (or its store, for `fedtrust job result`) is wrapped so that the
finished event it streams to the buyer is tampered with, re-signing its
statement where the attack needs it (a malicious coordinator holds its own
key). The buyer's real client must refuse every such result with one clear
line, and write no result and sign no acknowledgement.
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fedtrust.buyer.jobdir import jobs_root
from fedtrust.buyer.query import fetch_again, plan_for, submit_query
from fedtrust.coordinator.query_job import QueryJobs
from fedtrust.coordinator.runtime import Finished
from fedtrust.coordinator.store import Relayed
from fedtrust.demo.federation import build_federation
from fedtrust.errors import VerificationError
from fedtrust.exchange.verify import JOB_KINDS
from fedtrust.privacy import he
from fedtrust.query.layout import Layout
from fedtrust.trust.canonical import sha256_hex
from fedtrust.trust.contracts import Contract
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec
from fedtrust.trust.receipts import ReceiptBundle, sign_coordinator_statement
from fedtrust.trust.verify import verify_bundle

SQL = "SELECT region, COUNT(*) AS n, SUM(income) AS s FROM loans GROUP BY region"


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    f = build_federation(tmp_path_factory.mktemp("relay"), {"bank-a": 200, "bank-b": 150, "bank-c": 120})
    with f:
        yield f


@pytest.fixture(scope="module")
def buyer(fed):
    return load_identity(fed.buyer_dir)


@pytest.fixture
def coordinator(fed, monkeypatch):
    """Install a tampering function `fn(finished, context) -> finished` in the live coordinator."""
    jobs = fed.coordinator.servicer.kinds.get(QueryJobs)
    honest = jobs.run

    def install(fn):
        def run_query(peer, job_bytes, contract_bytes, context):
            # a later job of the contract names the buyer's context by digest only: use the copy the coordinator keeps
            job = JobSpec.from_dict(json.loads(Envelope.from_json(job_bytes).payload)["predicate"])
            kept = context or jobs.contexts.get(Envelope.from_json(contract_bytes).digest, job.payload.he.context_digest)
            for ev in honest(peer, job_bytes, contract_bytes, context):
                yield fn(ev, kept) if isinstance(ev, Finished) else ev

        monkeypatch.setattr(jobs, "run", run_query)

    return install


def resign(fed, ev: Finished, *, data=None, envelopes=None, **statement_changes) -> Finished:
    """The coordinator's re-signed receipt: other attestation envelopes, statement fields and relayed data."""
    rt = fed.coordinator.runtime
    bundle = ReceiptBundle.from_json(ev.receipt)
    st = replace(statement_of(fed, ev), **statement_changes)
    statement = sign_coordinator_statement(st, rt.identity.signer)
    forged = ReceiptBundle(bundle.contract, bundle.job, tuple(envelopes or bundle.attestations), statement, None)
    return Finished(forged.to_json(), tuple(data) if data is not None else ev.relayed)


def forged_table(context: bytes, ev: Finished) -> tuple[bytes, ...]:
    """A vector of the coordinator's choice, encrypted under the buyer's public context, shaped like a release."""
    bundle = ReceiptBundle.from_json(ev.receipt)
    contract = Contract.from_dict(json.loads(bundle.contract.payload)["predicate"])
    job = JobSpec.from_dict(json.loads(bundle.job.payload)["predicate"])
    length = Layout.from_plan(plan_for(contract, job.payload.sql), contract.schema).length
    return tuple(he.encrypt_isolated(context, job.payload.he, [424242] * length))


def statement_of(fed, ev: Finished):
    return verify_bundle(ReceiptBundle.from_json(ev.receipt), fed.coordinator.runtime.identity.exchange_key, JOB_KINDS).statement


def refused(fed, buyer, match: str) -> None:
    """Submit through the buyer's real client; it must refuse, and leave no result, receipt or acknowledgement."""
    before = set(jobs_root(fed.buyer_dir).glob("*")) if jobs_root(fed.buyer_dir).exists() else set()
    with pytest.raises(VerificationError, match=match) as e:
        submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
    assert "\n" not in str(e.value)
    (folder,) = set(jobs_root(fed.buyer_dir).glob("*")) - before
    assert not (folder / "result.json").exists() and not (folder / "receipt.json").exists()


def test_an_honest_relay_gives_the_sum_the_buyer_computes(fed, buyer):
    res = submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
    n = sum(r[1] for r in res.table.rows if r[1] is not None)
    assert 0 < n <= 470 and res.verified.statement.relayed is not None
    assert [r.node for r in res.verified.statement.relayed] == ["bank-a", "bank-b", "bank-c"]
    assert res.verified.statement.aggregate_outputs == ()


def test_a_forged_aggregate_in_place_of_a_release_is_refused(fed, buyer, coordinator):
    def forge(ev, context):
        fake = forged_table(context, ev)
        return Finished(ev.receipt, (Relayed("bank-a", fake),) + ev.relayed[1:])

    coordinator(forge)
    refused(fed, buyer, r"ciphertexts relayed for node bank-a do not match the outputs it signed")


def test_a_forged_aggregate_named_in_a_resigned_statement_is_refused(fed, buyer, coordinator):
    def forge(ev, context):
        fake = forged_table(context, ev)
        st = statement_of(fed, ev)
        named = (replace(st.relayed[0], outputs=tuple(sha256_hex(c) for c in fake)),) + st.relayed[1:]
        return resign(fed, ev, data=(Relayed("bank-a", fake),) + ev.relayed[1:], relayed=named)

    coordinator(forge)
    refused(fed, buyer, r"statement names outputs for node bank-a other than those the node signed")


def test_a_statement_naming_an_aggregate_of_its_own_is_refused(fed, buyer, coordinator):
    def forge(ev, context):
        return resign(fed, ev, aggregate_outputs=(sha256_hex(b"my own sum"),))

    coordinator(forge)
    refused(fed, buyer, r"names an aggregate of its own")


def test_swapped_ciphertexts_are_refused(fed, buyer, coordinator):
    def swap(ev, context):
        a, b, c = ev.relayed
        return Finished(ev.receipt, (Relayed("bank-a", b.ciphertexts), Relayed("bank-b", a.ciphertexts), c))

    coordinator(swap)
    refused(fed, buyer, r"ciphertexts relayed for node bank-a do not match")


def test_a_release_from_another_job_is_refused(fed, buyer, coordinator):
    kept = {}

    def remember(ev, context):
        kept["ev"] = ev
        return ev

    coordinator(remember)
    submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
    old = kept["ev"]

    def replay_vector(ev, context):
        return Finished(ev.receipt, (old.relayed[0],) + ev.relayed[1:])

    coordinator(replay_vector)
    refused(fed, buyer, r"ciphertexts relayed for node bank-a do not match the outputs it signed .*another job")

    def replay_with_attestation(ev, context):
        old_att = ReceiptBundle.from_json(old.receipt).attestations[0]
        st = statement_of(fed, ev)
        atts = (old_att,) + ReceiptBundle.from_json(ev.receipt).attestations[1:]
        relayed = (replace(st.relayed[0], attestation=old_att.digest,
                           outputs=tuple(sha256_hex(c) for c in old.relayed[0].ciphertexts)),) + st.relayed[1:]
        return resign(fed, ev, data=(old.relayed[0],) + ev.relayed[1:], envelopes=atts,
                      attestations=tuple(a.digest for a in atts), relayed=relayed)

    coordinator(replay_with_attestation)
    refused(fed, buyer, r"attestation of node bank-a is for another job")


def test_a_dropped_participant_is_refused(fed, buyer, coordinator):
    coordinator(lambda ev, context: Finished(ev.receipt, ev.relayed[:2]))
    refused(fed, buyer, r"relayed no outputs of participant bank-c")

    def drop_everywhere(ev, context):
        bundle = ReceiptBundle.from_json(ev.receipt)
        st = statement_of(fed, ev)
        return resign(fed, ev, data=ev.relayed[:2], envelopes=bundle.attestations[:2],
                      attestations=st.attestations[:2], relayed=st.relayed[:2])

    coordinator(drop_everywhere)
    refused(fed, buyer, r"participant bank-c of the job spec has not signed an attestation")


def test_a_duplicated_participant_is_refused(fed, buyer, coordinator):
    coordinator(lambda ev, context: Finished(ev.receipt, ev.relayed + (ev.relayed[0],)))
    refused(fed, buyer, r"relayed outputs of more nodes than the job's 3 participants")

    def in_place_of_another(ev, context):
        a, b, c = ev.relayed
        return Finished(ev.receipt, (a, b, Relayed("bank-a", a.ciphertexts)))

    coordinator(in_place_of_another)
    refused(fed, buyer, r"relayed outputs of node bank-a twice")


def test_an_outsider_in_the_relay_is_refused(fed, buyer, coordinator):
    coordinator(lambda ev, context: Finished(ev.receipt, ev.relayed[:2] + (Relayed("mallory", ev.relayed[2].ciphertexts),)))
    refused(fed, buyer, r"relayed outputs from 'mallory', who is not a participant")


def test_fetching_again_goes_through_the_same_checks(fed, buyer, monkeypatch):
    res = submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
    again = fetch_again(buyer, fed.buyer_dir, res.job_id)
    assert again.table.rows == res.table.rows
    store = fed.coordinator.runtime.store
    honest = store.relayed

    def swapped(job_id):
        a, b, c = honest(job_id)
        return (a, Relayed("bank-b", c.ciphertexts), Relayed("bank-c", b.ciphertexts))

    monkeypatch.setattr(store, "relayed", swapped)
    folder = jobs_root(fed.buyer_dir) / res.job_id
    before = ((folder / "result.json").read_bytes(), (folder / "receipt.json").read_bytes())
    with pytest.raises(VerificationError, match=r"ciphertexts relayed for node bank-b do not match"):
        fetch_again(buyer, fed.buyer_dir, res.job_id)
    # the earlier, verified result and receipt are untouched; no new acknowledgement was written
    assert ((folder / "result.json").read_bytes(), (folder / "receipt.json").read_bytes()) == before
