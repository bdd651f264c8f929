"""The node's private record of PSI results: which of its own rows each vertical job matched.

Kept apart from the release ledger (it is never released and holds row ids of
this node's own file only): later joint jobs under the same contract align
rows by it. Rows are stored in the order both owners share (by the doubly
blinded key), so row i here and row i at the other owner are one person.
"""
from __future__ import annotations

import json
from pathlib import Path

from fedtrust.sqlite import Database
from fedtrust.trust.canonical import utc_now

__all__ = ["VerticalStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS alignments (
    contract_digest TEXT NOT NULL,
    job_id TEXT NOT NULL,
    job_digest TEXT NOT NULL,
    peer TEXT NOT NULL,
    rows TEXT NOT NULL,          -- JSON list of this node's row ids, in the common order
    created_at TEXT NOT NULL,
    PRIMARY KEY (contract_digest, job_id)
);
"""


class VerticalStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.db = Database(Path(state_dir) / "vertical.sqlite3", SCHEMA)

    def save_alignment(self, contract_digest: str, job_id: str, job_digest: str, peer: str, rows: list[int]) -> None:
        with self.db.write() as con:
            con.execute("INSERT OR IGNORE INTO alignments VALUES (?,?,?,?,?,?)",
                        (contract_digest, job_id, job_digest, peer, json.dumps(rows), utc_now()))

    def alignment(self, contract_digest: str, job_id: str) -> list[int] | None:
        row = self.db.read().execute("SELECT rows FROM alignments WHERE contract_digest = ? AND job_id = ?",
                                     (contract_digest, job_id)).fetchone()
        return None if row is None else [int(r) for r in json.loads(row[0])]
