"""Fixed-point encoding of a node's count-weighted update, so that masked sums are exact.

What a node releases per round is one vector of integers mod M = 2^63:

    train:     [ q(n·δ_1), …, q(n·δ_P), n, q_loss(n·loss), q_acc(n·accuracy) ]
    evaluate:  [ n, q_loss(n·loss), q_acc(n·accuracy) ]

where n is the node's example count, δ = w − g the change of each parameter
from the global model g the node trained from (clipped to ±DELTA_BOUND), and

    q(x) = round(x · 2^16),  q_loss(x) = round(x · 2^10),  q_acc(x) = round(x · 2^24),

each a signed integer written as x mod M. The coordinator adds the vectors
mod M (pairwise masks cancel), reads each sum back as a signed integer and
divides: g + Σ n·δ / Σ n = Σ n·w / Σ n, exactly the FedAvg average up to
the fixed-point resolution (2^-16 / Σ n per parameter).

Bounds (documented, enforced by clipping so the sum can never wrap):
n ≤ 2^28, |δ| ≤ 2^8, loss ∈ [0, 2^14], accuracy ∈ [0, 1]. Every slot of one
node is then at most 2^52 in magnitude, and a sum over at most
MAX_PARTICIPANTS = 1000 nodes stays below 2^62 = M/2, so the signed reading
is unambiguous.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedtrust.errors import InvalidInput

__all__ = [
    "MODULUS", "DELTA_SCALE", "LOSS_SCALE", "ACC_SCALE", "MAX_EXAMPLES", "DELTA_BOUND", "LOSS_BOUND",
    "MAX_PARTICIPANTS", "Decoded", "encode", "decode", "sum_vectors", "add_masks", "to_bytes", "from_bytes",
]

MODULUS = 1 << 63
DELTA_SCALE = float(1 << 16)
LOSS_SCALE = float(1 << 10)
ACC_SCALE = float(1 << 24)
MAX_EXAMPLES = 1 << 28
DELTA_BOUND = float(1 << 8)
LOSS_BOUND = float(1 << 14)
MAX_PARTICIPANTS = 1000
TAIL = 3  # n, n·loss, n·accuracy


@dataclass(frozen=True)
class Decoded:
    examples: int
    loss: float  # example-weighted mean
    accuracy: float
    delta: np.ndarray | None  # Σ n·δ / Σ n (train), float64


_LOW63 = np.uint64(MODULUS - 1)


def _signed_to_mod(q: np.ndarray) -> np.ndarray:
    """Signed int64 values as x mod 2^63: two's complement, then drop bit 63 (2^64 + x ≡ 2^63 + x mod 2^63)."""
    out = np.ascontiguousarray(q, dtype=np.int64).view(np.uint64).copy()
    out &= _LOW63
    return out


def add_masks(vector: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(vector + mask) mod 2^63 for values in [0, 2^63): the uint64 sum cannot overflow."""
    out = vector + mask
    out &= _LOW63
    return out


def encode(n: int, loss: float, accuracy: float, delta: np.ndarray | None) -> np.ndarray:
    """One node's vector (uint64, values in [0, 2^63)), before masking."""
    if not isinstance(n, (int, np.integer)) or not 0 <= int(n) <= MAX_EXAMPLES:
        raise InvalidInput(f"num-examples must be an integer in [0, {MAX_EXAMPLES}]")
    n = int(n)
    loss = float(loss)
    accuracy = float(accuracy)
    if not (np.isfinite(loss) and np.isfinite(accuracy)):
        raise InvalidInput("the update's loss or accuracy is NaN or infinite")
    tail = np.array([
        n,
        round(n * min(max(loss, 0.0), LOSS_BOUND) * LOSS_SCALE),
        round(n * min(max(accuracy, 0.0), 1.0) * ACC_SCALE),
    ], dtype=np.int64)
    if delta is None:
        return _signed_to_mod(tail)
    d = np.asarray(delta, dtype=np.float64).ravel()
    if not np.isfinite(d).all():
        raise InvalidInput("the update contains NaN or infinite values; the node refuses to release it")
    q = np.clip(d, -DELTA_BOUND, DELTA_BOUND)
    q *= float(n) * DELTA_SCALE
    np.rint(q, out=q)
    # written straight into the vector: float64 → int64 (exact, |q| ≤ 2^52), read as uint64 and reduced once
    out = np.empty(d.size + TAIL, dtype=np.uint64)
    np.copyto(out[:d.size].view(np.int64), q, casting="unsafe")
    out[d.size:] = tail.view(np.uint64)
    out &= _LOW63
    return out


def to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<u8").tobytes()


def from_bytes(data: bytes, length: int, what: str) -> np.ndarray:
    if len(data) != 8 * length:
        raise InvalidInput(f"{what} has {len(data)} bytes; the job's model needs exactly {8 * length}")
    # zero-copy, read-only view of the received bytes (callers only read it); one pass for the range check
    v = np.frombuffer(data, dtype="<u8").astype(np.uint64, copy=False)
    if v.size and v.max() >= np.uint64(MODULUS):
        raise InvalidInput(f"{what} holds values outside [0, 2^63)")
    return v


def sum_vectors(vectors: list[np.ndarray]) -> np.ndarray:
    """Σ vectors mod 2^63: wrapping uint64 additions (mod 2^64, which 2^63 divides), reduced once at the end."""
    if not vectors:
        raise InvalidInput("nothing to add")
    if len(vectors) > MAX_PARTICIPANTS:
        raise InvalidInput(f"more than {MAX_PARTICIPANTS} vectors cannot be added without overflow")
    total = np.array(vectors[0], dtype=np.uint64, copy=True)
    for v in vectors[1:]:
        total += v
    total &= _LOW63
    return total


def _signed(v: np.ndarray) -> np.ndarray:
    """Values mod 2^63 read as signed integers in [−2^62, 2^62): bit 62 is the sign (shift it into bit 63)."""
    out = np.left_shift(np.ascontiguousarray(v, dtype=np.uint64).view(np.int64), 1)
    out >>= 1  # arithmetic shift: sign-extends
    return out


def decode(total: np.ndarray, params: int | None) -> Decoded:
    """Read a summed vector: example count, weighted mean loss/accuracy, and the mean parameter change."""
    expected = TAIL + (params or 0)
    if total.shape != (expected,):
        raise InvalidInput("the summed vector does not match the model's size")
    s = _signed(total)
    tail = s[-TAIL:]
    n = int(tail[0])
    if n <= 0:
        raise InvalidInput("the participants together reported no training examples; the round cannot be averaged")
    loss = float(tail[1]) / LOSS_SCALE / n
    acc = float(tail[2]) / ACC_SCALE / n
    delta = None
    if params:
        # (float64(s) / 2^16) / n, the same two roundings as before, into one array: no temporaries
        delta = np.divide(s[:params], DELTA_SCALE, dtype=np.float64)
        delta /= n
    return Decoded(n, loss, acc, delta)
