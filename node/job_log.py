"""What the owner sees of its node's work: one row per job, and its withdrawals from contracts.

Per job: the contract, buyer and coordinator, the SQL or training spec the
buyer signed, ε spent, how many groups this node withheld, the outcome (and
the rule a refusal named) and how long it took. It lives in the node's own
ledger file and never leaves the node; the log line each job writes at info
names the job, contract, parties, outcome, ε and duration, never a data
value. A withdrawal (`fedtrust node withdraw`) is a durable row: from then
on the node refuses every job under that contract, naming the withdrawal.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from fedtrust.errors import ConfigError
from fedtrust.sqlite import Database
from fedtrust.trust.canonical import is_sha256_hex, utc_now

__all__ = ["JobRecord", "JobLog"]

log = logging.getLogger("fedtrust.node")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    contract_digest TEXT,
    job_id TEXT,
    kind TEXT,
    buyer TEXT,
    coordinator TEXT,
    request TEXT,
    epsilon TEXT,
    withheld INTEGER,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    duration_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS withdrawals (
    contract_digest TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class JobRecord:
    contract_digest: str | None
    job_id: str | None
    kind: str | None  # "query" or "train"
    buyer: str | None
    coordinator: str | None
    request: str | None  # the SQL, or the training spec as JSON
    epsilon: str | None
    withheld: int | None  # groups this node withheld (queries)
    outcome: str  # "released", "attested" or "refused"
    detail: str  # the rule a refusal named; "" otherwise
    duration_s: float
    at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.read().executescript(SCHEMA)

    def record(self, rec: JobRecord) -> None:
        at = rec.at or utc_now()
        with self.db.write(durable=False) as con:  # the owner's log guards no release (the ledger does)
            con.execute(
                "INSERT INTO jobs (at, contract_digest, job_id, kind, buyer, coordinator, request, epsilon, withheld,"
                " outcome, detail, duration_s) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (at, rec.contract_digest, rec.job_id, rec.kind, rec.buyer, rec.coordinator, rec.request, rec.epsilon,
                 rec.withheld, rec.outcome, rec.detail, rec.duration_s),
            )
        log.info("job %s (%s) under contract %s for buyer %s via coordinator %s: %s%s, ε=%s, %.2f s",
                 rec.job_id or "?", rec.kind or "?", (rec.contract_digest or "?")[:16], rec.buyer or "?",
                 rec.coordinator or "?", rec.outcome, f" ({rec.detail})" if rec.detail else "", rec.epsilon or "0",
                 rec.duration_s)

    def jobs(self, contract_digest: str | None = None) -> list[JobRecord]:
        sql = "SELECT * FROM jobs" + (" WHERE contract_digest = ?" if contract_digest else "") + " ORDER BY id"
        rows = self.db.read().execute(sql, (contract_digest,) if contract_digest else ()).fetchall()
        return [JobRecord(r["contract_digest"], r["job_id"], r["kind"], r["buyer"], r["coordinator"], r["request"],
                          r["epsilon"], r["withheld"], r["outcome"], r["detail"], r["duration_s"], r["at"])
                for r in rows]

    # -- withdrawals --------------------------------------------------------
    def withdraw(self, contract_digest: str, reason: str = "") -> str:
        """Record that the owner withdrew from the contract (fsynced); returns when. Idempotent."""
        digest = contract_digest.strip().lower() if isinstance(contract_digest, str) else ""
        if not is_sha256_hex(digest):
            raise ConfigError("CONTRACT_DIGEST must be the contract's 64-hex digest (`fedtrust contract show` prints it)")
        with self.db.write() as con:
            con.execute("INSERT OR IGNORE INTO withdrawals (contract_digest, at, reason) VALUES (?,?,?)",
                        (digest, utc_now(), reason))
            return con.execute("SELECT at FROM withdrawals WHERE contract_digest = ?", (digest,)).fetchone()["at"]

    def withdrawn_at(self, contract_digest: str) -> str | None:
        row = self.db.read().execute("SELECT at FROM withdrawals WHERE contract_digest = ?",
                                     (contract_digest,)).fetchone()
        return None if row is None else row["at"]
