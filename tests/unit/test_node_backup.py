"""`node.backup`: a backup names its node and every file's digest; restore refuses anything else, restoring nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtrust.config import NodeConfig
from fedtrust.errors import ConfigError
from fedtrust.node.backup import backup_state, restore_state
from fedtrust.node.store import NodeStore
from fedtrust.node.training_store import TrainingStore


def config(tmp_path: Path, name: str = "bank-a") -> NodeConfig:
    return NodeConfig(name=name, listen="127.0.0.1:0", credentials=tmp_path / "creds", state=tmp_path / name,
                      datasets=())


def test_restore_refuses_a_damaged_or_foreign_backup_and_a_state_folder_in_use(tmp_path):
    cfg = config(tmp_path)
    NodeStore(cfg.state).jobs.withdraw("a" * 64, "terms changed")
    TrainingStore(cfg.state)
    with pytest.raises(ConfigError, match="holds no ledger"):
        backup_state(config(tmp_path, "bank-b"), tmp_path / "none")
    out = tmp_path / "backup"
    manifest = backup_state(cfg, out)
    assert sorted(manifest.files) == ["node.sqlite3", "training.sqlite3"]
    assert json.loads((out / "MANIFEST.json").read_text())["node"] == "bank-a"
    with pytest.raises(ConfigError, match="already exists; choose a new folder"):
        backup_state(cfg, out)
    with pytest.raises(ConfigError, match="is not empty; stop the node and move the folder aside"):
        restore_state(cfg, out)
    with pytest.raises(ConfigError, match="is a backup of node bank-a, not of this node bank-b"):
        restore_state(config(tmp_path, "bank-b"), out)
    with pytest.raises(ConfigError, match="is not a node backup"):
        restore_state(config(tmp_path, "bank-c"), tmp_path)
    data = bytearray((out / "training.sqlite3").read_bytes())
    data[-1] ^= 1
    (out / "training.sqlite3").write_bytes(bytes(data))
    fresh = config(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="training.sqlite3 does not match the digest in MANIFEST.json"):
        restore_state(fresh, out)
    assert not fresh.state.exists()  # nothing restored


def test_a_restored_state_folder_holds_what_was_backed_up(tmp_path):
    cfg = config(tmp_path)
    NodeStore(cfg.state).jobs.withdraw("b" * 64, "terms changed")
    backup_state(cfg, tmp_path / "backup")
    moved = cfg.state.rename(tmp_path / "aside")
    restore_state(cfg, tmp_path / "backup")
    assert NodeStore(cfg.state).jobs.withdrawn_at("b" * 64) == NodeStore(moved).jobs.withdrawn_at("b" * 64)
    assert cfg.state.stat().st_mode & 0o077 == 0
    assert not (tmp_path / "bank-a.restoring").exists()
