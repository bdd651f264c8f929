"""The node's durable state: its release ledger and its audit log (SQLite).

Every release is one ledger row, written and fsynced *before* the release
leaves the node. Rows are hash-chained per contract (sequence number,
previous attestation digest, cumulative ε), so the attestations a node signs
carry their chain position and a double spend is provable from receipts.

The row also memoises the release: a retry of the same job (same contract,
job id and nonce) gets exactly the same bytes back — no fresh computation,
no fresh noise, no second debit — while a reused job id or nonce with a
different job is refused.

Nothing here holds a data value in the clear: outputs are masked and
encrypted under the buyer's key; audit rows name jobs and rules only.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable, Sequence

from fedtrust.errors import BudgetExhausted, ReplayError
from fedtrust.sqlite import Database
from fedtrust.trust.canonical import utc_now
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import GENESIS, ChainEntry, fmt_eps


SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    contract_digest TEXT NOT NULL,
    seq INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    nonce TEXT NOT NULL UNIQUE,
    job_digest TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    epsilon TEXT NOT NULL,
    delta TEXT NOT NULL,
    cumulative_epsilon TEXT NOT NULL,
    prev TEXT NOT NULL,
    attestation BLOB NOT NULL,
    attestation_digest TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (contract_digest, seq),
    UNIQUE (contract_digest, job_id)
);
CREATE TABLE IF NOT EXISTS outputs (
    contract_digest TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (contract_digest, seq, idx),
    FOREIGN KEY (contract_digest, seq) REFERENCES releases (contract_digest, seq)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    contract_digest TEXT,
    job_id TEXT,
    peer TEXT,
    detail TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StoredRelease:
    contract_digest: str
    seq: int
    job_id: str
    nonce: str
    job_digest: str
    epsilon: str
    cumulative_epsilon: str
    attestation: Envelope
    outputs: tuple[bytes, ...]
    created_at: str


@dataclass(frozen=True)
class AuditEvent:
    at: str
    event: str
    contract_digest: str | None
    job_id: str | None
    peer: str | None
    detail: str


class NodeStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.db = Database(Path(state_dir) / "node.sqlite3", SCHEMA)

    # -- releases ---------------------------------------------------------
    def lookup(self, contract_digest: str, job_id: str, nonce: str, job_digest: str) -> StoredRelease | None:
        """The recorded release of this exact job, None if new; ReplayError on a conflicting reuse."""
        return self._lookup(self.db.read(), contract_digest, job_id, nonce, job_digest)

    def _lookup(self, con, contract_digest, job_id, nonce, job_digest) -> StoredRelease | None:
        row = con.execute(
            "SELECT * FROM releases WHERE nonce = ? OR (contract_digest = ? AND job_id = ?)",
            (nonce, contract_digest, job_id),
        ).fetchone()
        if row is None:
            return None
        if row["job_digest"] != job_digest or row["contract_digest"] != contract_digest:
            if row["nonce"] == nonce:
                raise ReplayError("nonce already used by another job; sign each job with a fresh nonce")
            raise ReplayError("job id already used for a different job under this contract; use a new job id")
        return _release(con, row)

    def released_count(self, contract_digest: str) -> int:
        return self.db.read().execute(
            "SELECT COUNT(*) FROM releases WHERE contract_digest = ?", (contract_digest,)
        ).fetchone()[0]

    def commit_release(
        self,
        *,
        contract_digest: str,
        job_id: str,
        nonce: str,
        job_digest: str,
        max_queries: int,
        mechanism: str,
        outputs: Sequence[bytes],
        make_attestation: Callable[[ChainEntry], Envelope],
        epsilon: Decimal = Decimal(0),
        delta: Decimal = Decimal(0),
        epsilon_total: Decimal | None = None,
    ) -> StoredRelease:
        """Debit and record a release atomically (IMMEDIATE transaction, fsynced commit).

        Re-checks replay and caps inside the transaction, so concurrent jobs
        cannot overspend. Returns the already-recorded release when an
        identical job committed first.
        """
        with self.db.write() as con:
            existing = self._lookup(con, contract_digest, job_id, nonce, job_digest)
            if existing is not None:
                return existing
            last = con.execute(
                "SELECT seq, attestation_digest, cumulative_epsilon FROM releases "
                "WHERE contract_digest = ? ORDER BY seq DESC LIMIT 1",
                (contract_digest,),
            ).fetchone()
            seq = (last["seq"] if last else 0) + 1
            if seq > max_queries:
                raise BudgetExhausted(
                    f"query cap reached: this contract allows {max_queries} jobs at this node and all are spent; "
                    "ask the exchange for a new contract"
                )
            spent = Decimal(last["cumulative_epsilon"]) if last else Decimal(0)
            cumulative = spent + epsilon
            if epsilon_total is not None and cumulative > epsilon_total:
                raise BudgetExhausted(
                    f"privacy budget exhausted: this job needs ε={fmt_eps(epsilon)} but only "
                    f"ε={fmt_eps(epsilon_total - spent)} of ε={fmt_eps(epsilon_total)} is left for this contract"
                )
            chain = ChainEntry(seq=seq, prev=last["attestation_digest"] if last else GENESIS,
                               cumulative_epsilon=fmt_eps(cumulative))
            att = make_attestation(chain)
            now = utc_now()
            con.execute(
                "INSERT INTO releases (contract_digest, seq, job_id, nonce, job_digest, mechanism, epsilon, delta,"
                " cumulative_epsilon, prev, attestation, attestation_digest, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (contract_digest, seq, job_id, nonce, job_digest, mechanism, fmt_eps(epsilon), fmt_eps(delta),
                 chain.cumulative_epsilon, chain.prev, att.to_json(), att.digest, now),
            )
            con.executemany(
                "INSERT INTO outputs (contract_digest, seq, idx, data) VALUES (?,?,?,?)",
                [(contract_digest, seq, i, bytes(o)) for i, o in enumerate(outputs)],
            )
            row = con.execute(
                "SELECT * FROM releases WHERE contract_digest = ? AND seq = ?", (contract_digest, seq)
            ).fetchone()
            return _release(con, row)

    def releases(self, contract_digest: str | None = None) -> list[StoredRelease]:
        q = "SELECT * FROM releases"
        args: tuple = ()
        if contract_digest:
            q += " WHERE contract_digest = ?"
            args = (contract_digest,)
        con = self.db.read()
        return [_release(con, r) for r in con.execute(q + " ORDER BY contract_digest, seq", args).fetchall()]

    # -- audit ------------------------------------------------------------
    def audit(self, event: str, detail: str, *, contract_digest: str | None = None,
              job_id: str | None = None, peer: str | None = None) -> None:
        with self.db.write() as con:
            con.execute(
                "INSERT INTO audit (at, event, contract_digest, job_id, peer, detail) VALUES (?,?,?,?,?,?)",
                (utc_now(), event, contract_digest, job_id, peer, detail),
            )

    def audit_events(self) -> list[AuditEvent]:
        return [
            AuditEvent(r["at"], r["event"], r["contract_digest"], r["job_id"], r["peer"], r["detail"])
            for r in self.db.read().execute("SELECT * FROM audit ORDER BY id")
        ]


def _release(con, row) -> StoredRelease:
    outputs = con.execute(
        "SELECT data FROM outputs WHERE contract_digest = ? AND seq = ? ORDER BY idx",
        (row["contract_digest"], row["seq"]),
    ).fetchall()
    return StoredRelease(
        contract_digest=row["contract_digest"],
        seq=row["seq"],
        job_id=row["job_id"],
        nonce=row["nonce"],
        job_digest=row["job_digest"],
        epsilon=row["epsilon"],
        cumulative_epsilon=row["cumulative_epsilon"],
        attestation=Envelope.from_json(row["attestation"]),
        outputs=tuple(bytes(o[0]) for o in outputs),
        created_at=row["created_at"],
    )
