"""The exchange's registry and receipt log on SQLite (all of the exchange's SQL lives here).

Tables: subjects, products, contracts (with their products), receipts and
the per-(node, contract) budget chain entries of recorded receipts. Every
signed object is stored as its envelope JSON and re-verified with the
exchange key when read, so a row altered on disk is refused, not trusted.
A receipt and its chain rows are written in one transaction.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedtrust.errors import ConfigError, NotFound, ReplayError
from fedtrust.exchange.receipt_log import ReceiptLog
from fedtrust.sqlite import Database
from fedtrust.trust.canonical import utc_now
from fedtrust.trust.contracts import Contract, verify_contract
from fedtrust.trust.credentials import SubjectCredential, verify_credential
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.products import Product, verify_product
from fedtrust.trust.revocation import Revoked

__all__ = ["ExchangeStore", "ReceiptRecord", "ChainRow"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS subjects (
    role TEXT NOT NULL CHECK (role IN ('node', 'buyer', 'coordinator', 'dealer')),
    name TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    envelope BLOB NOT NULL,
    issued_at TEXT NOT NULL,
    PRIMARY KEY (role, name)
);
CREATE TABLE IF NOT EXISTS issued (
    digest TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    envelope BLOB NOT NULL,
    request BLOB NOT NULL,
    issued_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('contract', 'subject')),
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    UNIQUE (kind, target)
);
CREATE TABLE IF NOT EXISTS products (
    digest TEXT PRIMARY KEY,
    owner_role TEXT NOT NULL DEFAULT 'node' CHECK (owner_role = 'node'),
    owner TEXT NOT NULL,
    dataset TEXT NOT NULL,
    envelope BLOB NOT NULL,
    issued_at TEXT NOT NULL,
    FOREIGN KEY (owner_role, owner) REFERENCES subjects (role, name)
);
CREATE TABLE IF NOT EXISTS contracts (
    digest TEXT PRIMARY KEY,
    contract_id TEXT NOT NULL UNIQUE,
    buyer TEXT NOT NULL,
    coordinator TEXT NOT NULL,
    envelope BLOB NOT NULL,
    valid_from TEXT NOT NULL,
    valid_until TEXT NOT NULL,
    issued_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contract_products (
    contract_digest TEXT NOT NULL REFERENCES contracts (digest),
    product_digest TEXT NOT NULL REFERENCES products (digest),
    PRIMARY KEY (contract_digest, product_digest)
);
CREATE TABLE IF NOT EXISTS receipts (
    job_id TEXT NOT NULL,
    nonce TEXT NOT NULL UNIQUE,
    contract_digest TEXT NOT NULL REFERENCES contracts (digest),
    bundle_digest TEXT NOT NULL UNIQUE,
    bundle BLOB NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (contract_digest, job_id)
);
CREATE TABLE IF NOT EXISTS chain (
    node TEXT NOT NULL,
    contract_digest TEXT NOT NULL REFERENCES contracts (digest),
    seq INTEGER NOT NULL CHECK (seq >= 1),
    attestation_digest TEXT NOT NULL UNIQUE,
    prev TEXT NOT NULL,
    cumulative_epsilon TEXT NOT NULL,
    job_id TEXT NOT NULL,
    cumulative_delta TEXT,
    PRIMARY KEY (node, contract_digest, seq),
    FOREIGN KEY (contract_digest, job_id) REFERENCES receipts (contract_digest, job_id)
);
"""


@dataclass(frozen=True)
class ReceiptRecord:
    job_id: str
    nonce: str
    contract_digest: str
    bundle_digest: str
    bundle_json: bytes
    recorded_at: str


@dataclass(frozen=True)
class ChainRow:
    node: str
    contract_digest: str
    seq: int
    attestation_digest: str
    prev: str
    cumulative_epsilon: str
    job_id: str
    #: Σδ the node stated at this position (None for entries from nodes that predate δ in the chain)
    cumulative_delta: str | None = None


def _allow_dealers(db: Database) -> None:
    """Exchanges created before the `dealer` role: rebuild `subjects` with the wider role CHECK (same rows)."""
    con = db.read()
    row = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'subjects'").fetchone()
    if row is None or "'dealer'" in row[0]:
        return
    create = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS subjects"):]
    create = create[:create.index(");") + 2].replace("IF NOT EXISTS subjects", "subjects_new")
    with db.write() as w:
        w.execute("PRAGMA defer_foreign_keys = ON")
        w.execute(create)
        w.execute("INSERT INTO subjects_new SELECT role, name, digest, envelope, issued_at FROM subjects")
        w.execute("DROP TABLE subjects")
        w.execute("ALTER TABLE subjects_new RENAME TO subjects")


class ExchangeStore:
    """Registry and receipt log; objects are re-verified with `exchange_key` when read."""

    def __init__(self, path: str | Path, exchange_key: Ed25519PublicKey) -> None:
        self.db = Database(path, SCHEMA)
        with self.db.write() as con:  # stores made before δ joined the budget chain
            if "cumulative_delta" not in {r["name"] for r in con.execute("PRAGMA table_info(chain)")}:
                con.execute("ALTER TABLE chain ADD COLUMN cumulative_delta TEXT")
        _allow_dealers(self.db)
        #: append-only Merkle log of accepted receipts, written in the same transaction
        self.log = ReceiptLog(self.db)
        self.exchange_key = exchange_key

    # -- subjects -----------------------------------------------------------
    def add_subject(self, cred_envelope: Envelope, request: Envelope, *, replace: bool = False) -> SubjectCredential:
        """Record a credential (and the signed request it was issued from) in the issue history; it becomes
        the subject's current credential. `replace`: a renewal of a registered subject."""
        cred = verify_credential(cred_envelope, self.exchange_key)
        try:
            with self.db.write() as con:
                if replace:  # products and contracts keep referring to the subject (role, name)
                    con.execute("UPDATE subjects SET digest = ?, envelope = ?, issued_at = ? WHERE role = ? AND name = ?",
                                (cred_envelope.digest, cred_envelope.to_json(), cred.issued_at, cred.role, cred.name))
                else:
                    con.execute(
                        "INSERT INTO subjects (role, name, digest, envelope, issued_at) VALUES (?,?,?,?,?)",
                        (cred.role, cred.name, cred_envelope.digest, cred_envelope.to_json(), cred.issued_at),
                    )
                con.execute(
                    "INSERT INTO issued (digest, role, name, envelope, request, issued_at) VALUES (?,?,?,?,?,?)",
                    (cred_envelope.digest, cred.role, cred.name, cred_envelope.to_json(), request.to_json(),
                     cred.issued_at),
                )
        except sqlite3.IntegrityError:
            raise ConfigError(f"subject {cred.uri} is already registered; choose another name") from None
        return cred

    def issue_history(self, role: str, name: str) -> list[SubjectCredential]:
        """Every credential issued to the subject, oldest first."""
        rows = self.db.read().execute(
            "SELECT envelope FROM issued WHERE role = ? AND name = ? ORDER BY issued_at, rowid", (role, name)
        ).fetchall()
        return [verify_credential(Envelope.from_json(r["envelope"]), self.exchange_key) for r in rows]

    def has_subject(self, role: str, name: str) -> bool:
        row = self.db.read().execute("SELECT 1 FROM subjects WHERE role = ? AND name = ?", (role, name)).fetchone()
        return row is not None

    def get_subject(self, role: str, name: str) -> tuple[SubjectCredential, Envelope]:
        row = self.db.read().execute(
            "SELECT envelope FROM subjects WHERE role = ? AND name = ?", (role, name)
        ).fetchone()
        if row is None:
            raise NotFound(
                f"no {role} named {name!r} is registered; register it with "
                f"`fedtrust keygen --role {role} --name {name}` and `fedtrust exchange register`"
            )
        env = Envelope.from_json(row["envelope"])
        return verify_credential(env, self.exchange_key), env

    def list_subjects(self) -> list[SubjectCredential]:
        rows = self.db.read().execute("SELECT envelope FROM subjects ORDER BY role, name").fetchall()
        return [verify_credential(Envelope.from_json(r["envelope"]), self.exchange_key) for r in rows]

    # -- revocations --------------------------------------------------------
    def add_revocation(self, kind: str, target: str, reason: str) -> Revoked:
        """Append to the revocation list (sequence number = its position); ConfigError when already revoked."""
        now = utc_now()
        try:
            with self.db.write() as con:
                seq = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM revocations").fetchone()[0]
                con.execute("INSERT INTO revocations (seq, kind, target, reason, revoked_at) VALUES (?,?,?,?,?)",
                            (seq, kind, target, reason, now))
        except sqlite3.IntegrityError:
            raise ConfigError(f"{kind} {target} is already revoked") from None
        return Revoked(kind, target, reason, now)

    def revocations(self) -> list[Revoked]:
        rows = self.db.read().execute("SELECT kind, target, reason, revoked_at FROM revocations ORDER BY seq").fetchall()
        return [Revoked(r["kind"], r["target"], r["reason"], r["revoked_at"]) for r in rows]

    def revoked(self, kind: str, target: str) -> Revoked | None:
        r = self.db.read().execute("SELECT kind, target, reason, revoked_at FROM revocations WHERE kind = ? AND "
                                   "target = ?", (kind, target)).fetchone()
        return None if r is None else Revoked(r["kind"], r["target"], r["reason"], r["revoked_at"])

    # -- products -----------------------------------------------------------
    def add_product(self, envelope: Envelope) -> Product:
        product = verify_product(envelope, self.exchange_key)
        try:
            with self.db.write() as con:
                con.execute(
                    "INSERT INTO products (digest, owner, dataset, envelope, issued_at) VALUES (?,?,?,?,?)",
                    (envelope.digest, product.owner, product.dataset, envelope.to_json(), product.issued_at),
                )
        except sqlite3.IntegrityError:
            raise ConfigError(
                f"product could not be recorded: owner {product.owner!r} is not a registered node or the product exists"
            ) from None
        return product

    def get_product(self, digest: str) -> tuple[Product, Envelope]:
        row = self.db.read().execute("SELECT envelope FROM products WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            raise NotFound("product was not listed by this exchange; list it with `fedtrust exchange list-product`")
        env = Envelope.from_json(row["envelope"])
        return verify_product(env, self.exchange_key), env

    # -- contracts ----------------------------------------------------------
    def add_contract(self, envelope: Envelope) -> Contract:
        contract = verify_contract(envelope, self.exchange_key)
        try:
            with self.db.write() as con:
                con.execute(
                    "INSERT INTO contracts (digest, contract_id, buyer, coordinator, envelope, valid_from, valid_until,"
                    " issued_at) VALUES (?,?,?,?,?,?,?,?)",
                    (envelope.digest, contract.contract_id, contract.buyer.name, contract.coordinator.name,
                     envelope.to_json(), contract.valid_from, contract.valid_until, contract.issued_at),
                )
                con.executemany(
                    "INSERT INTO contract_products (contract_digest, product_digest) VALUES (?,?)",
                    [(envelope.digest, h.product_digest) for h in contract.owners],
                )
        except sqlite3.IntegrityError:
            raise ConfigError(
                "contract could not be recorded: it exists already or names a product this exchange did not list"
            ) from None
        return contract

    def get_contract(self, digest: str) -> tuple[Contract, Envelope]:
        row = self.db.read().execute("SELECT envelope FROM contracts WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            raise NotFound("contract was not issued by this exchange; ask the exchange for the contract it issued")
        env = Envelope.from_json(row["envelope"])
        return verify_contract(env, self.exchange_key), env

    # -- receipts -----------------------------------------------------------
    def record_receipt(
        self,
        job_id: str,
        nonce: str,
        contract_digest: str,
        bundle_digest: str,
        bundle_json: bytes,
        chain_rows: Sequence[tuple[str, str, int, str, str, str, str | None]],
    ) -> ReceiptRecord:
        """Record a verified receipt and its chain entries atomically.

        `chain_rows`: (node, contract_digest, seq, attestation_digest, prev,
        cumulative_epsilon, cumulative_delta). ReplayError when the job id, nonce, bundle or a
        chain position was recorded before; NotFound for an unknown contract.
        """
        now = utc_now()
        with self.db.write() as con:
            if con.execute("SELECT 1 FROM contracts WHERE digest = ?", (contract_digest,)).fetchone() is None:
                raise NotFound("receipt is for a contract this exchange did not issue")
            dup = con.execute(
                "SELECT job_id = ? AND contract_digest = ? AS same_job, nonce = ? AS same_nonce FROM receipts"
                " WHERE (job_id = ? AND contract_digest = ?) OR nonce = ? OR bundle_digest = ? LIMIT 1",
                (job_id, contract_digest, nonce, job_id, contract_digest, nonce, bundle_digest),
            ).fetchone()
            if dup is not None:
                what = "job id" if dup["same_job"] else "nonce" if dup["same_nonce"] else "receipt bundle"
                raise ReplayError(f"a receipt with this {what} is already recorded; a job is settled once")
            con.execute(
                "INSERT INTO receipts (job_id, nonce, contract_digest, bundle_digest, bundle, recorded_at)"
                " VALUES (?,?,?,?,?,?)",
                (job_id, nonce, contract_digest, bundle_digest, bytes(bundle_json), now),
            )
            for node, cdigest, seq, att_digest, prev, cum, cum_delta in chain_rows:
                try:
                    con.execute(
                        "INSERT INTO chain (node, contract_digest, seq, attestation_digest, prev, cumulative_epsilon,"
                        " job_id, cumulative_delta) VALUES (?,?,?,?,?,?,?,?)",
                        (node, cdigest, seq, att_digest, prev, cum, job_id, cum_delta),
                    )
                except sqlite3.IntegrityError:
                    raise ReplayError(
                        f"budget chain position {seq} of node {node} under this contract is already recorded "
                        "(a double spend or a replayed attestation)"
                    ) from None
            self.log.append(con, job_id, contract_digest, bundle_digest)
        return ReceiptRecord(job_id, nonce, contract_digest, bundle_digest, bytes(bundle_json), now)

    def _receipt(self, where: str, *values: str) -> ReceiptRecord | None:
        row = self.db.read().execute(
            f"SELECT job_id, nonce, contract_digest, bundle_digest, bundle, recorded_at FROM receipts WHERE {where}",
            values,
        ).fetchone()
        if row is None:
            return None
        return ReceiptRecord(row["job_id"], row["nonce"], row["contract_digest"], row["bundle_digest"],
                             bytes(row["bundle"]), row["recorded_at"])

    def receipt_for_job(self, contract_digest: str, job_id: str) -> ReceiptRecord | None:
        """The receipt of job `job_id` under the contract (job ids are the buyer's, unique per contract)."""
        return self._receipt("contract_digest = ? AND job_id = ?", contract_digest, job_id)

    def receipt_for_nonce(self, nonce: str) -> ReceiptRecord | None:
        return self._receipt("nonce = ?", nonce)

    def chain_entries(self, node: str, contract_digest: str) -> list[ChainRow]:
        """Recorded chain entries of `node` under the contract, by sequence number."""
        rows = self.db.read().execute(
            "SELECT node, contract_digest, seq, attestation_digest, prev, cumulative_epsilon, job_id, cumulative_delta"
            " FROM chain WHERE node = ? AND contract_digest = ? ORDER BY seq",
            (node, contract_digest),
        ).fetchall()
        return [ChainRow(r["node"], r["contract_digest"], r["seq"], r["attestation_digest"], r["prev"],
                         r["cumulative_epsilon"], r["job_id"], r["cumulative_delta"]) for r in rows]
