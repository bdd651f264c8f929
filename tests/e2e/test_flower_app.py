"""A Flower app written the way Flower's templates write it runs unchanged under Flower's simulation runtime and
as an approved ClientApp on fedtrust nodes; approval pins its whole package."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedtrust.buyer.train import submit_training
from fedtrust.config import ClientAppConfig
from fedtrust.demo.data import write_loans
from fedtrust.demo.federation import build_federation
from fedtrust.errors import ConfigError, PolicyViolation
from fedtrust.exchange.verify import verify_receipt_file
from fedtrust.node.apps import AppRegistry, app_digest
from fedtrust.training.arrays import read_model

from training_helper import identity, make_spec

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "flower_app"
PACKAGE = APP_DIR / "flower_loans"
RUNNER = Path(__file__).resolve().parents[1] / "flower_simulation.py"


def test_the_app_imports_nothing_from_fedtrust():
    import ast

    for f in PACKAGE.glob("*.py"):  # a plain Flower app; the one hook is node_config["dataset-path"]
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "fedtrust" for n in names), f


@pytest.mark.slow
def test_the_app_runs_under_flowers_own_simulation_runtime(tmp_path):
    data = write_loans(tmp_path / "loans.csv", 600, seed=3)
    before = app_digest(PACKAGE)
    p = subprocess.run([sys.executable, str(RUNNER), str(APP_DIR), "2", "num-server-rounds=1",
                        f'dataset-path="{data}"'], cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert "aggregate_train: Received 2 results and 0 failures" in log
    assert "aggregate_evaluate: Received 2 results and 0 failures" in log
    import torch

    state = torch.load(tmp_path / "final_model.pt")  # what the template's ServerApp saves
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    assert app_digest(PACKAGE) == before  # the files ran as they are (Flower's __pycache__ is not part of them)


@pytest.fixture(scope="module")
def ffed(tmp_path_factory):
    sys.path.insert(0, str(APP_DIR))  # "installed" on the nodes' Python path, as `pip install` would
    approve = (f'\n[[clientapps]]\nname = "loans-flower"\ntarget = "flower_loans.client_app:app"\n'
               f'digest = "{app_digest(PACKAGE)}"\n')
    fed = build_federation(tmp_path_factory.mktemp("ffed"), {"bank-a": 400, "bank-b": 300},
                           training={"models": ["loans-flower"]}, node_extra=approve)
    fed.start()
    try:
        yield fed
    finally:
        fed.stop()
        sys.path.remove(str(APP_DIR))


@pytest.mark.slow
def test_the_same_files_run_as_an_approved_clientapp_on_fedtrust_nodes(ffed, tmp_path):
    spec = make_spec(model="loans-flower", model_options={"architecture": "mlp"}, rounds=2, batch_size=32,
                     learning_rate=0.05)
    res = submit_training(identity(ffed, "analyst"), ffed.buyer_dir, ffed.contract_path, ffed.coordinator_address,
                          spec)
    # the app read partition-id / num-partitions, run_config's batch-size and local-epochs and the round's lr
    # (it fails on a missing key), and its template metric names (train_loss, eval_loss, eval_acc) were used
    assert [m.round for m in res.metrics] == [1, 2]
    assert all(float(m.train_loss) > 0 and m.eval_loss is not None and float(m.eval_accuracy) > 0.5
               for m in res.metrics)
    assert all(a.warnings == () for a in res.verified.attestations)
    arrays = read_model(res.model)[0]
    assert sorted(arrays) == ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    receipt, model = tmp_path / "receipt.json", tmp_path / "model.safetensors"
    receipt.write_bytes(res.receipt.to_json())
    model.write_bytes(res.model)
    assert "VALID" in verify_receipt_file(ffed.exchange_dir, receipt, model).summary


def _copy(tmp_path: Path, name: str = "pinned_app") -> Path:
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for f in (root / name).glob("*.py"):
        f.write_text(f.read_text().replace("flower_loans", name))
    return root


def test_approval_pins_the_whole_package_not_one_file(tmp_path, monkeypatch):
    root = _copy(tmp_path)
    monkeypatch.syspath_prepend(str(root))
    pkg = root / "pinned_app"
    digest = app_digest(pkg)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"compiled")
    assert app_digest(pkg) == digest  # Python's caches are not the app
    cfg = (ClientAppConfig("pinned", "pinned_app.client_app:app", digest),)
    reg = AppRegistry(cfg)
    # the training code lives in task.py: changing it (not the entry file) is a different app
    task = pkg / "task.py"
    original = task.read_text()
    task.write_text(original.replace("nn.Linear(32, 16)", "nn.Linear(32, 16, bias=False)"))
    assert app_digest(pkg) != digest
    with pytest.raises(ConfigError, match="does not match its approved digest"):
        AppRegistry(cfg)
    with pytest.raises(PolicyViolation, match="changed on disk since the node started"):
        reg.get("pinned")
    task.write_text(original)
    (pkg / "extra.py").write_text("x = 1\n")  # an added file changes the package too
    with pytest.raises(ConfigError, match="does not match its approved digest"):
        AppRegistry(cfg)
    (pkg / "extra.py").unlink()
    app = reg.get("pinned")
    from flwr.clientapp import ClientApp

    assert isinstance(app, ClientApp)
    # imported from the hashed snapshot: a module of the package that was not in it is not importable
    (pkg / "late.py").write_text("raise SystemExit('never executed')\n")
    with pytest.raises(ModuleNotFoundError):
        __import__("pinned_app.late")
