"""The coordinator's job store (SQLite).

It holds what the coordinator may know: the signed job, its state, the
reason a job failed (naming a participant and a rule, never a value), the
receipt bundle (digests and signatures only) and every participant's relayed
ciphertexts, so the buyer can fetch them again: they are encrypted under the
buyer's key and pairwise-masked (one node's vector decrypts to uniform noise),
so the coordinator learns nothing from them. For a training job: the aggregate loss and
accuracy of each round (means over all participants) and the final model —
the coordinator computes both from sums anyway. No plaintext value
is stored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fedtrust.errors import NotFound, ReplayError
from fedtrust.sqlite import Database
from fedtrust.trust.canonical import utc_now

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    job_digest TEXT NOT NULL,
    contract_digest TEXT NOT NULL,
    buyer TEXT NOT NULL,
    participants TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    error TEXT NOT NULL DEFAULT '',
    receipt BLOB,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS training_rounds (
    job_id TEXT NOT NULL REFERENCES jobs (job_id),
    round INTEGER NOT NULL,
    train_loss REAL,
    train_accuracy REAL,
    eval_loss REAL,
    eval_accuracy REAL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS models (
    job_id TEXT PRIMARY KEY REFERENCES jobs (job_id),
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS relayed (
    job_id TEXT NOT NULL REFERENCES jobs (job_id),
    position INTEGER NOT NULL,
    node TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, position, idx)
);
"""


@dataclass(frozen=True)
class Relayed:
    """One participant's ciphertexts, as the node released them (encrypted and pairwise-masked)."""

    node: str
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True)
class RoundMetrics:
    """A training round's aggregate metrics (example-weighted means over all participants)."""

    round: int
    train_loss: float | None
    train_accuracy: float | None
    eval_loss: float | None
    eval_accuracy: float | None


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    job_digest: str
    contract_digest: str
    buyer: str
    participants: tuple[str, ...]
    state: str
    error: str
    receipt: bytes | None
    created_at: str
    updated_at: str
    kind: str = "query"
    #: progress: the last stage, the round (training), participants that answered, and when
    stage: str = ""
    round: int = 0
    rounds: int = 0
    answered: int = 0
    heartbeat_at: str = ""


#: columns added after the first release, with their definitions (stores migrate in place)
_ADDED_COLUMNS = {
    "kind": "TEXT NOT NULL DEFAULT 'query'",
    "stage": "TEXT NOT NULL DEFAULT ''",
    "round": "INTEGER NOT NULL DEFAULT 0",
    "rounds": "INTEGER NOT NULL DEFAULT 0",
    "answered": "INTEGER NOT NULL DEFAULT 0",
    "heartbeat_at": "TEXT NOT NULL DEFAULT ''",
    # a training job's signed envelopes, kept so that a restarted coordinator can resume it
    "job_envelope": "BLOB",
    "contract_envelope": "BLOB",
}


class JobStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.db = Database(Path(state_dir) / "coordinator.sqlite3", SCHEMA)
        with self.db.write() as con:  # stores made by earlier versions
            cols = {r["name"] for r in con.execute("PRAGMA table_info(jobs)")}
            for name, definition in _ADDED_COLUMNS.items():
                if name not in cols:
                    con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")

    def heartbeat(self, job_id: str, stage: str, *, round: int | None = None, rounds: int | None = None,
                  answered: int | None = None) -> None:
        """Record a running job's progress (what `fedtrust job status` shows as round and last heartbeat)."""
        sets: list[str] = ["stage = ?", "heartbeat_at = ?"]
        args: list[str | int] = [stage, utc_now()]
        for col, v in (("round", round), ("rounds", rounds), ("answered", answered)):
            if v is not None:
                sets.append(f"{col} = ?")
                args.append(v)
        with self.db.write(durable=False) as con:  # progress only: not worth an fsync per step
            con.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ? AND state = 'running'", (*args, job_id))

    def jobs_of(self, buyer: str, limit: int = 50) -> list[JobRecord]:
        """A buyer's jobs, newest first."""
        rows = self.db.read().execute(
            "SELECT * FROM jobs WHERE buyer = ? ORDER BY created_at DESC, rowid DESC LIMIT ?", (buyer, limit))
        return [_record(r) for r in rows]

    def begin(self, job_id: str, job_digest: str, contract_digest: str, buyer: str,
              participants: tuple[str, ...], kind: str = "query", resume: bool = False) -> JobRecord | None:
        """Mark a job running. Returns the finished record when this exact job already succeeded.
        `resume` restarts a job that `take_resumable` handed over (it stays 'running' meanwhile).

        Not fsynced: the row of a running job guards no release (every node keeps its own debit and answers a
        resubmitted job with the release it recorded), and the job's next durable write (its result, its
        failure, a training job's envelopes) puts it on disk with everything before it."""
        now = utc_now()
        with self.db.write(durable=False) as con:
            row = con.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is not None:
                if row["job_digest"] != job_digest:
                    raise ReplayError("job id already used for a different job; sign the new job with a new id")
                if row["state"] == "succeeded":
                    return _record(row)
                if row["state"] == "running" and not resume:
                    raise ReplayError("this job is already running; follow it with `fedtrust job status`")
                con.execute("DELETE FROM relayed WHERE job_id = ?", (job_id,))
                con.execute("DELETE FROM training_rounds WHERE job_id = ?", (job_id,))
                con.execute("DELETE FROM models WHERE job_id = ?", (job_id,))
                con.execute("UPDATE jobs SET state='running', error='', receipt=NULL, updated_at=?, stage='',"
                            " round=0, answered=0, heartbeat_at=? WHERE job_id=?", (now, now, job_id))
                return None
            con.execute(
                "INSERT INTO jobs (job_id, job_digest, contract_digest, buyer, participants, state, created_at,"
                " updated_at, kind, heartbeat_at) VALUES (?,?,?,?,?, 'running', ?, ?, ?, ?)",
                (job_id, job_digest, contract_digest, buyer, json.dumps(list(participants)), now, now, kind, now),
            )
        return None

    def fail(self, job_id: str, reason: str) -> None:
        with self.db.write() as con:
            con.execute("UPDATE jobs SET state='failed', error=?, updated_at=? WHERE job_id=?",
                        (reason, utc_now(), job_id))

    def succeed(self, job_id: str, receipt: bytes, relayed: Sequence[Relayed]) -> None:
        """A query job's receipt and the releases it relayed, in participant order."""
        with self.db.write() as con:
            con.execute("DELETE FROM relayed WHERE job_id = ?", (job_id,))
            con.executemany("INSERT INTO relayed (job_id, position, node, idx, data) VALUES (?,?,?,?,?)",
                            [(job_id, p, r.node, i, c) for p, r in enumerate(relayed)
                             for i, c in enumerate(r.ciphertexts)])
            con.execute("UPDATE jobs SET state='succeeded', receipt=?, updated_at=? WHERE job_id=?",
                        (receipt, utc_now(), job_id))

    def record_round(self, job_id: str, rnd: int, phase: str, loss: float, accuracy: float) -> None:
        """A training round's aggregate loss and accuracy (phase "train" or "evaluate")."""
        cols = ("train_loss", "train_accuracy") if phase == "train" else ("eval_loss", "eval_accuracy")
        with self.db.write() as con:
            con.execute("INSERT OR IGNORE INTO training_rounds (job_id, round) VALUES (?, ?)", (job_id, rnd))
            con.execute(f"UPDATE training_rounds SET {cols[0]} = ?, {cols[1]} = ? WHERE job_id = ? AND round = ?",
                        (float(loss), float(accuracy), job_id, rnd))

    def rounds(self, job_id: str) -> list[RoundMetrics]:
        rows = self.db.read().execute("SELECT * FROM training_rounds WHERE job_id = ? ORDER BY round", (job_id,))
        return [RoundMetrics(r["round"], r["train_loss"], r["train_accuracy"], r["eval_loss"], r["eval_accuracy"])
                for r in rows]

    def succeed_training(self, job_id: str, receipt: bytes, model: bytes) -> None:
        with self.db.write() as con:
            con.execute("INSERT OR REPLACE INTO models (job_id, data) VALUES (?, ?)", (job_id, model))
            con.execute("UPDATE jobs SET state='succeeded', receipt=?, updated_at=? WHERE job_id=?",
                        (receipt, utc_now(), job_id))

    def model(self, job_id: str) -> bytes:
        row = self.db.read().execute("SELECT data FROM models WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} has no trained model at this coordinator")
        return bytes(row[0])

    def keep_envelopes(self, job_id: str, job_bytes: bytes, contract_bytes: bytes) -> None:
        """Keep a training job's signed job and contract, so a restarted coordinator can resume it."""
        with self.db.write() as con:
            con.execute("UPDATE jobs SET job_envelope = ?, contract_envelope = ? WHERE job_id = ?",
                        (job_bytes, contract_bytes, job_id))

    def interrupt(self, job_id: str) -> None:
        """The coordinator is stopping under a running training job: it stays running, to resume at start."""
        with self.db.write() as con:
            con.execute("UPDATE jobs SET error = 'interrupted by a coordinator shutdown; it resumes when the "
                        "coordinator starts again', updated_at = ? WHERE job_id = ? AND state = 'running'",
                        (utc_now(), job_id))

    def fail_interrupted(self) -> int:
        """At start-up: jobs left running by a previous process that cannot resume failed with it."""
        with self.db.write() as con:
            cur = con.execute(
                "UPDATE jobs SET state='failed', error='the coordinator restarted during the job; submit it again',"
                " updated_at=? WHERE state='running' AND (kind != 'train' OR job_envelope IS NULL)", (utc_now(),))
            return cur.rowcount

    def take_resumable(self) -> list[tuple[JobRecord, bytes, bytes]]:
        """At start-up: training jobs a previous process left running, with their envelopes. They stay
        'running' (stage "resuming"), so `job status` never shows a job that is about to resume as failed;
        `TrainingJobs.resume` restarts them (`begin(..., resume=True)`) or fails them with the reason."""
        with self.db.write() as con:
            rows = con.execute("SELECT * FROM jobs WHERE state = 'running' AND kind = 'train' AND job_envelope IS NOT "
                               "NULL").fetchall()
            con.execute("UPDATE jobs SET stage='resuming', error='interrupted by a coordinator restart; resuming',"
                        " updated_at=? WHERE state = 'running' AND kind = 'train' AND job_envelope IS NOT NULL",
                        (utc_now(),))
        return [(_record(r), bytes(r["job_envelope"]), bytes(r["contract_envelope"])) for r in rows]

    def get(self, job_id: str) -> JobRecord:
        row = self.db.read().execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r} at this coordinator; check the job id")
        return _record(row)

    def relayed(self, job_id: str) -> tuple[Relayed, ...]:
        """The relayed releases of a finished query job, in participant order."""
        rows = self.db.read().execute(
            "SELECT position, node, data FROM relayed WHERE job_id = ? ORDER BY position, idx", (job_id,))
        out: dict[int, tuple[str, list[bytes]]] = {}
        for r in rows:
            out.setdefault(r["position"], (r["node"], []))[1].append(bytes(r["data"]))
        return tuple(Relayed(node, tuple(cts)) for _, (node, cts) in sorted(out.items()))


def _record(row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"], job_digest=row["job_digest"], contract_digest=row["contract_digest"],
        buyer=row["buyer"], participants=tuple(json.loads(row["participants"])), state=row["state"],
        error=row["error"], receipt=bytes(row["receipt"]) if row["receipt"] is not None else None,
        created_at=row["created_at"], updated_at=row["updated_at"], kind=row["kind"], stage=row["stage"],
        round=row["round"], rounds=row["rounds"], answered=row["answered"], heartbeat_at=row["heartbeat_at"],
    )
