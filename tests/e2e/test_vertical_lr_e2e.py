"""Vertical logistic regression through real daemons (mutual TLS on 127.0.0.1:0): a PSI job, then a vertical-lr
job on its alignment — MPC between the two owners and the dealer, relayed by the coordinator, the model's shares
sealed to the buyer. The model comes within 0.02 AUC of central training on the plaintext join; `fedtrust train`,
`fedtrust predict` and `fedtrust exchange verify` take it; each owner refuses what the rules forbid, spending
nothing; the coordinator holds nothing that opens to the model."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.mpc import new_output_key
from fedtrust.buyer.query import load_contract, tls_of
from fedtrust.buyer.vertical import submit_psi
from fedtrust.cli.main import app
from fedtrust.demo.vertical import DEMO_VERTICAL_JOB, build_vertical_federation, run_vertical
from fedtrust.errors import JobFailed
from fedtrust.node.store import NodeStore
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec, sign_job
from fedtrust.trust.vertical_lr import load_vertical_lr_toml


def test_vertical_model_through_the_daemons_matches_central_training(tmp_path):
    v = run_vertical(tmp_path / "vertical")  # the demo's vertical part
    assert v.intersection_size == v.joined_rows == 200  # the attested PSI size is the plaintext join's
    assert abs(v.auc_vertical - v.auc_central) <= 0.02
    assert v.auc_central > 0.65 and v.auc_bank_only < v.auc_vertical - 0.02  # joining the telco's columns helps
    # the demo's joint statistic (kind "joint", MPC with the dealer through the daemons) equals the plaintext join
    plain = {r[0]: r for r in v.joint_plain}
    assert len(v.joint) == 3 and sum(r[1] for r in v.joint) == v.joined_rows
    for row in v.joint:
        assert row[1] == plain[row[0]][1] and all(abs(a - b) < 1e-6 for a, b in zip(row[2:], plain[row[0]][2:]))
    assert v.result["columns"] == ["input", "weight"] and v.result["rows"][-1][0] == "(bias)"


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlr-e2e")
    f = build_vertical_federation(root, bank_rows=150, telco_rows=160, shared=100, min_intersection=50, mpc=True)
    with f:
        f.psi = submit_psi(load_identity(f.buyer_dir), f.buyer_dir, f.contract_path, f.coordinator_address)
        yield f


def _job_toml(fed, tmp_path, **changes) -> str:
    text = DEMO_VERTICAL_JOB.format(alignment=fed.psi.job_id)
    for k, v in changes.items():
        text = "\n".join(f"{k} = {v}" if line.startswith(f"{k} =") else line for line in text.splitlines())
    p = tmp_path / "job.toml"
    p.write_text(text + "\n")
    return str(p)


def _jobs_spent(fed) -> dict[str, int]:
    digest = Envelope.from_json(fed.contract_path.read_bytes()).digest
    return {n: NodeStore(d.runtime.config.state).released_count(digest, "vertical-lr") for n, d in fed.nodes.items()}


def test_cli_train_predict_and_the_exchange_verifies(fed, tmp_path):
    common = ["--credentials", str(fed.buyer_dir), "--contract", str(fed.contract_path), "--coordinator",
              fed.coordinator_address]
    job, model, receipt = _job_toml(fed, tmp_path), tmp_path / "m.safetensors", tmp_path / "receipt.json"
    r = CliRunner().invoke(app, ["train", job, *common, "--out", str(model), "--receipt", str(receipt), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout[r.stdout.index("{"):])
    rows = tmp_path / "rows.csv"
    rows.write_text("income,segment,arpu,tenure_months\n20000,sme,10,3\n250000,private,290,230\n")
    p = CliRunner().invoke(app, ["predict", str(rows), "--model", str(model), "--job", job, "--json"])
    assert p.exit_code == 0, p.output
    probs = [float(row[0]) for row in json.loads(p.stdout[p.stdout.index("{"):])["rows"]]
    assert probs[0] > probs[1]  # low income, sme, low ARPU, short tenure: the riskier customer
    result = fed.buyer_dir / "jobs" / got["job_id"] / "result.json"
    v = CliRunner().invoke(app, ["exchange", "verify", str(fed.exchange_dir), str(receipt), "--result", str(result)])
    assert v.exit_code == 0, v.output
    assert "output shares sealed to the buyer" in " ".join(v.output.split())
    # the coordinator relayed sealed shares only: nothing in its state opens to (or spells) a weight
    state = b"".join(p.read_bytes() for p in (fed.root / "state" / "coord").rglob("*") if p.is_file())
    for _, w in json.loads(result.read_text())["rows"]:
        assert repr(w).encode() not in state
    # `job result` fetches the job again: the same weights and, byte for byte, the same model file
    again, receipt2 = tmp_path / "again.safetensors", tmp_path / "receipt2.json"
    j = CliRunner().invoke(app, ["job", "result", got["job_id"], "--credentials", str(fed.buyer_dir), "--out",
                                 str(again), "--receipt", str(receipt2), "--json"])
    assert j.exit_code == 0, j.output
    fetched = json.loads(j.stdout[j.stdout.index("{"):])
    assert fetched["result"]["rows"] == got["result"]["rows"] and fetched["model_digest"] == got["model_digest"]
    assert again.read_bytes() == model.read_bytes()
    assert json.loads(receipt2.read_text())["job"] == json.loads(receipt.read_text())["job"]
    t = CliRunner().invoke(app, ["job", "result", got["job_id"], "--credentials", str(fed.buyer_dir)])
    assert t.exit_code == 0, t.output
    assert "the model's weights" in t.stdout and got["model_digest"] in " ".join(t.stdout.split())


@pytest.mark.parametrize("change, match", [
    ({"epochs": 50}, "max_epochs is 20"),
    ({"features": '["bank.income", "telco.phone_key"]'}, r"not in the contract's \[vertical.columns\]"),
    ({"alignment": '"no-such-psi-job"'}, "holds no alignment of PSI job 'no-such-psi-job'"),
])
def test_owners_refuse_what_the_rules_forbid_and_spend_nothing(fed, tmp_path, change, match):
    buyer = load_identity(fed.buyer_dir)
    contract, raw = load_contract(buyer, fed.contract_path)
    spec = load_vertical_lr_toml(_job_toml(fed, tmp_path))
    spec = replace(spec, **{k: json.loads(v) if k != "epochs" else v for k, v in change.items()})
    if "features" in change:
        spec = replace(spec, features=tuple(spec.features))
    before = _jobs_spent(fed)
    _, key = new_output_key()
    job = JobSpec.create(contract, Envelope.from_json(raw).digest, replace(spec, output_key=key))
    client = CoordinatorClient(fed.coordinator_address, tls_of(buyer), "coord", 120)
    with pytest.raises(JobFailed, match=match):  # sent past the buyer's own check: the owners refuse
        client.submit_mpc(sign_job(job, buyer.signer).to_json(), raw)
    assert _jobs_spent(fed) == before
