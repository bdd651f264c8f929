"""The exchange's revocation list, and what a daemon holds of it.

The exchange may stop a trade that breaks the rules: it revokes a contract
(by digest) or a subject (by `fedtrust://<role>/<name>` URI) and publishes a
signed, sequence-numbered list of everything revoked (`RevocationList`),
freshly dated each time it is served. Nodes and the coordinator fetch it;
the coordinator forwards the newest it holds with every job, so a node learns
of a revocation from whichever source is fresher. A holder only ever moves
forward (a higher sequence number, or the same one issued later): an old list
replayed by a coordinator cannot undo a revocation. A contract issued with
`revocation_max_age_h` makes its nodes refuse jobs while the newest list they
hold is older than that, so withholding the list does not keep a revoked
contract alive.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedtrust.errors import InvalidInput, PolicyViolation, VerificationError
from fedtrust.trust.canonical import Fields, is_sha256_hex, parse_time
from fedtrust.trust.contracts import Contract
from fedtrust.trust.dsse import Envelope, Signer, verify_object
from fedtrust.trust.pki import parse_subject_uri

__all__ = ["REVOCATION_TYPE", "Revoked", "RevocationList", "check_revocation", "sign_revocation_list",
           "verify_revocation_list", "RevocationHolder"]

REVOCATION_TYPE = "https://fedtrust.dev/RevocationList/v1"
KINDS = ("contract", "subject")
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Revoked:
    kind: str  # "contract" (target: its digest) or "subject" (target: its fedtrust:// URI)
    target: str
    reason: str
    revoked_at: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "reason": self.reason, "revoked_at": self.revoked_at}

    @classmethod
    def from_dict(cls, d: object) -> Revoked:
        f = Fields(d, "revocation entry")
        r = cls(f.text("kind"), f.text("target"), f.text("reason"), f.time("revoked_at"))
        check_target(r.kind, r.target)
        return r


def check_target(kind: str, target: str) -> None:
    if kind == "contract":
        if not is_sha256_hex(target):
            raise InvalidInput("a revoked contract is named by its 64-hex digest")
    elif kind == "subject":
        try:
            parse_subject_uri(target)
        except VerificationError:
            raise InvalidInput("a revoked subject is named by its URI, e.g. fedtrust://node/bank-a") from None
    else:
        raise InvalidInput(f"revocation kind must be one of {', '.join(KINDS)}")


@dataclass(frozen=True)
class RevocationList:
    seq: int  # the number of revocations so far: grows with each one
    issued_at: str  # when the exchange signed this copy (its freshness)
    entries: tuple[Revoked, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "issued_at": self.issued_at, "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, d: object) -> RevocationList:
        f = Fields(d, "revocation list")
        seq = f.integer("seq")
        entries = tuple(Revoked.from_dict(e) for e in f.items("entries"))
        if seq != len(entries):
            raise InvalidInput("revocation list: seq must equal the number of entries")
        return cls(seq, f.time("issued_at"), entries)

    def newer_than(self, other: RevocationList | None) -> bool:
        if other is None:
            return True
        return (self.seq, parse_time(self.issued_at)) > (other.seq, parse_time(other.issued_at))

    def revoked(self, kind: str, target: str) -> Revoked | None:
        return next((e for e in self.entries if e.kind == kind and e.target == target), None)


def sign_revocation_list(rl: RevocationList, exchange: Signer) -> Envelope:
    return exchange.sign_statement(REVOCATION_TYPE, rl.to_dict())


def verify_revocation_list(envelope: Envelope, exchange_key: Ed25519PublicKey) -> RevocationList:
    return verify_object(envelope, exchange_key, REVOCATION_TYPE, RevocationList.from_dict, "revocation list")


class RevocationHolder:
    """The newest revocation list a daemon has seen (from the exchange or forwarded), kept in its state folder.

    `offer` adopts a list only if it verifies and is newer; `check` refuses a
    contract that is revoked, names a revoked subject, or demands a fresher
    list than the one held.
    """

    FILE = "revocations.json"

    def __init__(self, state_dir: Path, exchange_key: Ed25519PublicKey) -> None:
        self.path = Path(state_dir) / self.FILE
        self.exchange_key = exchange_key
        self._lock = threading.Lock()
        self.current: RevocationList | None = None
        self.envelope: Envelope | None = None
        try:
            self.offer(self.path.read_bytes(), persist=False)
        except (FileNotFoundError, InvalidInput, VerificationError):
            pass

    def offer(self, data: bytes, *, persist: bool = True) -> bool:
        """Adopt `data` (a signed list's JSON) if it verifies and is newer; True when adopted.
        InvalidInput/VerificationError for a list that does not verify."""
        env = Envelope.from_json(data)
        rl = verify_revocation_list(env, self.exchange_key)
        with self._lock:
            if not rl.newer_than(self.current):
                return False
            self.current, self.envelope = rl, env
            if persist:
                self._save(env.to_json())
        return True

    def _save(self, data: bytes) -> None:
        import os

        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def newest_bytes(self) -> bytes:
        env = self.envelope
        return env.to_json() if env is not None else b""

    def check(self, contract_digest: str, contract: Contract, now: datetime | None = None) -> None:
        """PolicyViolation when the contract or one of its parties is revoked, or the list held is too old."""
        check_revocation(self.current, contract_digest, contract, now or datetime.now(timezone.utc))


def check_revocation(rl: RevocationList | None, contract_digest: str, contract: Contract, now: datetime) -> None:
    """PolicyViolation when `rl` revokes the contract or one of its parties, or is older than the contract demands
    (pure: the caller passes the list it holds and the time)."""
    if rl is not None:
        hit = rl.revoked("contract", contract_digest)
        if hit is not None:
            raise PolicyViolation(f"this contract was revoked by the exchange at {hit.revoked_at} "
                                  f"(revocation list #{rl.seq}); no job runs under it")
        parties = [contract.buyer, contract.coordinator] + [h.credential for h in contract.owners]
        for cred in parties:
            hit = rl.revoked("subject", cred.uri)
            if hit is not None:
                raise PolicyViolation(f"party {cred.uri} of this contract was revoked by the exchange at "
                                      f"{hit.revoked_at} (revocation list #{rl.seq}); no job runs under it")
    max_age = contract.revocation_max_age_h
    if max_age is not None:
        if rl is None or now - parse_time(rl.issued_at) > timedelta(hours=max_age):
            held = f"from {rl.issued_at}" if rl is not None else "none at all"
            raise PolicyViolation(
                f"this contract requires a revocation list at most {max_age} h old, and the newest this daemon "
                f"holds is {held}; set [exchange] url so it can fetch one (or wait for its next refresh)")
