"""Strict configuration, `node check`, key file modes, backups that cannot rewind a budget, and signals."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedtrust.buyer.query import submit_query
from fedtrust.config import load_coordinator_config, load_node_config
from fedtrust.demo.federation import build_federation
from fedtrust.errors import ConfigError
from fedtrust.exchange.issuer import issue_contract
from fedtrust.node.daemon import NodeDaemon
from fedtrust.query.dataset import Dataset, file_digest
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.schema import load_schema_toml

OWNERS = {"bank-a": 200, "bank-b": 150}
SQL = "SELECT region, COUNT(*) AS n FROM loans GROUP BY region"
FEDTRUST = [sys.executable, "-m", "fedtrust.cli.main"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A federation's files (daemons not started)."""
    return build_federation(tmp_path_factory.mktemp("opscfg"), OWNERS, min_group_size=3,
                            privacy={"epsilon_total": "5", "delta": "1e-6", "epsilon_per_query": "1"})


def variant(files, tmp_path, role: str, edit) -> Path:
    src = files.node_configs["bank-a"] if role == "node" else files.coordinator_config
    out = src.parent / f"variant-{tmp_path.name}.toml"
    out.write_text(edit(src.read_text()))
    return out


@pytest.mark.parametrize("role, edit, match", [
    ("coordinator", lambda t: t + "node_timeout = 5\n",
     r"variant-.*\.toml: \[coordinator\] node_timeout is not a known key; known keys: .*node_timeout_s"),
    ("node", lambda t: t.replace("[[datasets]]", "threads = 4\n\n[[datasets]]"),
     r"\[node\] threads is not a known key"),
    ("coordinator", lambda t: t.replace("node_timeout_s = 120", 'node_timeout_s = "5"'),
     r"\[coordinator\] node_timeout_s must be a number, not a string \('5'\); write it without quotes"),
    ("coordinator", lambda t: t.replace("node_timeout_s = 120", "node_timeout_s = 0"),
     r"\[coordinator\] node_timeout_s must be greater than 0 \(got 0.0\)"),
    ("node", lambda t: t.replace("[[datasets]]", "max_workers = 0\n\n[[datasets]]"),
     r"\[node\] max_workers must be between 1 and 1024 \(got 0\)"),
    ("node", lambda t: t.replace("[[datasets]]", 'metrics_listen = "9100"\n\n[[datasets]]'),
     r"\[node\] metrics_listen must be HOST:PORT"),
    ("node", lambda t: t + "\n[extras]\nx = 1\n", r"\[extras\] is not a known table"),
    ("node", lambda t: t.replace('path = "', 'paht = "'), r"\[\[datasets\]\] entry 1 paht is not a known key"),
])
def test_config_mistakes_are_one_line_errors_naming_the_key_and_file(files, tmp_path, role, edit, match):
    path = variant(files, tmp_path, role, edit)
    load = load_node_config if role == "node" else load_coordinator_config
    with pytest.raises(ConfigError, match=match) as e:
        load(path)
    assert "\n" not in str(e.value)


def test_the_cli_prints_a_config_mistake_as_one_line_and_exits_3(files, tmp_path):
    path = variant(files, tmp_path, "coordinator", lambda t: t + "node_timeout = 5\n")
    p = subprocess.run(FEDTRUST + ["coordinator", "serve", "--config", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 3  # config
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "node_timeout is not a known key" in lines[0] and "Traceback" not in p.stderr


def test_absurd_contract_validity_is_a_one_line_error(files, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text((files.root / "rules.toml").read_text().replace("valid_days = 30", "valid_days = 3650000"))
    with pytest.raises(ConfigError, match=r"`valid_days` must be between 1 and 10980 \(got 3650000\)"):
        issue_contract(files.exchange_dir, "analyst", "coord", list((files.root / "products").glob("*.json")),
                       rules, tmp_path / "c.json", purpose="credit risk research")


def test_key_files_readable_by_others_are_refused_with_the_chmod_to_run(files):
    key = files.root / "credentials" / "bank-b" / "signing.key"
    os.chmod(key, 0o644)
    try:
        with pytest.raises(ConfigError, match=rf"key file {key} is accessible to group or others \(mode 0644\); "
                                              rf"run `chmod 600 {key}`"):
            NodeDaemon(load_node_config(files.node_configs["bank-b"]))
    finally:
        os.chmod(key, 0o600)


def test_node_check_reports_counts_per_column_and_the_commitment(files, tmp_path):
    p = subprocess.run(FEDTRUST + ["node", "check", "--config", str(files.node_configs["bank-a"]), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    import json

    report = json.loads(p.stdout)
    [d] = report["datasets"]
    assert d["commitment"] == file_digest(files.data["bank-a"])
    assert {c["column"]: c["rows"] for c in d["columns"]} == {"region": 200, "income": 200, "age": 200,
                                                              "defaulted": 200}
    # the counts, on a file with NULLs, values beyond the public bounds and outside the domain
    schema = load_schema_toml(files.root / "schema.toml")
    bad = tmp_path / "bad.csv"
    bad.write_text("region,income,age,defaulted\nnorth,100,30,0\nmars,200,17,1\n,600000,,0\nsouth,-5,101,1\n")
    with Dataset.open(bad, schema) as ds:
        prof = {c.column: (c.rows, c.nulls, c.clipped, c.outside_domain) for c in ds.profile()}
    assert prof == {"region": (4, 1, 0, 1), "income": (4, 0, 2, 0), "age": (4, 1, 2, 0), "defaulted": (4, 0, 0, 0)}


def test_a_restored_old_ledger_is_refused_and_the_backup_cannot_refund_budget(tmp_path):
    fed = build_federation(tmp_path, OWNERS, min_group_size=3,
                           privacy={"epsilon_total": "5", "delta": "1e-6", "epsilon_per_query": "1"})
    buyer = load_identity(fed.buyer_dir)
    with fed:
        submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
        backup = tmp_path / "bank-a-backup"
        p = subprocess.run(FEDTRUST + ["node", "backup", "--config", str(fed.node_configs["bank-a"]),
                                       "--out", str(backup)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
        spent = fed.nodes["bank-a"].runtime.store.spent_epsilon(
            fed.nodes["bank-a"].runtime.store.budgets()[0].contract_digest)
    assert spent == 2
    state = tmp_path / "state" / "bank-a"
    for f in state.glob("node.sqlite3*"):
        f.unlink()
    shutil.copy(backup / "node.sqlite3", state / "node.sqlite3")  # the operator restores yesterday's ledger by hand
    with pytest.raises(ConfigError, match=r"is older than the newest release this node attested \(contract "
                                          r"\w{16}…: entry 2 was released, the ledger ends at entry 1\); starting on "
                                          r"it would refund spent budget\. Restore the newest ledger"):
        NodeDaemon(load_node_config(fed.node_configs["bank-a"]))
    p = subprocess.run(FEDTRUST + ["node", "check", "--config", str(fed.node_configs["bank-a"])],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 3 and "is older than the newest release" in p.stderr


def serve(config: Path) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, FEDTRUST_LOG="info", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(FEDTRUST + ["node", "serve", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    assert "on port" in line, line + proc.stderr.read()
    return proc, int(line.rsplit("port", 1)[1].split()[0])


def test_sighup_is_ignored_with_a_log_line_and_sigterm_drains_once(files):
    proc, port = serve(files.node_configs["bank-b"])
    try:
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None  # still serving
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)  # a second one while the first drains must not re-enter the stop
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGHUP ignored" in err and "does not reload its config" in err
    assert "node bank-b stopping: no new jobs" in err and "node bank-b stopped" in err
