"""The node's durable state: its budget ledger (releases) and its audit log (SQLite).

Every job is one ledger row, written and fsynced *before* anything the job
computes leaves the node. Rows are hash-chained per contract (sequence
number, digest of the previous entry, cumulative ε; see
`fedtrust.trust.receipts.ledger_entry_digest`), so the attestations a node
signs carry their chain position and a double spend is provable from receipts.

A query job is debited, attested and its outputs recorded in one transaction
(`commit_release`). A training job is debited before its first round
(`debit_job`) and attested at its end (`attach_attestation`).

The row also memoises the release: a retry of the same job (same contract,
job id and nonce) gets exactly the same bytes back — no fresh computation,
no fresh noise, no second debit — while a reused job id or nonce with a
different job is refused. Concurrent jobs cannot overspend: the check and
the insert happen in one IMMEDIATE transaction.

Nothing here holds a data value in the clear: outputs are masked and
encrypted under the buyer's key; audit rows name jobs and rules only.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Callable, Sequence

from fedtrust.errors import BudgetExhausted, ConfigError, NotFound, ReplayError
from fedtrust.node.admit import ACCOUNTANT, LedgerView, cap_message
from fedtrust.node.job_log import JobLog
from fedtrust.node.watermark import Watermark
from fedtrust.privacy.accounting import Budget, Spend
from fedtrust.sqlite import Database
from fedtrust.trust.canonical import utc_now
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import GENESIS, ChainEntry, fmt_eps, ledger_entry_digest

#: the privacy accountant this node composes its spends with (named in its DP attestations)

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    contract_digest TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    job_id TEXT NOT NULL,
    nonce TEXT NOT NULL UNIQUE,
    job_digest TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    epsilon TEXT NOT NULL,
    delta TEXT NOT NULL,
    cumulative_epsilon TEXT NOT NULL,
    epsilon_total TEXT,
    cumulative_delta TEXT,
    delta_total TEXT,
    prev TEXT NOT NULL,
    entry_digest TEXT NOT NULL,
    attestation BLOB,
    attestation_digest TEXT,
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


#: ledger columns added after the first release (ledgers made by earlier versions gain them, NULL in old rows)
_ADDED_COLUMNS = {"cumulative_delta": "TEXT", "delta_total": "TEXT"}


@dataclass(frozen=True)
class Debit:
    """One ledger row: what a job spent and where it sits in the contract's chain."""

    contract_digest: str
    kind: str
    job_id: str
    nonce: str
    job_digest: str
    mechanism: str
    epsilon: str
    delta: str
    chain: ChainEntry
    entry_digest: str
    created_at: str


@dataclass(frozen=True)
class StoredRelease:
    debit: Debit
    attestation: Envelope
    outputs: tuple[bytes, ...]

    @property
    def seq(self) -> int:
        return self.debit.chain.seq


@dataclass(frozen=True)
class AuditEvent:
    at: str
    event: str
    contract_digest: str | None
    job_id: str | None
    peer: str | None
    detail: str


@dataclass(frozen=True)
class ContractBudget:
    contract_digest: str
    jobs: int
    queries: int
    spent_epsilon: str
    epsilon_total: str | None  # None: the contract asks for no differential privacy
    last: tuple[tuple[Debit, str | None], ...]  # newest first, with the attestation digest
    spent_delta: str = "0.000000"  # Σδ of the contract's jobs (basic composition)
    delta_total: str | None = None  # the contract's δ, a total over all its jobs (None: no [privacy])

    @property
    def remaining_epsilon(self) -> str | None:
        if self.epsilon_total is None:
            return None
        return fmt_eps(max(Decimal(self.epsilon_total) - Decimal(self.spent_epsilon), Decimal(0)))

    @property
    def remaining_delta(self) -> str | None:
        if self.delta_total is None:
            return None
        return fmt_eps(max(Decimal(self.delta_total) - Decimal(self.spent_delta), Decimal(0)))


class NodeStore:
    def __init__(self, state_dir: str | Path, watermark: str | Path | None = None) -> None:
        """`watermark`: the ledger's high-water mark file (`fedtrust.node.watermark`), default
        `<state_dir>.watermark`; a ledger older than the mark is refused."""
        state = Path(state_dir)
        self.db = Database(state / "node.sqlite3", SCHEMA)
        self.watermark = Watermark(Path(watermark) if watermark else state.with_name(state.name + ".watermark"))
        #: the owner's view: one row per job, and withdrawals (same file; a job row rides on the next fsync)
        self.jobs = JobLog(self.db)
        with self.db.write() as con:  # ledgers made by earlier versions
            cols = {r["name"] for r in con.execute("PRAGMA table_info(releases)")}
            for name, definition in _ADDED_COLUMNS.items():
                if name not in cols:
                    con.execute(f"ALTER TABLE releases ADD COLUMN {name} {definition}")
        self._check_watermark()

    def _check_watermark(self) -> None:
        con = self.db.read()
        for contract, (seq, entry) in self.watermark.marks.items():
            last = con.execute("SELECT MAX(seq) FROM releases WHERE contract_digest = ?", (contract,)).fetchone()[0]
            row = con.execute("SELECT entry_digest FROM releases WHERE contract_digest = ? AND seq = ?",
                              (contract, seq)).fetchone()
            if row is None or row[0] != entry:
                have = f"ends at entry {last}" if last else "holds no entry"
                problem = "is older than" if row is None else "disagrees with"
                raise ConfigError(
                    f"the ledger {self.db.path} {problem} the newest release this node attested (contract "
                    f"{contract[:16]}…: entry {seq} was released, the ledger {have}); starting on it would refund "
                    f"spent budget. Restore the newest ledger (a `fedtrust node backup` taken after that release), "
                    f"or keep this node stopped and contact the exchange, whose receipt log holds the attested chain"
                )
        # catch up with rows committed just before a crash (ledger ahead of the mark is fine)
        for contract, seq, entry in con.execute(
                "SELECT contract_digest, seq, entry_digest FROM releases r WHERE seq = "
                "(SELECT MAX(seq) FROM releases WHERE contract_digest = r.contract_digest)").fetchall():
            self.watermark.advance(contract, seq, entry)

    def readable(self) -> bool:
        """The ledger is open and answers (health checks)."""
        try:
            self.db.read().execute("SELECT COUNT(*) FROM releases").fetchone()
            return True
        except Exception:  # noqa: BLE001 - health reports it, never raises
            return False

    # -- lookups ----------------------------------------------------------
    @staticmethod
    def _match(con, contract_digest: str, job_id: str, nonce: str, job_digest: str):
        """(the row of this exact job or None, "nonce"/"job-id" when another job already used this one's)."""
        row = con.execute(
            "SELECT * FROM releases WHERE nonce = ? OR (contract_digest = ? AND job_id = ?)",
            (nonce, contract_digest, job_id),
        ).fetchone()
        if row is not None and (row["job_digest"] != job_digest or row["contract_digest"] != contract_digest):
            return None, "nonce" if row["nonce"] == nonce else "job-id"
        return row, None

    def _find(self, con, contract_digest: str, job_id: str, nonce: str, job_digest: str):
        """The row of this exact job, None if new; ReplayError on a conflicting reuse."""
        row, reused = self._match(con, contract_digest, job_id, nonce, job_digest)
        if reused == "nonce":
            raise ReplayError("nonce already used by another job; sign each job with a fresh nonce")
        if reused is not None:
            raise ReplayError("job id already used for a different job under this contract; use a new job id")
        return row

    def view(self, contract_digest: str, kind: str, job_id: str, nonce: str, job_digest: str) -> LedgerView:
        """What the ledger holds for this job under this contract, for the decision core (`node.admit`)."""
        con = self.db.read()
        row, reused = self._match(con, contract_digest, job_id, nonce, job_digest)
        counted = dict(con.execute("SELECT kind, COUNT(*) FROM releases WHERE contract_digest = ? GROUP BY kind",
                                   (contract_digest,)).fetchall())
        return LedgerView(withdrawn_at=self.jobs.withdrawn_at(contract_digest), reused=reused,
                          attested=row is not None and row["attestation"] is not None, debited=row is not None,
                          jobs=counted.get(kind, 0), counted=counted, spends=tuple(_spends(con, contract_digest)))

    def lookup(self, contract_digest: str, job_id: str, nonce: str, job_digest: str) -> StoredRelease | None:
        """The recorded (attested) release of this exact job, or None."""
        con = self.db.read()
        row = self._find(con, contract_digest, job_id, nonce, job_digest)
        return _release(con, row) if row is not None and row["attestation"] is not None else None

    def find_debit(self, contract_digest: str, job_id: str, nonce: str, job_digest: str) -> Debit | None:
        row = self._find(self.db.read(), contract_digest, job_id, nonce, job_digest)
        return _debit(row) if row is not None else None

    def spends(self, contract_digest: str) -> list[Spend]:
        """The contract's recorded spends in ledger order: what the accountant composes."""
        return _spends(self.db.read(), contract_digest)

    def released_count(self, contract_digest: str, kind: str = "query") -> int:
        return self.db.read().execute(
            "SELECT COUNT(*) FROM releases WHERE contract_digest = ? AND kind = ?", (contract_digest, kind)
        ).fetchone()[0]

    def spent_epsilon(self, contract_digest: str) -> Decimal:
        row = self.db.read().execute(
            "SELECT cumulative_epsilon FROM releases WHERE contract_digest = ? ORDER BY seq DESC LIMIT 1",
            (contract_digest,),
        ).fetchone()
        return Decimal(row[0]) if row else Decimal(0)

    # -- debits -----------------------------------------------------------
    def _debit(self, con, *, node: str, contract_digest: str, kind: str, job_id: str, nonce: str,
               job_digest: str, mechanism: str, epsilon: Decimal, delta: Decimal,
               epsilon_total: Decimal | None, delta_total: Decimal | None, max_jobs: int | None) -> Debit:
        """Insert a ledger row inside the caller's IMMEDIATE transaction, after checking every cap.

        The privacy arithmetic is the accountant's (`fedtrust.privacy.accounting`): it composes the contract's
        recorded spends with this one and refuses (BudgetExhausted, nothing written) past ε_total or δ_total.
        The ledger records δ rounded *up* to six places and charges that, so the recorded history (and the Σδ
        the chain entry states, which the exchange caps at the contract's δ) never under-states what was spent.
        """
        if max_jobs is not None:
            done = con.execute("SELECT COUNT(*) FROM releases WHERE contract_digest = ? AND kind = ?",
                               (contract_digest, kind)).fetchone()[0]
            if done >= max_jobs:
                raise BudgetExhausted(cap_message(kind, max_jobs))
        last = con.execute(
            "SELECT seq, entry_digest, cumulative_epsilon FROM releases WHERE contract_digest = ?"
            " ORDER BY seq DESC LIMIT 1", (contract_digest,),
        ).fetchone()
        history = _spends(con, contract_digest)
        budget = None if epsilon_total is None else Budget(epsilon_total, Decimal(0) if delta_total is None else delta_total)
        eps, dlt = fmt_eps(epsilon), str(delta.quantize(Decimal("0.000001"), rounding=ROUND_CEILING))
        after = ACCOUNTANT.charge(budget, history, Spend(mechanism, epsilon, Decimal(dlt)), where=f"node {node}")
        chain = ChainEntry(seq=(last["seq"] if last else 0) + 1, prev=last["entry_digest"] if last else GENESIS,
                           cumulative_epsilon=fmt_eps(after.epsilon), cumulative_delta=fmt_eps(after.delta))
        entry = ledger_entry_digest(node, contract_digest, job_digest, eps, dlt, chain)
        now = utc_now()
        con.execute(
            "INSERT INTO releases (contract_digest, seq, kind, job_id, nonce, job_digest, mechanism, epsilon, delta,"
            " cumulative_epsilon, epsilon_total, cumulative_delta, delta_total, prev, entry_digest, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (contract_digest, chain.seq, kind, job_id, nonce, job_digest, mechanism, eps, dlt,
             chain.cumulative_epsilon, None if epsilon_total is None else fmt_eps(epsilon_total),
             chain.cumulative_delta, None if epsilon_total is None or delta_total is None else fmt_eps(delta_total),
             chain.prev, entry, now),
        )
        return Debit(contract_digest, kind, job_id, nonce, job_digest, mechanism, eps, dlt, chain, entry, now)

    def commit_release(
        self,
        *,
        node: str,
        contract_digest: str,
        job_id: str,
        nonce: str,
        job_digest: str,
        max_queries: int,
        mechanism: str,
        outputs: Sequence[bytes],
        make_attestation: Callable[[Debit], Envelope],
        epsilon: Decimal = Decimal(0),
        delta: Decimal = Decimal(0),
        epsilon_total: Decimal | None = None,
        delta_total: Decimal | None = None,
    ) -> StoredRelease:
        """Debit, attest and record a query's release atomically (one fsynced transaction).

        Returns the already-recorded release when an identical job committed first.
        """
        with self.db.write() as con:
            row = self._find(con, contract_digest, job_id, nonce, job_digest)
            if row is not None:
                return _release(con, row)
            debit = self._debit(con, node=node, contract_digest=contract_digest, kind="query", job_id=job_id,
                                nonce=nonce, job_digest=job_digest, mechanism=mechanism, epsilon=epsilon, delta=delta,
                                epsilon_total=epsilon_total, delta_total=delta_total, max_jobs=max_queries)
            att = make_attestation(debit)
            con.execute("UPDATE releases SET attestation = ?, attestation_digest = ? WHERE contract_digest = ? AND seq = ?",
                        (att.to_json(), att.digest, contract_digest, debit.chain.seq))
            con.executemany(
                "INSERT INTO outputs (contract_digest, seq, idx, data) VALUES (?,?,?,?)",
                [(contract_digest, debit.chain.seq, i, bytes(o)) for i, o in enumerate(outputs)],
            )
            stored = StoredRelease(debit, att, tuple(bytes(o) for o in outputs))
        self.watermark.advance(contract_digest, debit.chain.seq, debit.entry_digest)  # before anything leaves
        return stored

    def debit_job(self, *, node: str, contract_digest: str, kind: str, job_id: str, nonce: str, job_digest: str,
                  mechanism: str, epsilon: Decimal = Decimal(0), delta: Decimal = Decimal(0),
                  epsilon_total: Decimal | None = None, delta_total: Decimal | None = None,
                  max_jobs: int | None = None) -> Debit:
        """Debit a multi-step job (training) before its first release; idempotent for the same job."""
        with self.db.write() as con:
            row = self._find(con, contract_digest, job_id, nonce, job_digest)
            if row is not None:
                return _debit(row)
            debit = self._debit(con, node=node, contract_digest=contract_digest, kind=kind, job_id=job_id,
                                nonce=nonce, job_digest=job_digest, mechanism=mechanism, epsilon=epsilon, delta=delta,
                                epsilon_total=epsilon_total, delta_total=delta_total, max_jobs=max_jobs)
        self.watermark.advance(contract_digest, debit.chain.seq, debit.entry_digest)  # before any round leaves
        return debit

    def attach_attestation(self, contract_digest: str, job_id: str, attestation: Envelope,
                           outputs: Sequence[bytes] = ()) -> StoredRelease:
        """Record the attestation of a debited job (once; a second, different one is refused)."""
        with self.db.write() as con:
            row = con.execute("SELECT * FROM releases WHERE contract_digest = ? AND job_id = ?",
                              (contract_digest, job_id)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} was never debited at this node; it cannot be attested")
            if row["attestation"] is not None:
                if bytes(row["attestation"]) != attestation.to_json():
                    raise ReplayError(f"job {job_id} is already attested; a job is attested once")
                return _release(con, row)
            con.execute("UPDATE releases SET attestation = ?, attestation_digest = ? WHERE contract_digest = ? AND seq = ?",
                        (attestation.to_json(), attestation.digest, contract_digest, row["seq"]))
            con.executemany(
                "INSERT INTO outputs (contract_digest, seq, idx, data) VALUES (?,?,?,?)",
                [(contract_digest, row["seq"], i, bytes(o)) for i, o in enumerate(outputs)],
            )
            return StoredRelease(_debit(row), attestation, tuple(bytes(o) for o in outputs))

    # -- reports ----------------------------------------------------------
    def releases(self, contract_digest: str | None = None) -> list[StoredRelease]:
        q = "SELECT * FROM releases WHERE attestation IS NOT NULL"
        args: tuple = ()
        if contract_digest:
            q += " AND contract_digest = ?"
            args = (contract_digest,)
        con = self.db.read()
        return [_release(con, r) for r in con.execute(q + " ORDER BY contract_digest, seq", args).fetchall()]

    def debits(self, contract_digest: str | None = None) -> list[Debit]:
        q = "SELECT * FROM releases"
        args: tuple[str, ...] = ()
        if contract_digest:
            q, args = q + " WHERE contract_digest = ?", (contract_digest,)
        return [_debit(r) for r in self.db.read().execute(q + " ORDER BY contract_digest, seq", args).fetchall()]

    def budgets(self, last: int = 3) -> list[ContractBudget]:
        out = []
        con = self.db.read()
        for (digest,) in con.execute("SELECT DISTINCT contract_digest FROM releases ORDER BY contract_digest").fetchall():
            rows = con.execute("SELECT * FROM releases WHERE contract_digest = ? ORDER BY seq DESC", (digest,)).fetchall()
            out.append(ContractBudget(
                contract_digest=digest,
                jobs=len(rows),
                queries=sum(1 for r in rows if r["kind"] == "query"),
                spent_epsilon=rows[0]["cumulative_epsilon"],
                epsilon_total=rows[0]["epsilon_total"],
                last=tuple((_debit(r), r["attestation_digest"]) for r in rows[:last]),
                spent_delta=fmt_eps(ACCOUNTANT.spent(_spends(con, digest)).delta),
                delta_total=rows[0]["delta_total"],
            ))
        return out

    # -- audit ------------------------------------------------------------
    def audit(self, event: str, detail: str, *, contract_digest: str | None = None,
              job_id: str | None = None, peer: str | None = None) -> None:
        # not fsynced by itself: the next ledger commit (fsynced before any release) carries it to disk
        with self.db.write(durable=False) as con:
            con.execute(
                "INSERT INTO audit (at, event, contract_digest, job_id, peer, detail) VALUES (?,?,?,?,?,?)",
                (utc_now(), event, contract_digest, job_id, peer, detail),
            )

    def audit_events(self) -> list[AuditEvent]:
        return [
            AuditEvent(r["at"], r["event"], r["contract_digest"], r["job_id"], r["peer"], r["detail"])
            for r in self.db.read().execute("SELECT * FROM audit ORDER BY id")
        ]


def _spends(con, contract_digest: str) -> list[Spend]:
    rows = con.execute("SELECT mechanism, epsilon, delta FROM releases WHERE contract_digest = ? ORDER BY seq",
                       (contract_digest,))
    return [Spend(r["mechanism"], Decimal(r["epsilon"]), Decimal(r["delta"])) for r in rows]


def _debit(row) -> Debit:
    return Debit(
        contract_digest=row["contract_digest"], kind=row["kind"], job_id=row["job_id"], nonce=row["nonce"],
        job_digest=row["job_digest"], mechanism=row["mechanism"], epsilon=row["epsilon"], delta=row["delta"],
        chain=ChainEntry(seq=row["seq"], prev=row["prev"], cumulative_epsilon=row["cumulative_epsilon"],
                         cumulative_delta=row["cumulative_delta"]),
        entry_digest=row["entry_digest"], created_at=row["created_at"],
    )


def _release(con, row) -> StoredRelease:
    outputs = con.execute(
        "SELECT data FROM outputs WHERE contract_digest = ? AND seq = ? ORDER BY idx",
        (row["contract_digest"], row["seq"]),
    ).fetchall()
    return StoredRelease(_debit(row), Envelope.from_json(bytes(row["attestation"])), tuple(bytes(o[0]) for o in outputs))
