"""Training building blocks without daemons: spec, policy, preprocessing, quantization, Grid, model files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrust.errors import ConfigError, InvalidInput, JobFailed, PolicyViolation
from fedtrust.privacy.masking import add_mod, pairwise_mask
from fedtrust.training import quantize
from fedtrust.training.arrays import array_numpy, arrays_digest, check_arrays, read_model, write_model
from fedtrust.training.policy import check_training
from fedtrust.training.preprocess import Preprocessor
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.rules import Rules, TrainingRules
from fedtrust.trust.schema import Column, Schema

SCHEMA = Schema((
    Column("region", "category", values=("north", "south", "east")),
    Column("income", "float", 0.0, 100.0),
    Column("age", "int", 18, 100),
    Column("defaulted", "int", 0, 1),
    Column("segment", "category", values=("a", "b", "c")),
))
BASE = {"dataset": "loans", "model": "logreg", "features": ["income", "age", "region"], "label": "defaulted",
        "rounds": 3, "learning_rate": 0.1}


def spec(**changes) -> TrainingSpec:
    return TrainingSpec.from_dict({**BASE, **changes}, defaults=True)


def rules(**changes) -> Rules:
    t = {"models": ["logreg", "mlp"], "max_rounds": 10, "columns": ["income", "age", "region", "defaulted"],
         "min_nodes": 2, **changes}
    return Rules(None, 30, TrainingRules.from_dict(t))


# -- spec ---------------------------------------------------------------------
def test_spec_defaults_round_trip_and_signed_form_must_be_complete():
    s = spec()
    assert (s.strategy, s.local_epochs, s.secure_aggregation, s.optimizer, s.evaluate) == ("fedavg", 1, "masking", "sgd", True)
    assert TrainingSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(InvalidInput, match="`batch_size` is missing"):
        TrainingSpec.from_dict({**BASE, "strategy": "fedavg"})  # signed JSON carries every field


@pytest.mark.parametrize("changes, error, match", [
    ({"strategy": "krum"}, PolicyViolation, "krum needs every node's individual update"),
    ({"strategy": "fedmedian"}, PolicyViolation, "individual update"),
    ({"strategy": "qfedavg"}, InvalidInput, "not supported"),
    ({"strategy": "fedprox", "strategy_options": {"eta": 0.1}}, InvalidInput, "no option `eta`"),
    ({"strategy": "fedadam", "strategy_options": {"beta_1": 1.5}}, InvalidInput, "out of its range"),
    ({"learning_rate": float("nan")}, InvalidInput, "finite"),
    ({"secure_aggregation": "he"}, InvalidInput, "secure_aggregation"),
    ({"features": ["income", "income"]}, InvalidInput, "twice"),
    ({"features": ["defaulted"]}, InvalidInput, "label column cannot also be a feature"),
    ({"model": "my-app"}, InvalidInput, "architecture"),
    ({"model": "cnn"}, InvalidInput, "image"),
    ({"model_options": {"hidden": [8]}}, InvalidInput, "mlp model only"),
    ({"model_options": {"depth": 3}}, InvalidInput, "unknown model option"),
    ({"rounds": 0}, InvalidInput, "rounds"),
    ({"colour": "red"}, InvalidInput, "unknown key"),
])
def test_spec_form_refusals(changes, error, match):
    with pytest.raises(error, match=match):
        spec(**changes)


def test_query_jobs_keep_their_json_and_train_jobs_carry_only_the_training_spec():
    from fedtrust.privacy.params import HeParams
    from fedtrust.query.payload import QueryPayload
    from fedtrust.trust.jobs import JobSpec

    common = dict(contract_digest="0" * 64, job_id="j1", nonce="1" * 64, coordinator="coord",
                  participants=("a", "b"), dataset="loans", created_at="2025-01-01T00:00:00Z",
                  expires_at="2025-01-01T01:00:00Z")
    q = JobSpec(payload=QueryPayload("SELECT COUNT(*) FROM loans", HeParams("2" * 64)), **common)
    assert set(q.to_dict()) == {"contract_digest", "job_id", "nonce", "kind", "coordinator", "participants",
                                "dataset", "sql", "he", "created_at", "expires_at"}
    t = JobSpec(payload=spec(), **common)
    d = t.to_dict()
    assert "sql" not in d and "he" not in d and d["training"]["learning_rate"] == "0.1"
    assert JobSpec.from_dict(d) == t
    with pytest.raises(InvalidInput, match="another dataset"):
        JobSpec.from_dict({**d, "training": {**d["training"], "dataset": "other"}})


# -- policy -------------------------------------------------------------------
@pytest.mark.parametrize("s, r, participants, match", [
    (spec(model="mlp"), rules(models=["logreg"]), 3, "model mlp is not allowed by the contract's \\[training\\] models"),
    (spec(rounds=11), rules(), 3, "11 rounds exceed the contract's \\[training\\] max_rounds of 10"),
    (spec(), rules(min_nodes=3), 2, "min_nodes is 3"),
    (spec(secure_aggregation="none"), rules(), 3, "allow_plaintext_aggregation is false"),
    (spec(features=["salary"]), rules(), 3, "column `salary` is not in the product schema"),
    (spec(features=["segment"]), rules(), 3, "column `segment` is not allowed by the contract's \\[training\\] columns"),
    (spec(label="segment", features=["income"]), rules(), 3, "column `segment` is not allowed"),
    (spec(dataset="other"), rules(), 3, "sells loans"),
])
def test_policy_refusals_name_the_rule(s, r, participants, match):
    with pytest.raises(PolicyViolation, match=match):
        check_training(s, r, SCHEMA, "loans", participants)


def test_policy_allows_plaintext_only_where_the_contract_does_and_refuses_dp_contracts():
    check_training(spec(secure_aggregation="none"), rules(allow_plaintext_aggregation=True), SCHEMA, "loans", 2)
    with pytest.raises(PolicyViolation, match="no \\[training\\] table"):
        check_training(spec(), Rules(None, 30, None), SCHEMA, "loans", 2)
    with pytest.raises(InvalidInput, match="float column"):
        check_training(spec(label="income", features=["age"]), rules(columns=["income", "age"]), SCHEMA, "loans", 2)


# -- preprocessing ------------------------------------------------------------
def test_preprocessing_uses_public_bounds_and_domains_only():
    pre = Preprocessor.build(SCHEMA, ["income", "age", "region"], "defaulted")
    assert pre.width == 1 + 1 + 3 and pre.classes == ("0", "1") and pre.outputs == 1
    cols = {
        "income": np.ma.masked_array([50.0, 250.0, -3.0, 0.0], mask=[False, False, False, True]),
        "age": np.array([18, 100, 59, 40]),
        "region": np.array(["south", "west", None, "north"], dtype=object),
    }
    x = pre.transform(cols)
    np.testing.assert_allclose(x[:, 0], [0.5, 1.0, 0.0, 0.0])  # clipped to the public bounds; NULL -> 0
    np.testing.assert_allclose(x[:, 1], [0.0, 1.0, 0.5, 22 / 82], rtol=1e-6)
    np.testing.assert_array_equal(x[:, 2:], [[0, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])  # unknown/NULL: zeros
    ids, ok = pre.labels(np.ma.masked_array([0, 1, 7, 1], mask=[False, False, False, True]))
    assert ids[:2].tolist() == [0, 1] and ok.tolist() == [True, True, False, False]
    cat = Preprocessor.build(SCHEMA, ["income"], "segment")
    assert cat.outputs == 3 and cat.labels(np.array(["c", "x", "a"], dtype=object))[0].tolist() == [2, -1, 0]
    assert Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


# -- quantization and masks ---------------------------------------------------
def test_masked_count_weighted_sum_decodes_to_the_fedavg_average():
    rng = np.random.default_rng(3)
    names = ["a", "b", "c"]
    keys = {n: X25519PrivateKey.generate() for n in names}
    ns = {"a": 4000, "b": 2500, "c": 1}
    deltas = {n: rng.normal(0, 0.05, 1000) for n in names}
    losses, accs = {"a": 0.3, "b": 0.5, "c": 2.0}, {"a": 0.9, "b": 0.8, "c": 0.0}
    masked = []
    for n in names:
        v = quantize.encode(ns[n], losses[n], accs[n], deltas[n])
        peers = {p: keys[p].public_key() for p in names if p != n}
        m = pairwise_mask(keys[n], n, peers, "job", len(v), quantize.MODULUS, b"train/round/1")
        masked.append(add_mod(v, m, quantize.MODULUS))
    out = quantize.decode(quantize.sum_vectors(masked), 1000)
    total = sum(ns.values())
    assert out.examples == total
    want = sum(ns[n] * deltas[n] for n in names) / total
    np.testing.assert_allclose(out.delta, want, atol=1e-6)
    assert out.loss == pytest.approx(sum(ns[n] * losses[n] for n in names) / total, abs=1e-6)
    assert out.accuracy == pytest.approx(sum(ns[n] * accs[n] for n in names) / total, abs=1e-6)
    # one masked vector alone is uniform noise: no small values (the true ones are tiny)
    alone = masked[2][:1000]
    assert np.mean(alone < np.uint64(1 << 53)) < 0.01


def test_quantization_refuses_nan_and_clips_to_the_documented_bounds():
    with pytest.raises(InvalidInput, match="NaN"):
        quantize.encode(10, 0.1, 0.5, np.array([0.0, np.nan]))
    with pytest.raises(InvalidInput, match="NaN"):
        quantize.encode(10, float("inf"), 0.5, None)
    with pytest.raises(InvalidInput, match="num-examples"):
        quantize.encode(quantize.MAX_EXAMPLES + 1, 0.1, 0.5, None)
    worst = [quantize.encode(quantize.MAX_EXAMPLES, 1e9, 2.0, np.array([-1e9, 1e9])) for _ in range(quantize.MAX_PARTICIPANTS)]
    out = quantize.decode(quantize.sum_vectors(worst), 2)  # the largest sum of the most nodes does not wrap
    assert out.delta.tolist() == [-quantize.DELTA_BOUND, quantize.DELTA_BOUND]
    assert out.loss == quantize.LOSS_BOUND and out.accuracy == 1.0
    with pytest.raises(InvalidInput, match="bytes"):
        quantize.from_bytes(b"\0" * 15, 2, "a vector")


def test_the_vector_encoding_and_modular_sum_match_their_definitions():
    """encode writes q(n·clip(δ)) and the tail as signed integers mod 2^63; sum_vectors is the sum mod 2^63."""
    rng = np.random.default_rng(11)
    delta = np.concatenate([rng.normal(0, 0.5, 5000), [-1e6, 1e6, 0.0, -0.0]])
    n, loss, acc = 1234, 0.75, 0.5
    q = np.rint(np.clip(delta, -quantize.DELTA_BOUND, quantize.DELTA_BOUND) * (n * quantize.DELTA_SCALE))
    want = [int(x) % quantize.MODULUS for x in q]
    want += [n, round(n * loss * quantize.LOSS_SCALE), round(n * acc * quantize.ACC_SCALE)]
    got = quantize.encode(n, loss, acc, delta)
    assert got.dtype == np.uint64 and [int(x) for x in got] == want
    vectors = [rng.integers(0, quantize.MODULUS, 1000, dtype=np.uint64) for _ in range(5)]
    assert [int(x) for x in quantize.sum_vectors(vectors)] == \
        [sum(int(v[i]) for v in vectors) % quantize.MODULUS for i in range(1000)]


# -- arrays and the model file -------------------------------------------------
def test_model_file_round_trip_and_checks():
    arrays = {"0.weight": np.ones((1, 5), np.float32), "0.bias": np.zeros(1, np.float32)}
    pre = Preprocessor.build(SCHEMA, ["income", "age", "region"], "defaulted")
    data = write_model(arrays, spec().to_dict(), pre.to_dict(), "job-1")
    assert data == write_model(dict(reversed(arrays.items())), spec().to_dict(), pre.to_dict(), "job-1")
    back, s, p, job = read_model(data)
    assert s == spec().to_dict() and Preprocessor.from_dict(p) == pre and job == "job-1"
    assert arrays_digest(back) == arrays_digest(arrays)
    assert arrays_digest({**arrays, "0.bias": np.ones(1, np.float32)}) != arrays_digest(arrays)
    with pytest.raises(InvalidInput, match="not a safetensors"):
        read_model(b"\x80\x04pickle")
    shapes = {"0.weight": (1, 5), "0.bias": (1,)}
    check_arrays(back, shapes, "x")
    with pytest.raises(InvalidInput, match="NaN"):
        check_arrays({**back, "0.bias": np.array([np.inf], np.float32)}, shapes, "the update")
    with pytest.raises(InvalidInput, match="wrong shape"):
        check_arrays({**back, "0.weight": np.ones((2, 5), np.float32)}, shapes, "the update")
    with pytest.raises(InvalidInput, match="unexpected"):
        check_arrays({**back, "extra": np.ones(1, np.float32)}, shapes, "the update")


def test_registry_refuses_batchnorm_and_oversized_models():
    import torch

    from fedtrust.training import models

    with pytest.raises(PolicyViolation, match="BatchNorm"):
        models.check_model(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)))
    with pytest.raises(PolicyViolation, match="over the limit"):
        models.build_model(spec(model="mlp", model_options={"hidden": [4096, 4096]}), 1000, 1)
    shapes = models.expected_shapes(spec(model="mlp", model_options={"hidden": [8]}), 5, 1)
    assert shapes == {"0.weight": (8, 5), "0.bias": (8,), "2.weight": (1, 8), "2.bias": (1,)}
    cnn = spec(model="cnn", model_options={"image": [1, 4, 4]}, features=["income"])
    assert models.build_model(cnn, 16, 3)(torch.zeros(2, 16)).shape == (2, 3)


@pytest.mark.parametrize("changes, inputs, outputs", [
    ({}, 7, 1), ({"model": "mlp"}, 7, 3), ({"model": "mlp", "model_options": {"hidden": [5, 9, 2]}}, 11, 4),
    ({"model": "cnn", "model_options": {"image": [2, 8, 12]}, "features": ["income"]}, 192, 3),
    ({"model": "cnn", "model_options": {"image": [1, 7, 5]}, "features": ["income"]}, 35, 1),
])
def test_the_parameter_count_by_arithmetic_equals_the_built_models(changes, inputs, outputs):
    from fedtrust.training import models

    s = spec(**changes)
    built = sum(p.numel() for p in models.build_model(s, inputs, outputs).parameters())
    assert models.parameter_count(s, inputs, outputs) == built


# -- the Grid -----------------------------------------------------------------
def _fake_nodes(ns: dict[str, int], rng):
    """send_round stand-ins that 'train' by adding noise and release unmasked vectors."""
    from flwr.app import ArrayRecord
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    from fedtrust.training.arrays import named_global

    individual = {}
    held: dict = {}  # "grid": the Grid, whose derivation stands in for the globals each node derives itself

    def send(node: str, data: bytes, expected: int) -> tuple[bytes, bytes]:
        msg = message_from_proto(ProtoMessage.FromString(data))
        rec = next((r for r in msg.content.values() if isinstance(r, ArrayRecord)), None)
        if rec is None:  # the round names the global by digest: the one the nodes derived
            deriv = held["grid"].derivation
            assert named_global(msg.content) == deriv.model_digest
            g = dict(deriv.state.arrays)
        else:
            g = {k: array_numpy(a) for k, a in sorted(rec.items())}
        if msg.metadata.message_type == "train":
            new = {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in g.items()}
            individual[node] = new
            delta = np.concatenate([(new[k].astype(np.float64) - g[k]).ravel() for k in g])
            return quantize.to_bytes(quantize.encode(ns[node], 0.5, 0.75, delta)), b"signature"
        return quantize.to_bytes(quantize.encode(ns[node], 0.25, 1.0, None)), b"signature"

    send.held = held  # type: ignore[attr-defined]
    return send, individual


def _grid(participants, send, events=None, s=None, init=None, **kw):
    from fedtrust.coordinator.grid import FedtrustGrid
    from fedtrust.training.server_step import Derivation

    init = init or {"w": np.zeros((3, 2), np.float32), "b": np.ones(2, np.float32)}
    grid = FedtrustGrid(7, participants, send, events, derivation=Derivation.start(s or spec(rounds=1), init),
                        job_digest="0" * 64, **kw)
    getattr(send, "held", {})["grid"] = grid
    return grid, init


def test_fedavg_over_the_grid_equals_fedavg_over_individual_replies():
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
    from flwr.supercore.task_identity import TaskIdentity

    from fedtrust.coordinator.server_loop import make_strategy
    from fedtrust.training.arrays import to_array_record

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 0
    ns = {"a": 30, "b": 10, "c": 60}
    send, individual = _fake_nodes(ns, np.random.default_rng(0))
    events = []
    grid, init = _grid(("a", "b", "c"), send, events.append)
    strategy = make_strategy(spec(rounds=1), 3)
    result = strategy.start(grid=grid, initial_arrays=to_array_record(init), num_rounds=1)
    replies = [RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in individual[n].items()}),
                           "metrics": MetricRecord({"num-examples": ns[n]})}) for n in ns]
    want = aggregate_arrayrecords(replies, "num-examples")
    for k in ("w", "b"):
        np.testing.assert_allclose(result.arrays[k].numpy(), want[k].numpy(), atol=1e-5)
    assert result.train_metrics_clientapp[1]["loss"] == pytest.approx(0.5)
    assert result.evaluate_metrics_clientapp[1]["accuracy"] == pytest.approx(1.0)
    assert [e.stage for e in events].count("aggregated") == 2
    assert all(len(d) == 2 for d in grid.digests.values())  # one digest per vector, per node
    grid.close()


def test_grid_reports_which_node_owes_which_step_while_its_call_runs():
    # what the coordinator's watchdog names when a worker stalls: the node and the step its call is stuck in
    from flwr.supercore.task_identity import TaskIdentity

    from fedtrust.coordinator.server_loop import make_strategy
    from fedtrust.training.arrays import to_array_record

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 0
    send, _ = _fake_nodes({"a": 30, "b": 10}, np.random.default_rng(0))
    seen: list[dict[str, str]] = []
    grid, init = _grid(("a", "b"), send, on_waiting=seen.append)
    make_strategy(spec(rounds=1), 2).start(grid=grid, initial_arrays=to_array_record(init), num_rounds=1)
    grid.close()
    owed = {(n, step) for snapshot in seen for n, step in snapshot.items()}
    assert owed == {(n, f"{p} round 1") for n in ("a", "b") for p in ("train", "evaluate")}
    assert seen[-1] == {}  # nothing owed once the round is over


def test_grid_refuses_rounds_that_are_not_exactly_the_participants_and_never_waits():
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedtrust.coordinator.grid import NODE_ID_BASE

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 0
    send, _ = _fake_nodes({"a": 1, "b": 1}, np.random.default_rng(0))
    grid, _ = _grid(("a", "b"), send, init={"w": np.zeros(2, np.float32)})
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))}),
                          "config": ConfigRecord({"server-round": 1})})
    with pytest.raises(JobFailed, match="exactly the job's participants"):
        grid.send_and_receive([Message(content, NODE_ID_BASE, "train")])
    with pytest.raises(JobFailed, match="waiting for more nodes"):
        for _ in range(100):
            grid.get_node_ids()

    def failing(node, data, expected):
        if node == "b":
            raise InvalidInput("refused by its contract")
        return send(node, data, expected)

    grid, _ = _grid(("a", "b"), failing, init={"w": np.zeros(2, np.float32)})
    msgs = [Message(content, NODE_ID_BASE + i, "train") for i in range(2)]
    with pytest.raises(JobFailed, match="node b failed in train round 1.*refused by its contract"):
        grid.send_and_receive(msgs)
    assert all(m.metadata.message_id for m in msgs)  # the Grid assigned the ids


def test_approved_app_digest_is_checked_before_anything_is_imported(tmp_path, monkeypatch):
    from fedtrust.config import ClientAppConfig
    from fedtrust.node.apps import AppRegistry

    mod = tmp_path / "owner_apps_x.py"
    mod.write_text("raise SystemExit('must not run at start-up')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="does not match its approved digest"):
        AppRegistry((ClientAppConfig("x", "owner_apps_x:app", "0" * 64),))
    import hashlib

    digest = hashlib.sha256(mod.read_bytes()).hexdigest()
    reg = AppRegistry((ClientAppConfig("x", "owner_apps_x:app", digest),))
    assert reg.names == ("x",)
    with pytest.raises(PolicyViolation, match="neither a registry model nor a ClientApp this node approved"):
        reg.get("unknown")
    mod.write_text("app = None\n")  # changed after approval: refused at load
    with pytest.raises(PolicyViolation, match="changed on disk"):
        reg.get("x")


@pytest.mark.parametrize("strategy, options", [
    ("fedavg", {}), ("fedprox", {"proximal_mu": 0.1}), ("fedadam", {"eta": 0.05}), ("fedyogi", {"eta": 0.05}),
    ("fedavgm", {"server_momentum": 0.9}),
])
def test_every_supported_strategy_runs_on_the_single_aggregated_reply(strategy, options):
    from flwr.supercore.task_identity import TaskIdentity

    from fedtrust.coordinator.server_loop import make_strategy
    from fedtrust.training.arrays import to_array_record

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 0
    s = spec(strategy=strategy, strategy_options=options, rounds=2)
    send, _ = _fake_nodes({"a": 5, "b": 7, "c": 9}, np.random.default_rng(1))
    grid, init = _grid(("a", "b", "c"), send, s=s, init={"w": np.zeros((4, 2), np.float32),
                                                          "b": np.zeros(2, np.float32)})
    result = make_strategy(s, 3).start(grid=grid, initial_arrays=to_array_record(init), num_rounds=2)
    final = {k: array_numpy(a) for k, a in result.arrays.items()}
    assert set(final) == {"w", "b"} and all(np.isfinite(v).all() and v.any() for v in final.values())
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    # the coordinator's final model is exactly the derived one every node computes
    assert {k: v.tobytes() for k, v in final.items()} == {k: v.tobytes() for k, v in
                                                          grid.derivation.state.arrays.items()}
    grid.close()


def test_array_decoding_matches_numpy_and_refuses_what_np_load_would_need_pickle_for():
    """Arrays are decoded without np.load (its header parser is not thread-safe on this CPython)."""
    import io
    import threading

    from flwr.app import Array

    rng = np.random.default_rng(0)
    for a in (rng.normal(size=(4, 2)).astype(np.float32), np.arange(5, dtype="<i8"), np.full((), 3.5),
              np.asfortranarray(rng.normal(size=(3, 7)))):
        np.testing.assert_array_equal(array_numpy(Array(a)), a)
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput, match="Python objects"):
        array_numpy(Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buf.getvalue()))
    good = Array(rng.normal(size=(16,)).astype(np.float32))
    with pytest.raises(InvalidInput, match="size"):
        array_numpy(Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-4]))
    # many threads at once, as the node and the coordinator decode
    errors = []

    def work():
        try:
            for _ in range(200):
                array_numpy(good)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
