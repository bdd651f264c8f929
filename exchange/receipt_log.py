"""The exchange's append-only receipt log, its signed checkpoints and per-contract settlements.

Every receipt the exchange accepts becomes one leaf of a Merkle log
(RFC 9162 hashing, `fedtrust.exchange.merkle`): the canonical JSON of
{job_id, contract_digest, bundle_digest}. Leaves are only ever appended, in
the same SQLite transaction that records the receipt, so the log and the
receipt table never disagree; triggers refuse UPDATE and DELETE on the table.

Why the exchange *signs* checkpoints (origin, size, root): the SQLite file
is the exchange's own, and it could rewrite it. A checkpoint
handed to a node, buyer or auditor pins the whole log at that size under the
exchange's key. Anyone holding one can later ask for an inclusion proof
(this receipt was logged, at this index) and a consistency proof (the
newer log extends the one they saw) and check both offline, without
trusting the exchange or reading the log. Two signed checkpoints that admit
no consistency proof are evidence that the log was rewritten.

Checkpoints are C2SP tlog-checkpoints (https://c2sp.org/tlog-checkpoint) in
C2SP signed notes (`fedtrust.trust.note`): the origin line, the decimal tree
size, the base64 root hash, then the exchange's Ed25519 note signature with
the origin as key name. That is what transparency witnesses and monitors
(Go's sumdb, Sigstore Rekor v2, Tessera) consume, so they can watch an
exchange's log unchanged. Each exchange has its own origin, chosen at
`exchange init`, so a checkpoint of one exchange can never pass for
another's. (The earlier DSSE form is dropped: it added nothing the note does
not carry, and one format is one verifier less.)

A settlement statement lists, for one contract, the jobs recorded under it
(job id, bundle digest, log index) in log order, their count and the log
size and root they are included under; each job can be checked against
that root with an inclusion proof, so the statement cannot silently drop or
add a job. Every row is re-checked against its leaf hash when read, so a
row altered on disk is refused, not trusted.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Iterator, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedtrust.errors import ConfigError, InvalidInput, NotFound, ReplayError, VerificationError
from fedtrust.exchange import merkle
from fedtrust.sqlite import Database
from fedtrust.trust.canonical import Fields, canonical, is_sha256_hex, utc_now
from fedtrust.trust.contracts import check_price
from fedtrust.trust.dsse import Envelope, Signer, verify_statement
from fedtrust.trust.note import b64_canonical, check_key_name, open_note, sign_note, unb64_canonical

__all__ = [
    "LOG_SCHEMA", "SETTLEMENT_TYPE",
    "LogEntry", "Checkpoint", "InclusionProof", "ConsistencyProof", "ReceiptLog",
    "receipt_leaf", "receipt_leaf_hash", "checkpoint_text", "parse_checkpoint_text", "verify_checkpoint", "check_inclusion", "check_consistency",
    "split_price", "sign_settlement", "verify_settlement",
]

SETTLEMENT_TYPE = "https://fedtrust.dev/Settlement/v1"

LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_leaves (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),
    job_id TEXT NOT NULL,
    contract_digest TEXT NOT NULL,
    bundle_digest TEXT NOT NULL,
    appended_at TEXT NOT NULL,
    UNIQUE (contract_digest, job_id)
);
CREATE INDEX IF NOT EXISTS log_leaves_contract ON log_leaves (contract_digest, idx);
CREATE TRIGGER IF NOT EXISTS log_leaves_no_update BEFORE UPDATE ON log_leaves
BEGIN SELECT RAISE(ABORT, 'the receipt log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS log_leaves_no_delete BEFORE DELETE ON log_leaves
BEGIN SELECT RAISE(ABORT, 'the receipt log is append-only'); END;
"""


def receipt_leaf(job_id: str, contract_digest: str, bundle_digest: str) -> bytes:
    """The leaf data of one receipt: canonical JSON of {job_id, contract_digest, bundle_digest}."""
    if not isinstance(job_id, str) or not job_id:
        raise InvalidInput("a log entry needs a non-empty job id")
    if not is_sha256_hex(contract_digest) or not is_sha256_hex(bundle_digest):
        raise InvalidInput("a log entry's contract and bundle digests must be lowercase sha256 hex")
    return canonical({"job_id": job_id, "contract_digest": contract_digest, "bundle_digest": bundle_digest})


def receipt_leaf_hash(job_id: str, contract_digest: str, bundle_digest: str) -> bytes:
    """RFC 9162 leaf hash of `receipt_leaf`: what an inclusion proof for this receipt starts from."""
    return merkle.leaf_hash(receipt_leaf(job_id, contract_digest, bundle_digest))


# -- structures ---------------------------------------------------------------
@dataclass(frozen=True)
class LogEntry:
    index: int
    leaf_hash: bytes
    job_id: str
    contract_digest: str
    bundle_digest: str
    appended_at: str


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint; unpacks as `size, root = checkpoint`."""

    origin: str
    size: int
    root: bytes

    def __iter__(self) -> Iterator[Any]:
        return iter((self.size, self.root))


def _hex(b: bytes) -> str:
    return bytes(b).hex()


def _unhex(value: object, what: str) -> bytes:
    if not is_sha256_hex(value):
        raise InvalidInput(f"{what} must be a lowercase sha256 hex string")
    return bytes.fromhex(value)  # type: ignore[arg-type]


def _exact(d: object, what: str, keys: set[str]) -> Fields:
    f = Fields(d, what)
    if set(f.d) != keys:
        raise InvalidInput(f"{what} must have exactly the fields {', '.join(sorted(keys))}")
    return f


@dataclass(frozen=True)
class InclusionProof:
    """Leaf `index` (hash `leaf_hash`) is in the log of `size` leaves whose root is `root`."""

    index: int
    size: int
    leaf_hash: bytes
    path: tuple[bytes, ...]
    root: bytes

    def verify(self) -> None:
        """VerificationError unless the path leads from the leaf hash to the root (RFC 9162 §2.1.3.2)."""
        if not merkle.verify_inclusion(self.leaf_hash, self.index, self.size, self.path, self.root):
            raise VerificationError(
                f"inclusion proof for log index {self.index} does not lead to the root of the log of size "
                f"{self.size}; the entry, the proof or the root was altered"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "size": self.size, "leaf_hash": _hex(self.leaf_hash),
                "path": [_hex(p) for p in self.path], "root": _hex(self.root)}

    @classmethod
    def from_dict(cls, d: object) -> InclusionProof:
        f = _exact(d, "inclusion proof", {"index", "size", "leaf_hash", "path", "root"})
        return cls(f.integer("index"), f.integer("size"), _unhex(f.raw("leaf_hash"), "leaf_hash"),
                   tuple(_unhex(p, "path entry") for p in f.items("path")), _unhex(f.raw("root"), "root"))


@dataclass(frozen=True)
class ConsistencyProof:
    """The log of `old_size` leaves (root `old_root`) is a prefix of the log of `new_size` leaves (`new_root`)."""

    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    path: tuple[bytes, ...]

    def verify(self) -> None:
        """VerificationError unless the proof shows the old log is a prefix of the new one (RFC 9162 §2.1.4.2)."""
        if not merkle.verify_consistency(self.old_size, self.new_size, self.old_root, self.new_root, self.path):
            raise VerificationError(
                f"the log of size {self.old_size} is not a prefix of the log of size {self.new_size} under these "
                "roots: the log was rewritten, or the proof or a root was altered"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"old_size": self.old_size, "new_size": self.new_size, "old_root": _hex(self.old_root),
                "new_root": _hex(self.new_root), "path": [_hex(p) for p in self.path]}

    @classmethod
    def from_dict(cls, d: object) -> ConsistencyProof:
        f = _exact(d, "consistency proof", {"old_size", "new_size", "old_root", "new_root", "path"})
        return cls(f.integer("old_size"), f.integer("new_size"), _unhex(f.raw("old_root"), "old_root"),
                   _unhex(f.raw("new_root"), "new_root"), tuple(_unhex(p, "path entry") for p in f.items("path")))


# -- the log ------------------------------------------------------------------
class ReceiptLog:
    """The `log_leaves` table of the exchange's database.

    Construct it outside any open transaction: it creates its table with
    `executescript`, which commits. Reads rebuild the tree from the stored
    leaf hashes (O(n) per root or proof, fine for the exchange's volume).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        db.read().executescript(LOG_SCHEMA)

    # -- writing --------------------------------------------------------------
    def append(self, con: sqlite3.Connection, job_id: str, contract_digest: str, bundle_digest: str) -> int:
        """Append one receipt inside the caller's `db.write()` transaction; returns its log index.

        ReplayError when the job is already in the log (a job settles once).
        """
        if not con.in_transaction:
            raise InvalidInput("ReceiptLog.append must run inside the caller's db.write() transaction")
        h = receipt_leaf_hash(job_id, contract_digest, bundle_digest)
        if con.execute("SELECT 1 FROM log_leaves WHERE contract_digest = ? AND job_id = ?",
                       (contract_digest, job_id)).fetchone() is not None:
            raise ReplayError(f"job {job_id} of this contract is already in the receipt log; a job settles once")
        (index,) = con.execute("SELECT COUNT(*) FROM log_leaves").fetchone()
        con.execute(
            "INSERT INTO log_leaves (idx, leaf_hash, job_id, contract_digest, bundle_digest, appended_at)"
            " VALUES (?,?,?,?,?,?)",
            (index, h, job_id, contract_digest, bundle_digest, utc_now()),
        )
        return int(index)

    # -- reading --------------------------------------------------------------
    def size(self) -> int:
        (n,) = self.db.read().execute("SELECT COUNT(*) FROM log_leaves").fetchone()
        return int(n)

    def _size_arg(self, size: int | None, current: int) -> int:
        if size is None:
            return current
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= current:
            raise InvalidInput(f"log size {size} is not between 0 and the current size {current}")
        return size

    @staticmethod
    def _entry(row: sqlite3.Row, expected_index: int | None = None) -> LogEntry:
        e = LogEntry(int(row["idx"]), bytes(row["leaf_hash"]), row["job_id"], row["contract_digest"],
                     row["bundle_digest"], row["appended_at"])
        if expected_index is not None and e.index != expected_index:
            raise VerificationError(f"the receipt log has no entry at index {expected_index}; rows were removed")
        try:
            ok = receipt_leaf_hash(e.job_id, e.contract_digest, e.bundle_digest) == e.leaf_hash
        except InvalidInput:
            ok = False
        if not ok:
            raise VerificationError(f"log entry {e.index} does not match its leaf hash; the log file was altered")
        return e

    def entries(self, size: int | None = None) -> list[LogEntry]:
        """The first `size` entries (all by default), in log order, each re-checked against its leaf hash."""
        con = self.db.read()
        own = not con.in_transaction  # inside the caller's transaction its snapshot is the one to read
        if own:
            con.execute("BEGIN")  # one snapshot for size and rows
        try:
            n = self._size_arg(size, int(con.execute("SELECT COUNT(*) FROM log_leaves").fetchone()[0]))
            rows = con.execute(
                "SELECT idx, leaf_hash, job_id, contract_digest, bundle_digest, appended_at FROM log_leaves"
                " WHERE idx < ? ORDER BY idx", (n,),
            ).fetchall()
        finally:
            if own:
                con.execute("COMMIT")
        entries = [self._entry(r, i) for i, r in enumerate(rows)]
        if len(entries) != n:
            raise VerificationError(f"the receipt log has {len(entries)} entries below index {n}; rows were removed")
        return entries

    def entry_for_job(self, job_id: str, contract_digest: str | None = None) -> LogEntry:
        """The entry of job `job_id` (of `contract_digest`: job ids are unique per contract only)."""
        sql = ("SELECT idx, leaf_hash, job_id, contract_digest, bundle_digest, appended_at FROM log_leaves"
               " WHERE job_id = ?" + (" AND contract_digest = ?" if contract_digest else "") + " LIMIT 2")
        rows = self.db.read().execute(sql, (job_id, contract_digest) if contract_digest else (job_id,)).fetchall()
        if not rows:
            raise NotFound(f"job {job_id} is not in the receipt log; verify its receipt with `fedtrust exchange verify`")
        if len(rows) > 1:
            raise InvalidInput(f"job id {job_id} is in the log under several contracts; name the contract's digest too")
        return self._entry(rows[0])

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        return [e.leaf_hash for e in self.entries(size)]

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (the current log by default)."""
        return merkle.root_hash(self.leaf_hashes(size))

    def inclusion(self, index: int, size: int | None = None) -> InclusionProof:
        """Proof that entry `index` is in the log of `size` leaves (the current log by default)."""
        hashes = self.leaf_hashes(size)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(hashes):
            raise NotFound(f"the receipt log of size {len(hashes)} has no entry {index}")
        path = merkle.inclusion_proof(index, len(hashes), hashes)
        return InclusionProof(index, len(hashes), hashes[index], tuple(path), merkle.root_hash(hashes))

    def inclusion_for_job(self, job_id: str, size: int | None = None, contract_digest: str | None = None) -> InclusionProof:
        return self.inclusion(self.entry_for_job(job_id, contract_digest).index, size)

    def consistency(self, old: int, new: int | None = None) -> ConsistencyProof:
        """Proof that the log of `old` leaves is a prefix of the log of `new` leaves (the current log by default)."""
        hashes = self.leaf_hashes(new)
        new_size = len(hashes)
        if not isinstance(old, int) or isinstance(old, bool) or not 0 <= old <= new_size:
            raise InvalidInput(f"old log size {old} is not between 0 and {new_size}")
        path = merkle.consistency_proof(old, new_size, hashes)
        return ConsistencyProof(old, new_size, merkle.root_hash(hashes[:old]), merkle.root_hash(hashes),
                                tuple(path))

    # -- signed statements ----------------------------------------------------
    def checkpoint(self, signer: Signer, origin: str, size: int | None = None) -> str:
        """The C2SP signed note of the log of `size` leaves (the current log by default), signed as `origin`."""
        hashes = self.leaf_hashes(size)
        return sign_note(checkpoint_text(origin, len(hashes), merkle.root_hash(hashes)), origin, signer.private_key)

    def settlement(self, contract_digest: str, origin: str, size: int | None = None) -> dict[str, Any]:
        """The settlement predicate of one contract over the first `size` log entries (the current log by default).

        {origin, contract_digest, count, jobs: [{job_id, bundle_digest, index}] in log order, log_size,
        log_root}. Deterministic for a given log state; `sign_settlement` adds the issue time.
        """
        if not is_sha256_hex(contract_digest):
            raise InvalidInput("contract digest must be lowercase sha256 hex")
        entries = self.entries(size)
        jobs = [{"job_id": e.job_id, "bundle_digest": e.bundle_digest, "index": e.index}
                for e in entries if e.contract_digest == contract_digest]
        return {
            "origin": origin,
            "contract_digest": contract_digest,
            "count": len(jobs),
            "jobs": jobs,
            "log_size": len(entries),
            "log_root": merkle.root_hash([e.leaf_hash for e in entries]).hex(),
        }


# -- checkpoints: C2SP tlog-checkpoint bodies in signed notes ------------------
def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    """The checkpoint body: origin, decimal tree size, base64 root hash, one per line."""
    check_key_name(origin)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or len(root) != 32:
        raise InvalidInput("a checkpoint needs a non-negative tree size and a 32-byte root hash")
    return f"{origin}\n{size}\n{b64_canonical(root)}\n"


def parse_checkpoint_text(text: str) -> Checkpoint:
    """Parse a checkpoint body (extension lines after the root are allowed and ignored); InvalidInput if malformed."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise InvalidInput("a checkpoint is an origin line, a tree size line and a root hash line")
    origin, size, root = lines[0], lines[1], lines[2]
    if not origin:
        raise InvalidInput("checkpoint origin line is empty")
    if not size.isascii() or not size.isdigit() or (len(size) > 1 and size[0] == "0") or len(size) > 20:
        raise InvalidInput("checkpoint tree size must be a decimal number without leading zeros")
    raw = unb64_canonical(root, "checkpoint root hash")
    if len(raw) != 32:
        raise InvalidInput("checkpoint root hash must be 32 bytes (SHA-256)")
    return Checkpoint(origin, int(size), raw)


def verify_checkpoint(note: bytes | str, exchange_public_key: Ed25519PublicKey,
                      origin: str | None = None) -> Checkpoint:
    """Open a checkpoint note signed by the exchange; VerificationError for a bad signature or body.

    `origin` is the exchange's log origin when the caller knows it; otherwise
    the note's first line is taken, and the signature must still be by the
    exchange's key under that name (the key hash binds both).
    """
    try:
        name = origin if origin is not None else (note.decode("utf-8", "replace") if isinstance(note, bytes)
                                                  else note).split("\n", 1)[0]
        cp = parse_checkpoint_text(open_note(note, check_key_name(name), exchange_public_key))
    except InvalidInput as e:
        raise VerificationError(f"log checkpoint is malformed ({e})") from None
    if cp.origin != name:
        raise VerificationError(f"checkpoint is for log {cp.origin!r}, not {name!r}; it is another exchange's log")
    return cp


def check_inclusion(proof: InclusionProof, checkpoint: Checkpoint, leaf: bytes | None = None) -> None:
    """VerificationError unless `proof` is for the checkpoint's size and root (and `leaf` hash, when given) and verifies."""
    if proof.size != checkpoint.size or proof.root != checkpoint.root:
        raise VerificationError(
            f"inclusion proof is for the log of size {proof.size}, not the checkpoint's log of size {checkpoint.size}"
        )
    if leaf is not None and proof.leaf_hash != leaf:
        raise VerificationError("inclusion proof is for another log entry than the receipt given")
    proof.verify()


def check_consistency(old: Checkpoint, new: Checkpoint, proof: ConsistencyProof) -> None:
    """VerificationError unless `proof` links the two checkpoints' sizes and roots and verifies."""
    if (proof.old_size, proof.old_root, proof.new_size, proof.new_root) != (old.size, old.root, new.size, new.root):
        raise VerificationError(
            f"consistency proof is for log sizes {proof.old_size}→{proof.new_size}, not the checkpoints' "
            f"{old.size}→{new.size} (or their roots differ)"
        )
    proof.verify()


def split_price(price: str, owners: Sequence[str]) -> list[dict[str, str]]:
    """The contract price in equal shares per owner (sorted by name), exact in the price's decimal places
    (at least 2): the first owners get one unit of the last place more where it does not divide evenly."""
    if not owners:
        return []
    places = max(2, len(price.partition(".")[2]))
    units = int(Decimal(price).scaleb(places))
    share, rest = divmod(units, len(owners))
    return [{"owner": o, "amount": f"{Decimal(share + (1 if i < rest else 0)).scaleb(-places):f}"}
            for i, o in enumerate(sorted(owners))]


def sign_settlement(log: ReceiptLog, contract_digest: str, signer: Signer, origin: str,
                    size: int | None = None, *, price: str | None = None, owners: Sequence[str] = ()) -> Envelope:
    """The exchange's signed settlement statement for one contract (predicate type SETTLEMENT_TYPE).

    With `price` (the contract's), it also names the amount due to each owner
    (`split_price`): the buyer pays the price, the owners share it equally.
    """
    predicate = log.settlement(contract_digest, origin, size)
    if price is not None:
        predicate["price"] = price
        predicate["amounts"] = split_price(price, owners)
    predicate["issued_at"] = utc_now()
    return signer.sign_statement(SETTLEMENT_TYPE, predicate, [("contract", contract_digest)])


def verify_settlement(envelope: Envelope, exchange_public_key: Ed25519PublicKey,
                      origin: str | None = None) -> dict[str, Any]:
    """Verify a settlement statement's signature and shape; returns its predicate.

    Each listed job can then be checked against `log_root` with an inclusion
    proof (`ReceiptLog.inclusion_for_job(job, size=log_size)` + `check_inclusion`).
    """
    p = verify_statement(envelope, exchange_public_key, SETTLEMENT_TYPE)
    try:
        f = Fields(p, "settlement")
        f.digest("contract_digest"), f.digest("log_root"), f.time("issued_at")
        if origin is not None and f.text("origin") != origin:
            raise InvalidInput(f"origin must be {origin}, the exchange's log")
        jobs = f.items("jobs")
        for j in jobs:
            jf = Fields(j, "settlement job")
            jf.text("job_id"), jf.digest("bundle_digest"), jf.integer("index")
        if f.integer("count") != len(jobs) or f.integer("log_size") < len(jobs):
            raise InvalidInput("count must equal the number of jobs and log_size cover them")
        if "price" in p:
            amounts = [Fields(a, "settlement amount") for a in f.items("amounts")]
            total = sum((Decimal(a.text("amount")) for a in amounts), Decimal(0))
            if total != Decimal(check_price(f.text("price"))):
                raise InvalidInput("the owners' amounts must add up to the price")
    except (InvalidInput, ConfigError, InvalidOperation) as e:
        raise VerificationError(f"signed settlement is malformed ({e})") from None
    return p
