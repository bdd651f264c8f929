"""Vertical logistic regression (issue 11 item 4): the job's form, the contract's rules and refusals, and the MPC
program run by two in-process parties over sealed links — within 0.02 AUC of central training on the joined rows,
the buyer's model file predicting the same probabilities, and no party's share telling anything alone."""
from __future__ import annotations

import base64
import csv
from dataclasses import replace

import numpy as np
import pytest

from fedtrust.demo.central import auc_of
from fedtrust.demo.vertical import build_vertical_federation, plaintext_alignment
from fedtrust.errors import ConfigError, InvalidInput, PolicyViolation
from fedtrust.privacy import crypten_shim
from fedtrust.privacy.mpc.program import SCALE, program, run_in_process
from fedtrust.query.dataset import Dataset
from fedtrust.training import vertical_lr as vlr
from fedtrust.training.predict import predict_rows
from fedtrust.trust.canonical import sha256_hex
from fedtrust.trust.contracts import verify_contract
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec
from fedtrust.trust.vertical import VerticalRules
from fedtrust.trust.vertical_lr import KIND, VerticalLRRules, VerticalLRSpec, check_vertical_lr, load_vertical_lr_toml

NODES = ("bank-node", "telco-node")
KEY = base64.b64encode(bytes(range(32))).decode()
SPEC = VerticalLRSpec("psi-job-1", ("telco.arpu", "bank.income", "bank.segment", "telco.tenure_months"),
                      "bank.defaulted", epochs=5, learning_rate=1.0, batch_size=32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlr")
    fed = build_vertical_federation(root, bank_rows=260, telco_rows=320, shared=200, min_intersection=50)
    buyer = load_identity(fed.buyer_dir)
    contract = verify_contract(Envelope.from_json(fed.contract_path.read_bytes()), buyer.exchange_key)
    schemas = {h.credential.name: h.product.schema for h in contract.owners}
    alignment = plaintext_alignment(fed.data, schemas)
    plan = vlr.plan_for(contract, NODES, SPEC)
    inputs = {}
    for node in NODES:
        with Dataset.open(fed.data[node], schemas[node]) as ds:
            inputs[node] = vlr.local_inputs(plan, node, ds, alignment[node])
    return fed, contract, plan, inputs


def run_parties(contract, inputs, tamper_n=None, relay=None):
    """The registered vertical-lr program, both owners and the dealer as threads over sealed in-process links."""
    if tamper_n is not None:  # the telco's alignment is shorter than the bank's
        inputs = {**inputs, "telco-node": {**inputs["telco-node"], "x": inputs["telco-node"]["x"][:tamper_n]}}
    job = JobSpec.create(contract, "0" * 64, replace(SPEC, output_key=KEY))
    return job, run_in_process(program(KIND), inputs, job=job, contract=contract, relay=relay, timeout_s=60)


class Recorder:
    """Sits where the coordinator sits: records every sealed frame it carries."""

    def __init__(self):
        self.frames = []

    def __call__(self, rank, link):
        frames = self.frames

        class _L:
            def send(self, dst, frame):
                frames.append(frame)
                link.send(dst, frame)

            def recv(self, src):
                return link.recv(src)
        return _L()


def joined(plan, inputs):
    x = np.concatenate([inputs[b.party]["x"].numpy() for b in plan.blocks], axis=1)
    lab = inputs[plan.label_party]
    return x, lab["y"].numpy(), lab["usable"].numpy()


def test_mpc_model_matches_central_training_within_0_02_auc(world, tmp_path):
    fed, contract, plan, inputs = world
    relay = Recorder()
    job, run = run_parties(contract, inputs, relay=relay)
    model, shares = vlr.finish(SPEC, run.outputs), run.shares
    seed = vlr.order_seed(job.nonce)
    x, y, usable = joined(plan, inputs)
    central = vlr.fit_plain(x, y, usable, SPEC, seed)
    got, want = (auc_of(y, vlr.predict_proba(m.weight, m.bias, x)) for m in (model, central))
    assert want > 0.7, "the demo data must be learnable for the comparison to mean anything"
    assert abs(got - want) <= 0.02
    assert np.allclose(model.weight, central.weight, atol=0.05) and abs(model.bias - central.bias) < 0.05
    # joining helps: the bank's columns alone do worse than the joined model
    bank_only = vlr.fit_plain(x[:, : plan.blocks[0].width], y, usable, SPEC, seed)
    assert auc_of(y, vlr.predict_proba(bank_only.weight, bank_only.bias, x[:, : plan.blocks[0].width])) < got - 0.02
    # one party's share alone is ring noise, not the weights
    alone = crypten_shim.fixed_point_decode(shares[0]["weight"], SCALE).numpy()
    assert not np.allclose(alone, model.weight, atol=1.0)
    # the relay (where the coordinator sits) saw sealed frames only: no frame header, no encoded feature value
    features = [int(round(v * 2 ** 16)).to_bytes(8, "little", signed=True)
                for v in inputs["telco-node"]["x"][:20].flatten().tolist() if v > 0.01]
    assert relay.frames and all(b'"dtype"' not in f and not any(e in f for e in features) for f in relay.frames)
    # the buyer's result: a weight per input, the bias, the digest of the model file built from them
    assert run.result["rows"][-1][0] == "(bias)" and len(run.result["rows"]) == plan.width + 1
    assert run.result["model_digest"] == sha256_hex(vlr.model_file(plan, job.job_id, model))

    # the buyer's model file predicts from a file with every feature (qualified or bare names), as the model does
    raw = vlr.model_file(plan, job.job_id, model)
    rows = tmp_path / "joined.csv"
    names = [f.name for f in plan.preprocessor.features]
    with Dataset.open(fed.data["bank-node"], contract.owners[0].product.schema) as bank, \
            Dataset.open(fed.data["telco-node"], contract.owners[1].product.schema) as telco:
        al = plaintext_alignment(fed.data, {h.credential.name: h.product.schema for h in contract.owners})
        b = bank.columns_at(["income", "segment"], al["bank-node"])
        t = telco.columns_at(["arpu", "tenure_months"], al["telco-node"])
    with rows.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["bank.income", "segment", "telco.arpu", "tenure_months"])
        w.writerows(zip(b["income"], b["segment"], t["arpu"], t["tenure_months"]))
    pred = predict_rows(raw, rows)
    assert names == ["bank.income", "bank.segment", "telco.arpu", "telco.tenure_months"]
    assert pred.columns == ("probability", "predicted")
    np.testing.assert_allclose(pred.scores, vlr.predict_proba(model.weight, model.bias, x), atol=1e-5)


def test_owners_with_alignments_of_different_sizes_refuse(world):
    _, contract, _, inputs = world
    with pytest.raises(InvalidInput, match="alignments differ in size"):
        run_parties(contract, inputs, tamper_n=150)


def test_local_inputs_follow_the_alignment_and_the_public_schema(world):
    fed, contract, plan, inputs = world
    assert inputs["bank-node"]["x"].shape == (200, 4)  # income + one-hot segment (3)
    assert inputs["telco-node"]["x"].shape == (200, 2) and "y" not in inputs["telco-node"]
    assert set(inputs["bank-node"]["y"].unique().tolist()) <= {0.0, 1.0}
    assert float(inputs["bank-node"]["x"].max()) <= 1.0 and float(inputs["bank-node"]["x"].min()) >= 0.0
    with Dataset.open(fed.data["bank-node"], contract.owners[0].product.schema) as ds:
        with pytest.raises(InvalidInput, match="alignment names rows"):
            ds.columns_at(["income"], [10_000])
        with pytest.raises(PolicyViolation, match="not a value column"):
            ds.columns_at(["phone_key"], [0])


# -- the job's form and the rules ---------------------------------------------------------------
def test_spec_round_trips_through_the_signed_job(world):
    _, contract, _, _ = world
    job = JobSpec.create(contract, "0" * 64, replace(SPEC, output_key=KEY))
    assert JobSpec.from_dict(job.to_dict()) == job and job.kind == "vertical-lr" and job.is_mpc
    assert job.to_dict()["output_key"] == KEY and "sql" not in job.to_dict()
    assert "output_key" not in job.to_dict()["vertical_lr"]  # the spec (and the model file's copy) has none
    with pytest.raises(InvalidInput, match="output_key"):  # owners seal the model's shares to it: required
        JobSpec.from_dict(JobSpec.create(contract, "0" * 64, SPEC).to_dict())


def test_job_toml(tmp_path):
    p = tmp_path / "job.toml"
    p.write_text('[job]\nkind = "vertical-lr"\nalignment = "abc"\nfeatures = ["bank.income", "telco.arpu"]\n'
                 'label = "bank.defaulted"\nepochs = 3\nlearning_rate = 0.5\nbatch_size = 16\n')
    assert load_vertical_lr_toml(p) == VerticalLRSpec("abc", ("bank.income", "telco.arpu"), "bank.defaulted", 3, 0.5, 16)
    p.write_text('[job]\nalignment = "abc"\n')
    with pytest.raises(ConfigError, match="not a vertical-lr job"):
        load_vertical_lr_toml(p)


@pytest.mark.parametrize("change, match", [
    ({"features": ["income"]}, "product.column"),
    ({"features": ["bank.income", "bank.income"]}, "twice"),
    ({"label": "bank.income"}, "cannot also be a feature"),
    ({"epochs": 0}, "`epochs` must be between"),
    ({"learning_rate": "nan"}, "learning_rate"),
    ({"alignment": "../x"}, "alignment"),
    ({"extra": 1}, "unknown key `extra`"),
])
def test_malformed_specs_are_refused(change, match):
    d = {**SPEC.to_dict(), "features": ["bank.income", "telco.arpu"], **change}
    with pytest.raises(InvalidInput, match=match):
        VerticalLRSpec.from_dict(d)


def _with(contract, **vertical):
    rules = contract.rules
    return replace(contract, rules=replace(rules, vertical=replace(rules.vertical, **vertical)))


@pytest.mark.parametrize("make, spec, match", [
    (lambda c: replace(c, rules=replace(c.rules, vertical=None)), SPEC, "sells no vertical jobs"),
    (lambda c: _with(c, kinds=("psi",)), SPEC, "kinds do not include 'vertical-lr'"),
    (lambda c: replace(c, rules=replace(c.rules, privacy=object())), SPEC, r"\[privacy\]"),
    (lambda c: _with(c, lr=None), SPEC, r"\[vertical.lr\]"),
    (lambda c: _with(c, lr=VerticalLRRules(4, 8)), SPEC, "max_epochs is 4"),
    (lambda c: _with(c, lr=VerticalLRRules(20, 3)), SPEC, "max_features is 3"),
    (lambda c: c, replace(SPEC, features=("bank.phone_key",)), r"not in the contract's \[vertical.columns\]"),
    (lambda c: c, replace(SPEC, features=("insurer.age",)), "not in this contract"),
    (lambda c: c, replace(SPEC, label="bank.segment", features=("bank.income",)), "not binary"),
    (lambda c: _with(c, columns=(("bank", ("income", "segment")), ("telco", ("arpu", "tenure_months")))), SPEC,
     "'bank.defaulted' is not in"),
])
def test_rules_refuse_with_the_rule_named(world, make, spec, match):
    _, contract, _, _ = world
    check_vertical_lr(contract, SPEC)  # the demo contract sells this job
    with pytest.raises(PolicyViolation, match=match):
        check_vertical_lr(make(contract), spec)


def test_vertical_lr_rules_parse():
    base = {"key": "k", "min_intersection": 1, "max_keys": 10, "max_jobs": 1, "columns": {}}
    with pytest.raises(ConfigError, match=r"\[vertical.lr\] \(max_epochs, max_features\) is missing"):
        VerticalRules.from_dict({**base, "kinds": ["psi", "vertical-lr"]})
    with pytest.raises(ConfigError, match="max_epochs"):
        VerticalRules.from_dict({**base, "kinds": ["vertical-lr"], "lr": {"max_features": 2}})
    r = VerticalRules.from_dict({**base, "kinds": ["vertical-lr"], "lr": {"max_epochs": 3, "max_features": 2}})
    assert r.lr == VerticalLRRules(3, 2) and VerticalRules.from_dict(r.to_dict()) == r
    assert "lr" not in VerticalRules.from_dict({**base, "kinds": ["psi"]}).to_dict()


def test_predict_checks_the_job_toml_against_the_model_file(world, tmp_path):
    _, _, plan, _ = world
    raw = vlr.model_file(plan, "job-1", vlr.VerticalModel(np.zeros(plan.width, dtype=np.float32), 0.0))
    rows = tmp_path / "rows.csv"
    rows.write_text("income,segment,arpu\n1000,sme,20\n")
    with pytest.raises(InvalidInput, match="`telco.tenure_months` is missing"):
        predict_rows(raw, rows)
    with pytest.raises(ConfigError, match="differ from the model file's"):
        predict_rows(raw, rows, replace(SPEC, label="bank.segment"))
