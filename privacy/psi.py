"""Two-party ECDH private set intersection on X25519 (Diffie–Hellman PSI).

Role
----
Two data owners find which of their rows share a join key (a salted hash of a
phone number, say) without showing each other, the coordinator that relays
their messages, or the buyer any key outside the intersection. Each owner
learns which of its *own* rows are in the intersection (it needs that to
align rows for a later joint computation) and the common order of those rows;
both learn the intersection's size and the other's set size.

Protocol (A holds keys a_i, B holds b_j; α, β fresh X25519 scalars per job)
---------------------------------------------------------------------------
1. Each party hashes its keys to curve points, H(k) (BLAKE2b-256 of a
   domain tag, the job context and the key, read as an X25519 u-coordinate),
   shuffles them with the OS CSPRNG, and sends its blinded set: A sends
   [α·H(a_i)], B sends [β·H(b_j)] (`PsiParty.first_message`).
2. Each party blinds the other's set again in the other's order and sends it
   back: B returns [β·α·H(a_i)] to A (`PsiParty.answer`); while doing so it
   keeps [α·β·H(b_j)] (A does the same with B's set).
3. Each party compares its own doubly blinded keys with the other's
   (`PsiParty.finish`): α·β·H(k) is the same value for a key both hold.
   The intersection's rows are ordered by that shared value, so both sides
   list matching rows in the same order without any key leaving either side.

Security reasoning
------------------
- X25519 scalar multiplication on u-coordinates commutes: X25519(α,
  X25519(β, u)) = X25519(β, X25519(α, u)) (clamped scalars are fixed per
  party, multiplication of scalars commutes; the u-coordinate is the same for
  P and −P). Any 32 bytes are a u-coordinate on the curve or its twist; both
  have a prime-order subgroup of about 2^252 and the clamping clears the small
  cofactor, so the Decisional Diffie–Hellman assumption applies to the
  blinded values; a hash output of small order (probability ~2^-250) makes
  `cryptography` raise, and the job fails.
- Under DDH, α·H(k) is indistinguishable from random to anyone without α, so
  B learns nothing about A's keys from step 1 except how many there are; in
  step 3 B sees α·β·H(a_i) only for A's keys, and those equal one of B's own
  doubly blinded values only when the key is in the intersection. A party
  cannot test a guessed key without the other party's scalar; it can only
  submit guesses as part of its own set, which the contract's `max_keys`
  caps (a node refuses a peer set above it).
- Semi-honest security against the peer; the coordinator relays sealed
  messages (`privacy.sealed`) so it sees nothing but their sizes.
- The job context (job digest) is hashed into H, and scalars are fresh per
  job, so blinded values from different jobs cannot be linked.
- Why not `openmined-psi`: its protocol is asymmetric (only its client learns
  the intersection, and not the server's row order), while both owners here
  must learn and align their own rows; and it ships a compiled wheel for a
  few platforms only. This module uses `cryptography`'s X25519 (OpenSSL)
  and costs two scalar multiplications per key per party.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedtrust.errors import InvalidInput, PolicyViolation

__all__ = ["POINT_BYTES", "PsiParty", "PsiResult", "hash_to_point", "intersect_plain"]

POINT_BYTES = 32
_DOMAIN = b"fedtrust/psi/v1|"


def hash_to_point(key: bytes, context: bytes) -> bytes:
    """H(key): an X25519 u-coordinate (bit 255 cleared, as RFC 7748 decoders do)."""
    h = bytearray(hashlib.blake2b(_DOMAIN + len(context).to_bytes(4, "big") + context + key, digest_size=32).digest())
    h[31] &= 0x7F
    return bytes(h)


def _split(message: bytes, what: str, limit: int) -> list[bytes]:
    if len(message) % POINT_BYTES:
        raise InvalidInput(f"PSI {what} is not a whole number of {POINT_BYTES}-byte points; the peer sent a malformed message")
    n = len(message) // POINT_BYTES
    if n > limit:
        raise PolicyViolation(
            f"PSI {what} holds more keys than the contract's max_keys allows; the peer's set is refused"
        )
    return [message[i : i + POINT_BYTES] for i in range(0, len(message), POINT_BYTES)]


class _Scalar:
    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()

    def mul(self, points: Sequence[bytes]) -> bytes:
        key, out = self._key, bytearray()
        try:
            for p in points:
                out += key.exchange(X25519PublicKey.from_public_bytes(p))
        except ValueError:
            raise InvalidInput("PSI message holds a point of small order; the peer sent a malformed message") from None
        return bytes(out)


@dataclass(frozen=True)
class PsiResult:
    """What one party learns: its own rows in the intersection, in the order both sides share."""

    rows: tuple[int, ...]  # indices into this party's key list
    peer_set_size: int

    @property
    def size(self) -> int:
        return len(self.rows)


class PsiParty:
    """One owner's side of a two-party PSI for one job. Keys must be distinct non-empty bytes."""

    def __init__(self, keys: Sequence[bytes], context: bytes, *, max_keys: int):
        if len(keys) > max_keys:
            raise PolicyViolation("this owner's key set is larger than the contract's max_keys; the job is refused")
        if len(set(keys)) != len(keys):
            raise InvalidInput("the key column holds a value twice; a join key must identify one row")
        self._max = max_keys
        self._scalar = _Scalar()
        self._order = list(range(len(keys)))
        secrets.SystemRandom().shuffle(self._order)
        self._points = [hash_to_point(keys[i], context) for i in self._order]
        self._peer_doubled: frozenset[bytes] | None = None
        self._peer_size = 0
        self._answered = False

    def first_message(self) -> bytes:
        """Step 1: this party's keys, hashed, shuffled and blinded."""
        return self._scalar.mul(self._points)

    def answer(self, peer_first: bytes) -> bytes:
        """Step 2: the peer's blinded set, blinded again in the peer's order (sent back to it)."""
        if self._answered:
            raise InvalidInput("PSI step 2 arrived twice for this job; a party answers once")
        self._answered = True
        points = _split(peer_first, "set from the peer", self._max)
        doubled = self._scalar.mul(points)
        self._peer_doubled = frozenset(doubled[i : i + POINT_BYTES] for i in range(0, len(doubled), POINT_BYTES))
        self._peer_size = len(points)
        return doubled

    def finish(self, own_doubled: bytes) -> PsiResult:
        """Step 3: this party's keys doubly blinded by the peer (in the order it sent them)."""
        if self._peer_doubled is None:
            raise InvalidInput("PSI step 3 arrived before step 2; the relay sent the messages out of order")
        mine = _split(own_doubled, "answer from the peer", self._max)
        if len(mine) != len(self._order):
            raise InvalidInput("the peer's PSI answer does not hold one point per key this owner sent")
        matched = sorted((v, self._order[i]) for i, v in enumerate(mine) if v in self._peer_doubled)
        return PsiResult(tuple(row for _, row in matched), self._peer_size)


def intersect_plain(a: Sequence[bytes], b: Sequence[bytes], context: bytes, *, max_keys: int) -> tuple[PsiResult, PsiResult]:
    """Run both parties in one process (tests, benchmarks): (A's result, B's result)."""
    pa, pb = PsiParty(a, context, max_keys=max_keys), PsiParty(b, context, max_keys=max_keys)
    ma, mb = pa.first_message(), pb.first_message()
    back_to_a, back_to_b = pb.answer(ma), pa.answer(mb)
    return pa.finish(back_to_a), pb.finish(back_to_b)
