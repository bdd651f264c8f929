"""The node's record of the training rounds it answered (SQLite, next to its ledger).

One row per (job, phase, round), claimed before the ClientApp runs and
filled with the released (masked) vector before anything leaves the node:

* a retry of the same (job, phase, round) from the same global model gets the
  stored bytes back — no second training, no fresh masks;
* the same round with another global model is refused: a node releases at
  most one update per (job, round);
* a global model this node already trained from, in any job, is refused: a
  node never trains twice from the same global model, so a coordinator cannot
  obtain two sums that differ only in one node's contribution.

Rows left claimed by a node that stopped mid-round were never released and
are cleared at start-up. Only masked vectors and digests are stored.

Durability: a release is one fsynced commit (the vector is on disk before it
leaves the node, so a restarted node sends the same bytes again, never a
second vector under the same masks). A claim guards no release (claims are
cleared at start-up) and is not fsynced; the release's fsync covers it. The
WAL is not checkpointed by the committing thread (that would write the
model-sized blob a second time, with its own fsync, before the vector
leaves): a background thread checkpoints after each release.
"""
from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fedtrust.errors import ReplayError
from fedtrust.sqlite import Database
from fedtrust.trust.canonical import utc_now

log = logging.getLogger("fedtrust.node")

SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_digest TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('train', 'evaluate')),
    round INTEGER NOT NULL,
    global_digest TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'released')),
    output BLOB,
    output_digest TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (job_digest, phase, round)
);
CREATE UNIQUE INDEX IF NOT EXISTS trained_once ON rounds (global_digest) WHERE phase = 'train';
"""


class TrainingStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.db = Database(Path(state_dir) / "training.sqlite3", SCHEMA)
        self._local = threading.local()
        self._pending = threading.Lock()  # held while a checkpoint is queued, so releases coalesce
        #: checkpoints the WAL after releases, off the release path (its thread ends with the store)
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training-checkpoint")
        with self._write() as con:
            con.execute("DELETE FROM rounds WHERE state = 'running'")

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        if not getattr(self._local, "manual", False):  # this thread's connection never checkpoints on commit
            self.db.read().execute("PRAGMA wal_autocheckpoint=0")
            self._local.manual = True
        with self.db.write(durable) as con:
            yield con

    def _checkpoint_soon(self) -> None:
        if self._pending.acquire(blocking=False):
            self._checkpointer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        self._pending.release()
        try:
            self.db.read().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:  # the WAL keeps the data; the next checkpoint catches up
            log.warning("training store checkpoint failed: %s", e)

    def claim(self, job_digest: str, phase: str, rnd: int, global_digest: str) -> bytes | None:
        """The stored release of this exact round, or None after claiming it; ReplayError for the refusals above."""
        with self._write(durable=False) as con:
            row = con.execute("SELECT * FROM rounds WHERE job_digest = ? AND phase = ? AND round = ?",
                              (job_digest, phase, rnd)).fetchone()
            if row is not None:
                if row["global_digest"] != global_digest:
                    raise ReplayError(
                        f"{phase} round {rnd} of this job was already answered from another global model; "
                        "a node releases at most one update per round"
                    )
                if row["state"] == "released":
                    return bytes(row["output"])
                raise ReplayError(f"{phase} round {rnd} of this job is being computed now; retry when it is done")
            if phase == "train":
                seen = con.execute("SELECT 1 FROM rounds WHERE global_digest = ? AND phase = 'train'",
                                   (global_digest,)).fetchone()
                if seen is not None:
                    raise ReplayError(
                        "this node already trained from this global model; a node never trains twice from the "
                        "same global model (the coordinator must send each round's new global)"
                    )
            con.execute(
                "INSERT INTO rounds (job_digest, phase, round, global_digest, state, created_at)"
                " VALUES (?,?,?,?, 'running', ?)", (job_digest, phase, rnd, global_digest, utc_now()))
        return None

    def release(self, job_digest: str, phase: str, rnd: int, output: bytes, digest: str | None = None) -> None:
        """Store the released vector durably (one fsync); `digest` is its sha256 hex when the caller has it."""
        with self._write() as con:
            con.execute(
                "UPDATE rounds SET state = 'released', output = ?, output_digest = ?"
                " WHERE job_digest = ? AND phase = ? AND round = ? AND state = 'running'",
                (output, digest or hashlib.sha256(output).hexdigest(), job_digest, phase, rnd))
        self._checkpoint_soon()

    def abandon(self, job_digest: str, phase: str, rnd: int) -> None:
        """Drop a claim whose computation failed (nothing was released)."""
        with self._write(durable=False) as con:
            con.execute("DELETE FROM rounds WHERE job_digest = ? AND phase = ? AND round = ? AND state = 'running'",
                        (job_digest, phase, rnd))

    def output(self, job_digest: str, phase: str, rnd: int) -> tuple[bytes, str] | None:
        """(the released vector, its sha256 hex) of one round, or None when this node released none."""
        row = self.db.read().execute(
            "SELECT output, output_digest FROM rounds WHERE job_digest = ? AND phase = ? AND round = ?"
            " AND state = 'released'", (job_digest, phase, rnd)).fetchone()
        return None if row is None else (bytes(row["output"]), row["output_digest"])

    def released(self, job_digest: str) -> list[tuple[str, int, str]]:
        """(phase, round, sha256 of the released vector) in release order: round, then train before evaluate."""
        rows = self.db.read().execute(
            "SELECT phase, round, output_digest FROM rounds WHERE job_digest = ? AND state = 'released'"
            " ORDER BY round, CASE phase WHEN 'train' THEN 0 ELSE 1 END", (job_digest,)).fetchall()
        return [(r["phase"], r["round"], r["output_digest"]) for r in rows]

    def outputs(self, job_digest: str) -> list[bytes]:
        """The released vectors themselves (for the node owner's audit and the tests)."""
        rows = self.db.read().execute(
            "SELECT output FROM rounds WHERE job_digest = ? AND state = 'released'"
            " ORDER BY round, CASE phase WHEN 'train' THEN 0 ELSE 1 END", (job_digest,)).fetchall()
        return [bytes(r["output"]) for r in rows]
