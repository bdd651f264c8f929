"""Merkle tree hashing and proofs of RFC 9162 (Certificate Transparency v2) §2.1.

The exchange's receipt log is an append-only list of leaves summarised by one
Merkle Tree Hash (MTH). Two proofs make that summary useful to people who do
not hold the log: an *inclusion proof* shows that one leaf is in the tree of
a given size and root, and a *consistency proof* shows that the tree of an
older size is a prefix of a newer one — that nothing logged earlier was
changed or removed. Both are logarithmic in the log size.

Hashing is RFC 6962's, unchanged by RFC 9162: a leaf hashes as
SHA-256(0x00 || data), an interior node as SHA-256(0x01 || left || right),
and the empty tree as SHA-256 of the empty string. The prefixes keep a leaf
from being passed off as an interior node (second-preimage resistance).

Every function that builds a tree takes *leaf hashes* (outputs of
`leaf_hash`), not leaf data, so the log stores and reads 32-byte hashes
only. The two verifiers follow the bit-operation algorithms of RFC 9162
§2.1.3.2 and §2.1.4.2 step by step; they never rebuild a tree, and they
answer False (never raise) for any proof that does not verify, including
malformed ones.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from fedtrust.errors import InvalidInput

__all__ = [
    "HASH_SIZE", "EMPTY_ROOT", "leaf_hash", "node_hash", "root_hash",
    "inclusion_proof", "verify_inclusion", "consistency_proof", "verify_consistency",
]

HASH_SIZE = 32
#: MTH({}) = SHA-256() (RFC 9162 §2.1.1)
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one log entry."""
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return hashlib.sha256(b"\x01" + bytes(left) + bytes(right)).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): the size of the left subtree."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH of the leaves hashes[lo:hi] (hi > lo), without copying slices."""
    n = hi - lo
    if n == 1:
        return bytes(hashes[lo])
    k = _split(n)
    return node_hash(_mth(hashes, lo, lo + k), _mth(hashes, lo + k, hi))


def _check_hashes(leaf_hashes: Sequence[bytes], size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput("tree size must be a non-negative integer")
    if size > len(leaf_hashes):
        raise InvalidInput(f"tree size {size} is larger than the {len(leaf_hashes)} leaves given")
    for h in leaf_hashes[:size]:
        if len(h) != HASH_SIZE:
            raise InvalidInput(f"leaf hashes must be {HASH_SIZE} bytes (pass leaf_hash(data), not the data)")


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over `leaf_hashes` (already hashed with `leaf_hash`); EMPTY_ROOT for no leaves."""
    _check_hashes(leaf_hashes, len(leaf_hashes))
    if not leaf_hashes:
        return EMPTY_ROOT
    return _mth(leaf_hashes, 0, len(leaf_hashes))


# -- inclusion ----------------------------------------------------------------
def inclusion_proof(index: int, size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1: the audit path of leaf `index` in the tree of `size` leaves.

    `leaf_hashes` may hold more than `size` leaves; only the first `size` count.
    """
    _check_hashes(leaf_hashes, size)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
        raise InvalidInput(f"leaf index {index} is not in a tree of {size} leaves")
    path: list[bytes] = []
    lo, hi, m = 0, size, index
    # Walk from the root down to the leaf, collecting the sibling subtree of
    # each step; the RFC lists them leaf-first, so reverse at the end.
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(_mth(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(leaf_hashes, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: True when `proof` shows leaf hash `leaf` at `index` in the tree of `size` with `root`."""
    if not (_is_hash(leaf) and _is_hash(root) and _is_count(index) and _is_count(size)):
        return False
    if not all(_is_hash(p) for p in proof):
        return False
    # 1. leaf_index must be inside the tree
    if index >= size:
        return False
    # 2.-3.
    fn, sn = index, size - 1
    r = bytes(leaf)
    # 4.
    for p in proof:
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # c.
        sn >>= 1
    # 5.
    return sn == 0 and r == bytes(root)


# -- consistency --------------------------------------------------------------
def consistency_proof(old_size: int, new_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1; empty when old_size is 0 or equals new_size."""
    _check_hashes(leaf_hashes, new_size)
    if not isinstance(old_size, int) or isinstance(old_size, bool) or not 0 <= old_size <= new_size:
        raise InvalidInput(f"old tree size {old_size} must be between 0 and the new size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    # SUBPROOF(m, D[lo:hi], b), unrolled: each step appends one node, the
    # RFC's order is innermost-first, so collect and reverse.
    out: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append(_mth(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            out.append(_mth(leaf_hashes, lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        out.append(_mth(leaf_hashes, lo, hi))
    out.reverse()
    return out


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: True when `proof` shows the tree (old_size, old_root) is a prefix of (new_size, new_root).

    Edge cases the RFC leaves to the caller (its algorithm assumes
    0 < old_size < new_size): equal sizes need an empty proof and equal
    roots; old size 0 needs an empty proof and old_root = EMPTY_ROOT.
    """
    if not (_is_hash(old_root) and _is_hash(new_root) and _is_count(old_size) and _is_count(new_size)):
        return False
    if not all(_is_hash(p) for p in proof):
        return False
    if old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and bytes(old_root) == bytes(new_root)
    if old_size == 0:
        return not proof and bytes(old_root) == EMPTY_ROOT
    # 1. an empty path cannot prove anything here
    if not proof:
        return False
    path = [bytes(p) for p in proof]
    # 2. a complete (power of two) old tree is itself a node of the new one
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    # 3.
    fn, sn = old_size - 1, new_size - 1
    # 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # c.
        sn >>= 1
    # 7.
    return fr == bytes(old_root) and sr == bytes(new_root) and sn == 0
