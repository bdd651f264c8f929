"""`fedtrust node backup` / `node restore`: one consistent copy of everything a node needs to restore its ledgers.

A node's state folder holds three SQLite databases and one file:

- `node.sqlite3`: the ledger (every debit, attestation and release, chained), the audit log, the owner's job
  log and withdrawals;
- `training.sqlite3`: every masked vector the node released per (job, phase, round) — a retried or resumed round
  gets the stored bytes back, never a second, different vector under the same masks;
- `vertical.sqlite3`: the row alignments of finished PSI jobs (joint statistics and vertical LR read them);
- `revocations.json`: the newest signed revocation list the node holds.

`backup_state` copies each database with SQLite's online backup API while the daemon serves, the ledger FIRST:
a vector is stored only after its job's debit commits, so every debit in the copied ledger has every vector it
released before the copy in the stores copied after it. A manifest names each file with its size and sha256.

`restore_state` restores into an absent or empty state folder only (never over a ledger), checks the manifest
(node name, every digest) and, before anything is moved into place, that the copied ledger reaches the node's
watermark: restoring an old backup can never refund budget (see `node.watermark`). The watermark itself lives
outside the state folder and is not part of the backup.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from fedtrust import __version__
from fedtrust.config import NodeConfig
from fedtrust.errors import ConfigError
from fedtrust.trust.canonical import utc_now

__all__ = ["BACKUP_FORMAT", "DATABASES", "FILES", "MANIFEST", "BackupManifest", "backup_state", "restore_state"]

BACKUP_FORMAT = "fedtrust-node-backup/1"
MANIFEST = "MANIFEST.json"
#: the node's databases, in the order they are copied (the ledger first: see the module docstring)
DATABASES = ("node.sqlite3", "training.sqlite3", "vertical.sqlite3")
#: plain files copied as they are
FILES = ("revocations.json",)


@dataclass(frozen=True)
class BackupManifest:
    node: str
    created_at: str
    #: file name -> (bytes, sha256)
    files: dict[str, tuple[int, str]]

    def to_json(self) -> bytes:
        return json.dumps({"format": BACKUP_FORMAT, "node": self.node, "created_at": self.created_at,
                           "fedtrust": __version__,
                           "files": {n: {"bytes": b, "sha256": d} for n, (b, d) in sorted(self.files.items())}},
                          indent=2).encode()

    @classmethod
    def read(cls, folder: Path) -> BackupManifest:
        try:
            d = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{folder} is not a node backup (it has no {MANIFEST}); pass the folder "
                              "`fedtrust node backup --out` made") from None
        except (OSError, ValueError):
            raise ConfigError(f"{folder / MANIFEST} cannot be read as JSON; the backup is damaged, use another "
                              "one") from None
        try:
            if d["format"] != BACKUP_FORMAT:
                raise ConfigError(f"{folder} is a backup of format {d['format']!r}, not {BACKUP_FORMAT!r}; restore "
                                  "it with the fedtrust version that made it")
            files = {str(n): (int(f["bytes"]), str(f["sha256"])) for n, f in d["files"].items()}
            manifest = cls(str(d["node"]), str(d["created_at"]), files)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(f"{folder / MANIFEST} is malformed; the backup is damaged, use another one") from None
        unknown = sorted(set(files) - set(DATABASES) - set(FILES))
        if unknown or "node.sqlite3" not in files:
            raise ConfigError(f"{folder / MANIFEST} lists {', '.join(unknown) or 'no node.sqlite3'}; a node backup "
                              f"holds node.sqlite3 and only {', '.join(DATABASES[1:] + FILES)} besides")
        return manifest


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return path.stat().st_size, h.hexdigest()


def _private_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_database(src: Path, dst: Path) -> None:
    """SQLite's online backup of `src` (a consistent snapshot, also while the daemon writes) into a new `dst`."""
    _private_file(dst)
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30.0)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            target.close()
    finally:
        source.close()
    _fsync(dst)


def backup_state(config: NodeConfig, out: Path) -> BackupManifest:
    """Copy every database and file of the node's state folder into the new folder `out` (0700, files 0600)."""
    out = Path(out)
    state = config.state
    if not (state / "node.sqlite3").is_file():
        raise ConfigError(f"{state} holds no ledger (node.sqlite3) to back up; check [node] state in "
                          f"{config.source or 'the config'}")
    if out.exists():
        raise ConfigError(f"{out} already exists; choose a new folder for the backup")
    try:
        out.mkdir(mode=0o700, parents=True)
    except OSError as e:
        raise ConfigError(f"cannot create the backup folder {out} ({e.strerror}); choose a writable path") from None
    os.chmod(out, 0o700)
    files: dict[str, tuple[int, str]] = {}
    for name in DATABASES:
        if (state / name).is_file():
            _copy_database(state / name, out / name)
            files[name] = _digest(out / name)
    for name in FILES:
        if (state / name).is_file():
            _private_file(out / name)
            shutil.copyfile(state / name, out / name)
            _fsync(out / name)
            files[name] = _digest(out / name)
    manifest = BackupManifest(config.name, utc_now(), files)
    _private_file(out / MANIFEST)
    (out / MANIFEST).write_bytes(manifest.to_json())
    _fsync(out / MANIFEST)
    _fsync(out)
    return manifest


def restore_state(config: NodeConfig, backup: Path) -> BackupManifest:
    """Restore a `backup_state` folder into the node's absent or empty state folder (the daemon stopped).

    ConfigError, naming the problem and the fix, for a folder that is not a backup of this node, a damaged file, a
    state folder that is not empty, or a ledger older than the node's watermark (nothing is restored then).
    """
    from fedtrust.node.store import NodeStore

    backup, state = Path(backup), config.state
    manifest = BackupManifest.read(backup)
    if manifest.node != config.name:
        raise ConfigError(f"{backup} is a backup of node {manifest.node}, not of this node {config.name}; restore "
                          "a backup this node made")
    for name, (size, digest) in manifest.files.items():
        if not (backup / name).is_file():
            raise ConfigError(f"{backup / name} is missing from the backup; it is damaged, use another one")
        if _digest(backup / name) != (size, digest):
            raise ConfigError(f"{backup / name} does not match the digest in {MANIFEST}; the backup is damaged, "
                              "use another one")
    if state.exists() and any(state.iterdir()):
        raise ConfigError(f"the state folder {state} is not empty; stop the node and move the folder aside "
                          "(restore never writes over a ledger), then restore again")
    staging = state.with_name(state.name + ".restoring")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(mode=0o700, parents=True)
    os.chmod(staging, 0o700)
    try:
        for name in manifest.files:
            _private_file(staging / name)
            shutil.copyfile(backup / name, staging / name)
            _fsync(staging / name)
        # the copied ledger must reach the node's watermark: an old backup cannot refund spent budget
        watermark = config.watermark or state.with_name(state.name + ".watermark")
        try:
            NodeStore(staging, watermark)
        except ConfigError as e:
            raise ConfigError(f"{backup} was not restored: " + str(e).replace(str(staging / "node.sqlite3"),
                                                                              str(backup / "node.sqlite3"))) from None
        if state.exists():
            state.rmdir()
        os.replace(staging, state)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync(state.parent)
    return manifest
