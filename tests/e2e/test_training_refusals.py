"""Training refusals, end to end: each is a clear error naming the rule, nothing is released, daemons keep serving.

Several tests call a node directly with the coordinator's credentials and a job
the buyer's CLI would never sign, to show each node enforces the contract by
itself.
"""
from __future__ import annotations

import time
from dataclasses import replace

import grpc
import numpy as np
import pytest

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.query import load_contract, tls_of
from fedtrust.buyer.train import check_spec, submit_training
from fedtrust.config import load_coordinator_config
from fedtrust.coordinator.runtime import CoordinatorRuntime
from fedtrust.demo.data import RULES_TOML, training_toml
from fedtrust.demo.federation import build_federation, issue_signed_contract
from fedtrust.errors import InvalidInput, JobFailed, PolicyViolation
from fedtrust.training.spec import load_training_toml
from fedtrust.trust.jobs import sign_job
from fedtrust.v1 import node_pb2, node_pb2_grpc

from jobs_helper import make_job
from training_helper import (
    MODELS,
    clientapps_toml,
    identity,
    initial,
    make_spec,
    node_client,
    round_message,
    signed_job,
    stalled_worker,
    vector_bytes,
)

pytestmark = pytest.mark.slow
OWNERS = {"bank-a": 400, "bank-b": 300}


@pytest.fixture(scope="module")
def rfed(tmp_path_factory):
    fed = build_federation(tmp_path_factory.mktemp("rfed"), OWNERS, training={"models": MODELS},
                           node_extra=clientapps_toml())
    fed.start()
    try:
        yield fed
    finally:
        fed.stop()


def variant(fed, name: str, **training) -> object:
    """Another contract over the same products, with other [training] rules."""
    rules = fed.root / f"rules-{name}.toml"
    rules.write_text(RULES_TOML.format(min_group_size=10, max_queries=100) + training_toml({"models": MODELS,
                                                                                           **training}))
    out = fed.root / f"contract-{name}.json"
    issue_signed_contract(fed.root, "analyst", "coord", [fed.root / "products" / f"{n}.json" for n in OWNERS],
                          rules, out)
    return out


def train(fed, spec, contract=None, on_round=None):
    return submit_training(identity(fed, "analyst"), fed.buyer_dir, contract or fed.contract_path,
                           fed.coordinator_address, spec, on_round)


def ledger(fed, node):
    return len(fed.nodes[node].runtime.store.debits())


def still_serving(fed):
    res = train(fed, make_spec(rounds=1, evaluate=False))
    assert res.metrics and len(res.verified.attestations) == len(OWNERS)


@pytest.mark.parametrize("changes, contract, match", [
    ({"model": "mlp"}, {"models": ["logreg"]}, "model mlp is not allowed by the contract's \\[training\\] models"),
    ({"features": ["income", "salary"]}, None, "column `salary` is not in the product schema"),
    ({}, {"columns": ["income", "age", "region"]}, "column `defaulted` is not allowed by the contract's \\[training\\] columns"),
    ({"rounds": 21}, None, "21 rounds exceed the contract's \\[training\\] max_rounds of 20"),
    ({}, {"min_nodes": 3}, "the job has 2 owners but the contract's \\[training\\] min_nodes is 3"),
    ({"secure_aggregation": "none"}, None, "allow_plaintext_aggregation is false"),
    ({"model": "mlp", "model_options": {"hidden": [4096, 4096]}}, None,
     "the model has 16,818,177 parameters, over the limit of 10,000,000"),
])
def test_buyer_node_and_coordinator_each_refuse_what_the_contract_forbids(rfed, changes, contract, match):
    path = variant(rfed, str(abs(hash(match)) % 10**8), **contract) if contract else rfed.contract_path
    spec = make_spec(**changes)
    buyer = identity(rfed, "analyst")
    with pytest.raises(PolicyViolation, match=match):  # the buyer's CLI, before signing anything
        check_spec(load_contract(buyer, path)[0], spec)
    job, raw, _ = signed_job(rfed, spec, path)
    before = ledger(rfed, "bank-a")
    g = initial(rfed, make_spec(), seed=int(time.time() * 1000) % 10**9)
    ask = node_client(rfed, "bank-a")
    try:
        with pytest.raises(PolicyViolation, match=match):  # the node, on the signed job
            ask.train_round(job, raw, round_message(g, 1), vector_bytes(g))
    finally:
        ask.close()
    assert ledger(rfed, "bank-a") == before
    assert rfed.nodes["bank-a"].runtime.store.audit_events()[-1].event == "refused"
    client = CoordinatorClient(rfed.coordinator_address, tls_of(buyer), rfed.coordinator_name)
    with pytest.raises(PolicyViolation, match=match):  # the coordinator, before any node is asked
        client.submit_training(job, raw)


def test_an_oversized_model_is_refused_by_arithmetic_before_any_model_is_built(rfed, monkeypatch):
    from fedtrust.training import models

    def never(*args, **kwargs):
        raise AssertionError("a model was built for a spec over the parameter limit")

    message = round_message(initial(rfed, make_spec(), seed=9), 1)
    monkeypatch.setattr(models, "build_model", never)  # the node and the coordinator run in this process
    spec = make_spec(model="mlp", model_options={"hidden": [8192, 2048]})
    job, raw, _ = signed_job(rfed, spec)
    ask = node_client(rfed, "bank-b")
    try:
        with pytest.raises(PolicyViolation, match="over the limit of 10,000,000; choose smaller hidden layers"):
            ask.train_round(job, raw, message, 8 * 11)
    finally:
        ask.close()
    client = CoordinatorClient(rfed.coordinator_address, tls_of(identity(rfed, "analyst")), rfed.coordinator_name)
    with pytest.raises(PolicyViolation, match="over the limit of 10,000,000"):
        client.submit_training(job, raw)


def test_max_jobs_caps_training_jobs_at_each_node_and_a_refused_job_spends_nothing(rfed):
    path = variant(rfed, "one-job", max_jobs=1)
    train(rfed, make_spec(rounds=1, evaluate=False), contract=path)
    before = {n: ledger(rfed, n) for n in OWNERS}
    with pytest.raises(JobFailed, match=r"nobody was charged: owners bank-a, bank-b refused the job \(budget\): "
                                        r"training job cap reached: this contract allows 1 training jobs at this "
                                        r"node \(\[training\] max_jobs\)"):
        train(rfed, make_spec(rounds=1, evaluate=False), contract=path)
    assert {n: ledger(rfed, n) for n in OWNERS} == before
    still_serving(rfed)  # the demo contract's own cap is untouched


def test_robust_aggregators_are_refused_everywhere(rfed, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('[job]\ndataset = "loans"\nmodel = "logreg"\nfeatures = ["age"]\nlabel = "defaulted"\n'
                   'strategy = "krum"\nrounds = 2\nlearning_rate = 0.1\n')
    with pytest.raises(PolicyViolation, match="krum needs every node's individual update"):
        load_training_toml(job)
    bad = {**make_spec().to_dict(), "strategy": "fedmedian"}
    env, raw, _ = signed_job(rfed, bad)  # signed by the buyer, bypassing its CLI
    g = initial(rfed, make_spec(), seed=5)
    ask = node_client(rfed, "bank-b")
    try:
        with pytest.raises(PolicyViolation, match="fedmedian needs every node's individual update"):
            ask.train_round(env, raw, round_message(g, 1), vector_bytes(g))
    finally:
        ask.close()


def test_unknown_model_and_unapproved_apps_are_refused(rfed):
    contract, _ = load_contract(identity(rfed, "analyst"), rfed.contract_path)
    with pytest.raises(PolicyViolation, match="model my-app is not allowed"):
        check_spec(contract, make_spec(model="my-app", model_options={"architecture": "mlp"}))
    path = variant(rfed, "unapproved", models=["logreg", "not-installed"])
    job, raw, _ = signed_job(rfed, make_spec(model="not-installed", model_options={"architecture": "logreg"}), path)
    g = initial(rfed, make_spec(), seed=6)
    ask = node_client(rfed, "bank-a")
    try:
        with pytest.raises(PolicyViolation, match="neither a registry model nor a ClientApp this node approved"):
            ask.train_round(job, raw, round_message(g, 1), vector_bytes(g))
    finally:
        ask.close()


def test_a_clientapp_that_crashes_mid_job_fails_the_round_and_the_job_and_the_daemons_keep_serving(rfed, caplog):
    events = []
    caplog.set_level("WARNING", logger="fedtrust.node")
    with pytest.raises(JobFailed, match="node bank-[ab] failed in train round 2.*ClientApp raising failed") as e:
        train(rfed, make_spec(model="raising", rounds=3), on_round=events.append)
    # the node's log has the app's message and traceback; the wire has only the exception's class
    assert "RuntimeError: simulated crash in the middle of the job" in caplog.text
    assert "Traceback" in caplog.text and "_raising_train" in caplog.text
    assert "simulated crash" not in str(e.value)
    assert any(e.stage == "aggregated" and e.round == 1 for e in events)  # round 1 went through
    client = CoordinatorClient(rfed.coordinator_address, tls_of(identity(rfed, "analyst")), rfed.coordinator_name)
    jobs = sorted((p for p in (rfed.buyer_dir / "jobs").iterdir()), key=lambda p: p.stat().st_mtime)
    status = client.job_status(jobs[-1].name)
    assert status.state == "failed" and "train round 2" in status.error
    still_serving(rfed)


@pytest.mark.parametrize("model, match", [
    ("nan-update", "NaN or infinite"),
    ("oversized", "does not match the job's model \\(unexpected smuggled\\)"),
])
def test_nan_and_oversized_updates_are_refused_by_the_node(rfed, model, match):
    with pytest.raises(JobFailed, match=f"train round 1.*{match}"):
        train(rfed, make_spec(model=model, rounds=2))
    still_serving(rfed)


def test_plaintext_aggregation_runs_only_where_the_contract_allows_it(rfed):
    path = variant(rfed, "plain", allow_plaintext_aggregation=True)
    res = train(rfed, make_spec(secure_aggregation="none", rounds=2), contract=path)
    assert res.verified.job.payload.secure_aggregation == "none"
    vec = rfed.nodes["bank-a"].training.store.outputs(res.verified.job_digest)[0]
    values = np.frombuffer(vec, dtype="<u8")
    small = (values < np.uint64(1 << 53)) | (values > np.uint64((1 << 63) - (1 << 53)))
    assert small.all()  # unmasked: every value is a small fixed-point number (what masking hides)


def test_malformed_round_messages_and_kind_mixups_are_refused(rfed):
    from fedtrust.transport.server import secure_channel

    job, raw, _ = signed_job(rfed, make_spec())
    with secure_channel(f"127.0.0.1:{rfed.nodes['bank-a'].port}", tls_of(identity(rfed, "coord")),
                        ("node", "bank-a")) as ch:
        stub = node_pb2_grpc.NodeServiceStub(ch)
        cases = [
            [node_pb2.TrainRequest(message_chunk=b"x")],  # no header
            [node_pb2.TrainRequest(header=node_pb2.TrainHeader(job_envelope=job, contract_envelope=raw,
                                                               message_size=1 << 40))],  # over the limit
            [node_pb2.TrainRequest(header=node_pb2.TrainHeader(job_envelope=job, contract_envelope=raw,
                                                               message_size=4)),
             node_pb2.TrainRequest(message_chunk=b"\xff\xff\xff\xff")],  # not a Flower message
        ]
        for msgs in cases:
            with pytest.raises(grpc.RpcError) as e:
                list(stub.TrainRound(iter(msgs), timeout=30))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
            assert "internal error" not in e.value.details()
    g = initial(rfed, make_spec(), seed=8)
    ask = node_client(rfed, "bank-a")
    try:
        with pytest.raises(InvalidInput, match="does not match the job.s model \\(missing 0.bias\\)"):
            ask.train_round(job, raw, round_message({"0.weight": g["0.weight"]}, 1), vector_bytes(g))
        bigger = {k: np.pad(v, ((0, 1),) + ((0, 0),) * (v.ndim - 1)) for k, v in g.items()}
        with pytest.raises(InvalidInput, match="wrong shape"):
            ask.train_round(job, raw, round_message(bigger, 1), vector_bytes(g))
        with pytest.raises(PolicyViolation, match="round 9 is outside the signed spec's rounds"):
            ask.train_round(job, raw, round_message(g, 9), vector_bytes(g))
    finally:
        ask.close()
    buyer = identity(rfed, "analyst")
    qjob, qraw, keys = make_job(buyer, rfed.contract_path, "SELECT COUNT(*) AS n FROM loans")
    client = CoordinatorClient(rfed.coordinator_address, tls_of(buyer), rfed.coordinator_name)
    with pytest.raises(InvalidInput, match="sent to SubmitTraining"):
        client.submit_training(sign_job(qjob, buyer.signer).to_json(), qraw)
    with pytest.raises(InvalidInput, match="sent to SubmitQuery"):
        client.submit_query(job, raw, keys.public_bytes)
    still_serving(rfed)


def test_a_node_that_stops_between_rounds_fails_the_job_with_its_name(tmp_path):
    fed = build_federation(tmp_path, {"bank-a": 200, "bank-b": 200})
    with fed:
        def stop_after_round_1(ev):
            if ev.stage == "aggregated" and ev.round == 1 and ev.phase == "evaluate":
                fed.nodes["bank-b"].stop()

        # the stop races with the coordinator sending the next round (or forwarding its vectors): any later round may
        # be the one that fails; four rounds leave room for an event that reaches the buyer late under load
        with pytest.raises(JobFailed, match="node bank-b failed in (train|evaluate) round [234]"):
            train(fed, make_spec(rounds=4), on_round=stop_after_round_1)
        client = CoordinatorClient(fed.coordinator_address, tls_of(identity(fed, "analyst")), fed.coordinator_name)
        job_id = max((fed.buyer_dir / "jobs").iterdir(), key=lambda p: p.stat().st_mtime).name
        assert client.job_status(job_id).state == "failed"


def test_a_stalled_training_worker_is_stopped_and_the_job_fails_with_the_node_it_waited_on(rfed, monkeypatch):
    # a worker whose call to bank-b never returns (a gRPC call past its deadline, a hung channel): the coordinator's
    # watchdog fails the job once the node timeout plus its margin has passed, naming the node, and kills the worker
    jobs = rfed.coordinator.servicer.training
    monkeypatch.setattr(jobs.rt, "config", replace(jobs.rt.config, node_timeout_s=3.0))
    monkeypatch.setattr(jobs, "stall_margin_s", 1.0)
    monkeypatch.setattr(jobs, "_worker", stalled_worker)
    with pytest.raises(JobFailed, match=r"node bank-b failed in train round 1: no answer within the node timeout "
                                        r"\(3 s\) .* the coordinator stopped the worker and failed the job"):
        train(rfed, make_spec(rounds=1, evaluate=False))
    assert not jobs._workers  # killed and reaped
    client = CoordinatorClient(rfed.coordinator_address, tls_of(identity(rfed, "analyst")), rfed.coordinator_name)
    job_id = max((rfed.buyer_dir / "jobs").iterdir(), key=lambda p: p.stat().st_mtime).name
    assert client.job_status(job_id).state == "failed"
    monkeypatch.undo()
    still_serving(rfed)


def test_a_coordinator_restart_marks_a_running_training_job_failed(rfed):
    rt = rfed.coordinator.runtime
    rt.store.begin("interrupted-train", "a" * 64, "b" * 64, "analyst", ("bank-a", "bank-b"), kind="train")
    again = CoordinatorRuntime(load_coordinator_config(rfed.coordinator_config), {})
    rec = again.store.get("interrupted-train")
    assert rec.kind == "train" and rec.state == "failed" and "restarted" in rec.error
