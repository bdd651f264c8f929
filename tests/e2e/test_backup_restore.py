"""`fedtrust node backup` and `node restore`: every ledger a node needs comes back exactly, and nothing refunds.

A node spends on both of its ledgers (a DP query on the release ledger, a DP training job on the ledger and the
training store), is backed up while it serves, stopped, its state folder wiped, restored with the CLI: the budget
`fedtrust node budget` shows is identical, the stored training vectors are byte for byte the ones it released, and
a replay of the finished training job is still refused. A backup older than the newest release is refused by the
watermark, and nothing is restored.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedtrust.buyer.query import submit_query
from fedtrust.buyer.train import submit_training
from fedtrust.cli.main import app
from fedtrust.demo.federation import build_federation
from fedtrust.errors import ConfigError, PolicyViolation
from fedtrust.node.training_store import TrainingStore
from fedtrust.trust.credentials import load_identity

from training_helper import initial, make_spec, node_client, round_message, vector_bytes

pytestmark = pytest.mark.slow
OWNERS = {"bank-a": 600, "bank-b": 500}
PRIVACY = {"epsilon_total": "8", "delta": "1e-5", "epsilon_per_query": "1", "training_epsilon": "2",
           "training_delta": "1e-6"}
SQL = "SELECT region, COUNT(*) AS n FROM loans GROUP BY region"


def cli(*args) -> str:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.stdout


def cli_fails(*args) -> str:
    """The one-line error a refused command gives (`fedtrust` prints the exception's message)."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError), r.output
    assert "\n" not in str(r.exception)
    return str(r.exception)


def test_backup_wipe_restore_gives_back_every_ledger_and_refunds_nothing(tmp_path: Path):
    fed = build_federation(tmp_path / "fed", OWNERS, min_group_size=3, privacy=PRIVACY,
                           training={"models": ["logreg"]})
    cfg = fed.node_configs["bank-a"]
    state = fed.root / "state" / "bank-a"
    buyer = load_identity(fed.buyer_dir)
    spec = make_spec(rounds=1, evaluate=False, batch_size=100)
    with fed:
        submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
        old = tmp_path / "old-backup"
        cli("node", "backup", "--config", cfg, "--out", old)  # taken before the training job: too old later
        res = submit_training(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, spec)
        job, contract = res.receipt.job.to_json(), res.receipt.contract.to_json()
        backup = tmp_path / "backup"
        out = cli("node", "backup", "--config", cfg, "--out", backup)  # while the node serves
        assert "node.sqlite3" in out and "training.sqlite3" in out
        budget = json.loads(cli("node", "budget", "--config", cfg, "--json"))
        debits = fed.nodes["bank-a"].runtime.store.debits()
        vectors = {d.job_digest: TrainingStore(state).outputs(d.job_digest) for d in debits}
    assert [d.kind for d in debits] == ["query", "train"] and budget[0]["spent_epsilon"] != "1"
    assert any(vectors.values())
    assert sorted(p.name for p in backup.iterdir()) == ["MANIFEST.json", "node.sqlite3", "training.sqlite3",
                                                         "vertical.sqlite3"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in [backup, *backup.iterdir()])

    # restore never writes over a ledger; the operator wipes (moves aside) the state folder first
    assert "is not empty" in cli_fails("node", "restore", "--config", cfg, "--from", backup)
    shutil.rmtree(state)
    assert "is a backup of node bank-a, not of this node bank-b" in cli_fails(
        "node", "restore", "--config", fed.node_configs["bank-b"], "--from", backup)
    # a backup older than the newest release would refund budget: refused by the watermark, nothing restored
    message = cli_fails("node", "restore", "--config", cfg, "--from", old)
    assert "is older than the newest release this node attested" in message and not state.exists()
    cli("node", "restore", "--config", cfg, "--from", backup)
    assert json.loads(cli("node", "budget", "--config", cfg, "--json")) == budget
    for digest, released in vectors.items():
        assert TrainingStore(state).outputs(digest) == released

    # the restored node serves, and refuses a replay of the training job it finished
    with fed:
        ask = node_client(fed, "bank-a")
        g = initial(fed, spec, job=job)
        try:
            with pytest.raises(PolicyViolation, match="this training job is finished"):
                ask.train_round(job, contract, round_message(g, 1), vector_bytes(g))
        finally:
            ask.close()
        assert json.loads(cli("node", "budget", "--config", cfg, "--json")) == budget
