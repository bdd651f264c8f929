"""Federated training end to end: real node and coordinator daemons over mTLS, Flower strategies, masked sums,
safetensors delivery, receipts verified by the exchange, predictions with the nodes' preprocessing."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from fedtrust.buyer.query import load_contract
from fedtrust.buyer.train import submit_training
from fedtrust.demo.central import pooled_rows, score, train_central
from fedtrust.demo.federation import build_federation
from fedtrust.errors import InvalidInput, ReplayError, VerificationError
from fedtrust.exchange.verify import verify_receipt_file
from fedtrust.training.arrays import read_model
from fedtrust.trust.canonical import sha256_hex
from fedtrust.trust.dsse import Envelope

from training_helper import (
    MODELS,
    clientapps_toml,
    identity,
    initial,
    make_spec,
    node_client,
    round_message,
    signed_job,
    vector_bytes,
)

pytestmark = pytest.mark.slow
OWNERS = {"bank-a": 1500, "bank-b": 1000, "insurer-c": 600}


@pytest.fixture(scope="module")
def tfed(tmp_path_factory):
    fed = build_federation(tmp_path_factory.mktemp("tfed"), OWNERS, training={"models": MODELS},
                           node_extra=clientapps_toml())
    fed.start()
    try:
        yield fed
    finally:
        fed.stop()


def train(fed, spec, events=None):
    buyer = identity(fed, "analyst")
    return submit_training(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, spec,
                           events.append if events is not None else None)


def test_fedavg_trains_close_to_central_training_and_the_exchange_verifies_the_model(tfed, tmp_path):
    spec = make_spec(rounds=4)
    events = []
    res = train(tfed, spec, events)
    # progress: every round, every node answered, aggregate metrics only
    agg = [e for e in events if e.stage == "aggregated"]
    assert [(e.round, e.phase) for e in agg] == [(r, p) for r in range(1, 5) for p in ("train", "evaluate")]
    assert max(e.done for e in events if e.stage == "node-answered") == 3
    assert [m.round for m in res.metrics] == [1, 2, 3, 4] and res.metrics[-1].eval_accuracy is not None
    # the model is as good as one trained on the pooled rows with the same loop
    contract, _ = load_contract(identity(tfed, "analyst"), tfed.contract_path)
    from fedtrust.training.predict import load_model

    model, _, _ = load_model(res.model)
    pooled = pooled_rows(list(tfed.data.values()), contract.schema, spec)
    fed_acc, fed_loss = score(model, pooled)
    central, _ = train_central(list(tfed.data.values()), contract.schema, spec)
    cen_acc, cen_loss = score(central, pooled)
    assert fed_acc >= cen_acc - 0.02 and fed_loss <= cen_loss + 0.05, (fed_acc, cen_acc, fed_loss, cen_loss)
    # the receipt: every owner attested the digests of the vectors it released; the exchange checks the model file
    assert res.model_digest == sha256_hex(res.model) == res.verified.statement.training.model_digest
    assert all(len(a.outputs) == 8 for a in res.verified.attestations)  # 4 train + 4 evaluate vectors each
    receipt, model_file = tmp_path / "receipt.json", tmp_path / "model.safetensors"
    receipt.write_bytes(res.receipt.to_json())
    model_file.write_bytes(res.model)
    verdict = verify_receipt_file(tfed.exchange_dir, receipt, model_file)
    assert verdict.result_checked and "signed model" in verdict.summary and "3 owners attested" in verdict.summary
    tampered = bytearray(res.model)
    tampered[-1] ^= 1
    model_file.write_bytes(bytes(tampered))
    with pytest.raises(VerificationError, match="model file does not match the digest"):
        verify_receipt_file(tfed.exchange_dir, receipt, model_file)
    assert verify_receipt_file(tfed.exchange_dir, receipt).already_recorded


def test_fedadam_trains_an_mlp_and_the_model_file_is_safetensors_with_the_spec(tfed):
    spec = make_spec(model="mlp", strategy="fedadam", rounds=3, optimizer="adam", learning_rate=0.01,
                     strategy_options={"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001},
                     model_options={"hidden": [8]}, evaluate=False)
    res = train(tfed, spec)
    arrays, s, pre, job_id = read_model(res.model)
    assert s == spec.to_dict() and job_id == res.job_id and pre["classes"] == ["0", "1"]
    assert sorted(arrays) == ["0.bias", "0.weight", "2.bias", "2.weight"] and arrays["0.weight"].shape == (8, 7)
    assert all(m.eval_loss is None for m in res.metrics)
    losses = [float(m.train_loss) for m in res.metrics]
    assert losses[-1] < losses[0], losses  # the server-side Adam steps make progress


def test_fedprox_with_an_approved_app_that_adds_per_node_details_which_the_node_strips(tfed):
    res = train(tfed, make_spec(model="chatty", strategy="fedprox", strategy_options={"proximal_mu": 0.1},
                                rounds=2))
    assert res.verified.job.payload.model == "chatty"
    for name, daemon in tfed.nodes.items():
        vectors = daemon.training.store.outputs(res.verified.job_digest)
        # only the model's 8 parameters + count, loss, accuracy were released: the extra metric was dropped
        assert {len(v) for v in vectors} == {8 * 11, 8 * 3}


def test_an_app_replying_without_a_loss_is_named_in_every_attestation_and_the_exchange_summary(tfed, tmp_path):
    res = train(tfed, make_spec(model="no-loss", rounds=1, evaluate=False))
    assert all(a.warnings == ("ClientApp no-loss replied to training rounds without a `loss` (or `train_loss`) "
                              "metric; the aggregate training loss counts this node as 0",)
               for a in res.verified.attestations)
    assert float(res.metrics[0].train_loss) == 0
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(res.receipt.to_json())
    assert "warning from bank-a: ClientApp no-loss replied" in verify_receipt_file(tfed.exchange_dir, receipt).summary


def test_one_nodes_update_is_uniform_noise_and_nothing_per_node_reaches_the_coordinator(tfed, caplog):
    caplog.set_level("DEBUG")
    spec = make_spec(model="mlp", rounds=2)
    res = train(tfed, spec)
    # the coordinator's store: aggregates, receipt and model only — no node's vector, anywhere in its files
    state = tfed.root / "state" / "coord"
    blob = b"".join(p.read_bytes() for p in state.iterdir() if p.is_file())
    released = []
    for daemon in tfed.nodes.values():
        released += daemon.training.store.outputs(res.verified.job_digest)
    assert released and all(v[:64] not in blob for v in released)
    con = sqlite3.connect(state / "coordinator.sqlite3")
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    # `relayed` holds queries' encrypted, masked releases (for `job result`); a training job stores none there
    assert tables <= {"jobs", "relayed", "training_rounds", "models", "sqlite_sequence"}
    assert con.execute("SELECT count(*) FROM relayed WHERE job_id = ?", (res.job_id,)).fetchone()[0] == 0
    stored = con.execute("SELECT round, train_loss, eval_accuracy FROM training_rounds WHERE job_id = ?",
                         (res.job_id,)).fetchall()
    assert [(r, f"{loss:.6f}", f"{acc:.6f}") for r, loss, acc in stored] == [
        (m.round, m.train_loss, m.eval_accuracy) for m in res.metrics]
    assert not any(n in rec.getMessage() for rec in caplog.records for n in ("1500", "1000", "600"))
    # one node's vector, read as the coordinator (or a colluding buyer) would: uniform mod 2^63
    vec = np.frombuffer(released[0], dtype="<u8")
    assert len(vec) > 800
    buckets = np.bincount((vec >> np.uint64(59)).astype(np.int64), minlength=16)
    expected = len(vec) / 16
    chi2 = float(((buckets - expected) ** 2 / expected).sum())
    assert chi2 < 60, f"not uniform: chi2={chi2}"  # 15 dof: p < 1e-6 above 60


def test_a_node_answers_one_update_per_round_and_never_trains_twice_from_the_same_global(tfed):
    spec = make_spec(rounds=3)
    job, contract, _ = signed_job(tfed, spec)
    g = initial(tfed, spec, job=job)  # round 1's global: the one the signed job determines
    ask = node_client(tfed, "bank-b")
    try:
        first = ask.train_round(job, contract, round_message(g, 1), vector_bytes(g))
        again = ask.train_round(job, contract, round_message(g, 1), vector_bytes(g))
        assert first == again  # a retry gets the stored bytes: no second training, no fresh masks
        other = {k: v + 0.5 for k, v in g.items()}
        with pytest.raises(VerificationError, match="not the one the signed job determines"):
            ask.train_round(job, contract, round_message(other, 1), vector_bytes(g))
        with pytest.raises(VerificationError, match="has not forwarded every participant's signed vectors of train "
                                                    "round 1"):
            ask.train_round(job, contract, round_message(g, 2), vector_bytes(g))
        job2, contract2, _ = signed_job(tfed, spec)  # another job starts from its own global
        with pytest.raises(VerificationError, match="not the one the signed job determines"):
            ask.train_round(job2, contract2, round_message(g, 1), vector_bytes(g))
        with pytest.raises(VerificationError, match="forwarded every participant's signed vectors"):
            ask.finish(job, contract)  # a node attests only a final model it computed
    finally:
        ask.close()
    # below the derivation, the store still refuses a second update per round and a second training from a global
    store = tfed.nodes["bank-b"].training.store
    digest = Envelope.from_json(job).digest
    with pytest.raises(ReplayError, match="already answered from another global model"):
        store.claim(digest, "train", 1, "f" * 64)
    with pytest.raises(ReplayError, match="never trains twice"):
        store.claim(Envelope.from_json(job2).digest, "train", 1, store_global(store, digest))


def test_a_round_that_names_its_global_by_digest_trains_from_the_nodes_own_copy(tfed):
    """The coordinator names the global instead of sending it again: the node trains from the one it derived,
    and refuses any other digest exactly as it refuses other arrays."""
    from fedtrust.training.arrays import arrays_digest

    spec = make_spec(rounds=2)
    job, contract, _ = signed_job(tfed, spec)
    g = initial(tfed, spec, job=job)
    ask = node_client(tfed, "insurer-c")
    try:
        with pytest.raises(VerificationError, match="not the one the signed job determines"):
            ask.train_round(job, contract, round_message(g, 1, named="ab" * 32, carried=False), vector_bytes(g))
        with pytest.raises(InvalidInput, match="by its sha256 digest"):
            ask.train_round(job, contract, round_message(g, 1, named="not a digest", carried=False), vector_bytes(g))
        with pytest.raises(InvalidInput, match="or name the global model by digest, not both"):
            ask.train_round(job, contract, round_message(g, 1, named=arrays_digest(g)), vector_bytes(g))
        named = ask.train_round(job, contract, round_message(g, 1, named=arrays_digest(g), carried=False),
                                vector_bytes(g))
        # the same round with the arrays carried is the same (job, round, global): the stored release comes back
        assert ask.train_round(job, contract, round_message(g, 1), vector_bytes(g)) == named
    finally:
        ask.close()


def store_global(store, job_digest):
    return store.db.read().execute("SELECT global_digest FROM rounds WHERE job_digest = ?", (job_digest,)).fetchone()[0]


def test_predict_reproduces_the_nodes_preprocessing(tfed, tmp_path):
    import torch

    from fedtrust.query.dataset import Dataset
    from fedtrust.training.data import load_rows
    from fedtrust.training.predict import load_model, predict_rows, write_predictions

    spec = make_spec(rounds=1)
    res = train(tfed, spec)
    model, _, pre = load_model(res.model)
    path = tfed.data["insurer-c"]
    pred = predict_rows(res.model, path, spec)
    contract, _ = load_contract(identity(tfed, "analyst"), tfed.contract_path)
    with Dataset.open(path, contract.schema) as ds:  # what the node computed from the same rows
        node_x = load_rows(ds, pre).x
    with torch.no_grad():
        want = torch.sigmoid(model(torch.from_numpy(node_x))[:, 0]).numpy()
    assert len(pred.rows) == OWNERS["insurer-c"] and pred.columns == ("probability", "predicted")
    np.testing.assert_allclose(pred.scores, want, rtol=1e-5)
    out = tmp_path / "p.csv"
    write_predictions(pred, out)
    assert out.read_text().splitlines()[0] == "probability,predicted"


def test_cli_train_predict_and_exchange_verify(tfed, tmp_path):
    env = dict(os.environ, FEDTRUST_LOG="warning")
    cmd = [sys.executable, "-m", "fedtrust.cli.main"]
    job = tmp_path / "job.toml"
    job.write_text('[job]\ndataset = "loans"\nmodel = "logreg"\nfeatures = ["income", "age", "region"]\n'
                   'label = "defaulted"\nstrategy = "fedavg"\nrounds = 2\nlocal_epochs = 1\nbatch_size = 64\n'
                   'learning_rate = 0.5\n')
    model, receipt = tmp_path / "model.safetensors", tmp_path / "receipt.json"
    p = subprocess.run(cmd + ["train", "--credentials", str(tfed.buyer_dir), "--contract", str(tfed.contract_path),
                              "--coordinator", tfed.coordinator_address, "--out", str(model), "--receipt",
                              str(receipt), "--json", str(job)], capture_output=True, text=True, env=env, timeout=180)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["model_digest"] == sha256_hex(model.read_bytes()) and len(summary["rounds"]) == 2
    again = tmp_path / "again.safetensors"
    p = subprocess.run(cmd + ["job", "result", summary["job_id"], "--credentials", str(tfed.buyer_dir), "--out",
                              str(again), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert again.read_bytes() == model.read_bytes() and json.loads(p.stdout)["rounds"] == summary["rounds"]
    rows = tmp_path / "new.csv"
    rows.write_text("income,age,region\n30000,25,south\n250000,60,north\n,40,\n")
    preds = tmp_path / "predictions.csv"
    p = subprocess.run(cmd + ["predict", "--model", str(model), "--job", str(job), str(rows), "--out", str(preds)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = preds.read_text().splitlines()
    assert lines[0] == "probability,predicted" and len(lines) == 4
    assert all(0 <= float(line.split(",")[0]) <= 1 for line in lines[1:])
    # the same rows from a GB18030 export with NA for missing: refused with the fix, then read the same way
    gbk = tmp_path / "new-gbk.csv"
    gbk.write_bytes("income,age,region\n30000,25,south\n250000,60,north\nNA,40,华北\n".encode("gb18030"))
    p = subprocess.run(cmd + ["predict", "--model", str(model), str(gbk)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 3 and "--encoding gb18030" in p.stderr, p.stderr
    p = subprocess.run(cmd + ["predict", "--model", str(model), str(gbk), "--encoding", "gb18030", "--null-value", "",
                              "--null-value", "NA", "--out", str(tmp_path / "p2.csv")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "p2.csv").read_text().splitlines() == lines  # an unknown region reads as a missing one
    p = subprocess.run(cmd + ["exchange", "verify", str(tfed.exchange_dir), str(receipt), "--result", str(model)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "VALID" in p.stdout and "model file matches" in p.stdout
    # a refused job: non-zero exit, the rule named, no traceback
    job.write_text(job.read_text().replace('strategy = "fedavg"', 'strategy = "krum"'))
    p = subprocess.run(cmd + ["train", "--credentials", str(tfed.buyer_dir), "--contract", str(tfed.contract_path),
                              "--coordinator", tfed.coordinator_address, str(job)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 6 and "Traceback" not in p.stderr and "krum" in p.stderr  # 6: a policy refusal
