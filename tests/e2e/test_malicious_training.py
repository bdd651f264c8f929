"""A malicious coordinator against real node daemons: every attack on the training rounds is refused by the nodes
(or, for the delivered model, by the buyer's client), with a clear error and nothing released beyond what was.

The attack these tests stand for: a coordinator that sends crafted global models (hidden units that each fire on
one slab of one feature) recovers individual rows from the honest masked sum of the updates. Nodes now derive
every global themselves from the signed job and all participants' signed vectors, so no planted global is ever
trained from, and the buyer accepts only the model every node attested.
"""
from __future__ import annotations

import re
import time

import pytest

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.query import load_contract, tls_of
from fedtrust.buyer.train import submit_training
from fedtrust.demo.federation import build_federation
from fedtrust.errors import JobFailed, VerificationError
from fedtrust.exchange.verify import verify_receipt_file
from fedtrust.trust.canonical import sha256_hex, utc_now
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import (
    Acknowledgement,
    ReceiptBundle,
    RoundMetric,
    metrics_digest,
    sign_acknowledgement,
    verify_attestation,
)

from evil_coordinator import EvilGrid, evil_grid, new_job, released, run_evil, tampered
from training_helper import identity, make_spec

pytestmark = pytest.mark.slow
OWNERS = {"bank-a": 300, "bank-b": 200, "insurer-c": 200}
ROUND_1 = [("train", 1), ("evaluate", 1)]


@pytest.fixture(scope="module")
def efed(tmp_path_factory):
    fed = build_federation(tmp_path_factory.mktemp("efed"), OWNERS)
    fed.start()
    try:
        yield fed
    finally:
        fed.stop()


def planted(arrays):
    """A crafted global: one unit's weights turned into a detector of a slab of one feature."""
    out = {k: v.copy() for k, v in arrays.items()}
    w = next(k for k in sorted(out) if k.endswith("weight"))
    out[w][0, 0] = 40.0
    return out


def eventually(check, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def refusals(fed):
    return {n: [e.detail for e in d.runtime.store.audit_events() if e.event == "refused"] for n, d in fed.nodes.items()}


@pytest.mark.parametrize("phase, rnd, before", [("train", 1, []), ("train", 2, ROUND_1), ("evaluate", 2,
                                                                                          ROUND_1 + [("train", 2)])])
def test_a_crafted_global_is_refused_and_nothing_more_is_released(efed, phase, rnd, before):
    spec = make_spec(rounds=3)
    job = new_job(efed, spec)
    grid = evil_grid(plant=lambda p, r, a: planted(a) if (p, r) == (phase, rnd) else None)
    rule = "not the one the signed job determines" if rnd == 1 else "differs from the one this node computed"
    with pytest.raises(JobFailed, match=f"{phase} round {rnd}.*{rule}.*trains only from a global it derived"):
        run_evil(efed, spec, grid, job)
    assert released(efed, job[2]) == {n: before for n in OWNERS}
    # the job fails at the first refusal (the coordinator may hang up on the others before they read the round)
    assert eventually(lambda: any(r and f"{phase} round {rnd}" in r[-1] for r in refusals(efed).values()))


def test_the_honest_loop_passes_and_every_node_derives_the_coordinators_global(efed):
    spec = make_spec(rounds=2, strategy="fedadam", strategy_options={"eta": 0.05})
    job = new_job(efed, spec)
    result = run_evil(efed, spec, evil_grid(), job)
    assert released(efed, job[2]) == {n: ROUND_1 + [("train", 2), ("evaluate", 2)] for n in OWNERS}
    contract, _ = load_contract(identity(efed, "analyst"), efed.contract_path)
    atts = [verify_attestation(Envelope.from_json(a), contract) for a in result["attestations"].values()]
    assert {a.model_digest for a in atts} == {result["model_digest"]}
    assert {a.metrics_digest for a in atts} == {metrics_digest([RoundMetric.from_dict(m) for m in result["metrics"]])}


@pytest.mark.parametrize("relay, match", [
    (lambda p, r, items: [tampered(items[0], vector=bytes([items[0].vector[0] ^ 1]) + items[0].vector[1:])]
     + items[1:], "signature does not cover the relayed vector.*forged or altered"),
    (lambda p, r, items: [tampered(items[0], vector=items[1].vector), tampered(items[1], vector=items[0].vector)]
     + items[2:], "signature does not cover the relayed vector.*forged or altered"),
    (lambda p, r, items: items[:-1], "lack node insurer-c's.*every participant"),
    (lambda p, r, items: items + [items[0]], "hold node bank-a's vector twice"),
    (lambda p, r, items: items[:1] + [items[0]] + items[2:], "hold node bank-a's vector twice"),
])
def test_forged_swapped_dropped_or_duplicated_vectors_are_refused(efed, relay, match):
    """The coordinator relays something other than every participant's own signed vector of the round."""
    spec = make_spec(rounds=2)
    job = new_job(efed, spec)
    grid = evil_grid(relay=lambda p, r, items: relay(p, r, items) if (p, r) == ("train", 1) else items,
                     skip_forward_errors=True)
    # the coordinator ignores the refusals and sends the next phase anyway: every node refuses it
    with pytest.raises(JobFailed, match="has not forwarded every participant's signed vectors of train round 1"):
        run_evil(efed, spec, grid, job)
    assert released(efed, job[2]) == {n: [("train", 1)] for n in OWNERS}
    errors = EvilGrid.refused[(job[2], "train", 1)]
    assert set(errors) == set(OWNERS) and all(re.search(match, e) for e in errors.values()), errors


@pytest.mark.parametrize("empty", ["bank-b", "insurer-c"])
def test_another_nodes_vector_relayed_empty_is_refused(efed, empty):
    spec = make_spec(rounds=2)
    job = new_job(efed, spec)

    def relay(p, r, items):
        return [tampered(it, vector=b"") if it.node == empty and (p, r) == ("train", 1) else it for it in items]

    with pytest.raises(JobFailed, match="has not forwarded every participant's signed vectors of train round 1"):
        run_evil(efed, spec, evil_grid(relay=relay, skip_forward_errors=True), job)
    errors = EvilGrid.refused[(job[2], "train", 1)]
    # the node whose own vector came empty fills in the one it released; every other node refuses the forgery
    assert set(errors) == set(OWNERS) - {empty}
    assert all(re.search(f"node {empty}'s signature does not cover the relayed vector.*forged or altered", e)
               for e in errors.values()), errors
    got = released(efed, job[2])
    assert {n: got[n] for n in OWNERS if n != empty} == {n: [("train", 1)] for n in OWNERS if n != empty}
    # the node that filled in its own vector derived the honest global: it may answer the next phase (evaluate 1)
    # before the others' refusals fail the job, and nothing after it
    assert got[empty][0] == ("train", 1) and set(got[empty][1:]) <= {("evaluate", 1)}, got


def test_vectors_relayed_from_another_round_or_job_are_refused(efed):
    spec = make_spec(rounds=2)
    first = new_job(efed, spec)
    run_evil(efed, spec, evil_grid(), first)  # an honest job whose signed vectors the coordinator kept

    old = EvilGrid.seen[(first[2], "train", 2)]
    job = new_job(efed, spec)
    with pytest.raises(JobFailed, match="bank-a's relayed vector was signed for another job"):
        run_evil(efed, spec, evil_grid(relay=lambda p, r, items: old[:1] + items[1:]), job)
    assert released(efed, job[2]) == {n: [("train", 1)] for n in OWNERS}

    def earlier_round(p, r, items):
        if (p, r) != ("train", 2):
            return items
        return EvilGrid.seen[(job2[2], "train", 1)][:1] + items[1:]

    job2 = new_job(efed, spec)
    with pytest.raises(JobFailed, match="signed for train round 1, not train round 2"):
        run_evil(efed, spec, evil_grid(relay=earlier_round), job2)
    assert released(efed, job2[2]) == {n: ROUND_1 + [("train", 2)] for n in OWNERS}


def test_the_buyer_refuses_a_model_other_than_the_one_every_node_attested(efed, monkeypatch, tmp_path):
    """The coordinator delivers (and signs) another model than the nodes computed: no acknowledgement."""
    from fedtrust.training.arrays import read_model, write_model

    training = efed.coordinator.servicer.training
    seal = training._seal

    def swap(contract, contract_env, job, job_env, outcome):
        arrays, spec, pre, job_id = read_model(outcome["model"])
        arrays = planted(arrays)
        outcome["model"] = write_model(arrays, spec, pre, job_id)
        return seal(contract, contract_env, job, job_env, outcome)

    monkeypatch.setattr(training, "_seal", swap)
    buyer = identity(efed, "analyst")
    with pytest.raises(VerificationError, match="delivered model is not the one node bank-a computed and attested"):
        submit_training(buyer, efed.buyer_dir, efed.contract_path, efed.coordinator_address, make_spec(rounds=1))
    newest = max((efed.buyer_dir / "jobs").iterdir(), key=lambda p: p.stat().st_mtime)
    assert not (newest / "receipt.json").exists() and not (newest / "model.safetensors").exists()
    # a buyer colluding with the coordinator acknowledges the swapped model anyway: the exchange refuses it
    outcome = CoordinatorClient(efed.coordinator_address, tls_of(buyer), efed.coordinator_name).fetch_model(newest.name)
    bundle = ReceiptBundle.from_json(outcome.receipt)
    ack = sign_acknowledgement(Acknowledgement(bundle.job.digest, sha256_hex(outcome.model), utc_now()),
                               buyer.signer)
    receipt, model = tmp_path / "receipt.json", tmp_path / "model.safetensors"
    receipt.write_bytes(ReceiptBundle(bundle.contract, bundle.job, bundle.attestations, bundle.statement,
                                      ack).to_json())
    model.write_bytes(outcome.model)
    with pytest.raises(VerificationError, match="delivered model is not the one node bank-a computed"):
        verify_receipt_file(efed.exchange_dir, receipt, model)


def test_the_buyer_refuses_round_metrics_other_than_the_ones_every_node_attested(efed, monkeypatch):
    """The coordinator re-signs its statement with a better accuracy than the nodes computed."""
    from dataclasses import replace

    from fedtrust.trust.receipts import sign_coordinator_statement, verify_statement_of_coordinator

    training = efed.coordinator.servicer.training
    seal = training._seal

    def flatter(contract, contract_env, job, job_env, outcome):
        honest = ReceiptBundle.from_json(seal(contract, contract_env, job, job_env, outcome))
        st = verify_statement_of_coordinator(honest.statement, contract)
        first = replace(st.training.metrics[0], train_accuracy="0.999999")
        forged = replace(st, training=replace(st.training, metrics=(first, *st.training.metrics[1:])))
        statement = sign_coordinator_statement(forged, training.rt.identity.signer)
        return ReceiptBundle(honest.contract, honest.job, honest.attestations, statement, None).to_json()

    monkeypatch.setattr(training, "_seal", flatter)
    with pytest.raises(VerificationError, match="reports other round metrics than node bank-a computed and attested"):
        submit_training(identity(efed, "analyst"), efed.buyer_dir, efed.contract_path, efed.coordinator_address,
                        make_spec(rounds=1))
    newest = max((efed.buyer_dir / "jobs").iterdir(), key=lambda p: p.stat().st_mtime)
    assert not (newest / "receipt.json").exists()
