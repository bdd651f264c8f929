"""Pairwise additive masks that cancel in the sum of all participants.

Role
----
Before a node encrypts its vector for a job, it adds
``pairwise_mask(...)`` to it (mod t). For a query the coordinator relays
every node's ciphertext to the buyer, who adds them and decrypts the sum, in
which all masks cancel. A single node's ciphertext, decrypted by the buyer
(who receives each one) or by a buyer colluding with the coordinator, shows
only uniform noise.

Security reasoning
------------------
- Why masks cancel: nodes i and j derive the same seed from their X25519
  shared secret, so both expand the same stream r_ij. The node whose name
  sorts first adds r_ij, the other subtracts it. Summed over all
  participants, each pair contributes r_ij − r_ij = 0 mod t, so
  Σ_i (x_i + m_i) = Σ_i x_i mod t. It only cancels when *every* participant
  is included — which is why the job spec fixes the participants and nodes
  refuse a job whose participant set differs.
- Why a single masked vector reveals nothing: for a node with at least one
  honest peer j, r_ij is uniform mod t and unknown to coordinator and buyer
  (it depends on X25519 secret keys they do not hold), so x_i + m_i is
  uniform and independent of x_i (a one-time pad over Z_t).
- Why the seed depends on the job: info = "fedtrust/mask/v1|" + purpose +
  "|" + job_id + "|" + sorted participant names. Reusing a mask for two
  different vectors would reveal their difference; a fresh (purpose, job,
  participant set) gives fresh, independent seeds. Callers must pass a job
  id that is never reused with different data (the job-spec digest is the
  safest choice) and, for training, a purpose per round
  (`training_purpose`). Separators are forbidden inside the fields, so the
  info string encodes them unambiguously.
- Why rejection sampling: reducing 64-bit random words mod t would make
  small residues more likely (modulo bias), i.e. a mask that is not
  uniform, which leaks information about x_i. Masking each word to
  bit_length(t) bits and rejecting words ≥ t gives exactly uniform values;
  the procedure is deterministic (first `length` accepted words of the
  stream), so both ends of a pair get the same r_ij.
- Stream: AES-256-CTR keyed with the 32-byte HKDF-SHA256 output and a zero
  nonce; each key is used for exactly one stream, so the fixed nonce is safe.
- The peer's public key comes from its exchange-signed credential; a
  low-order key that yields an all-zero shared secret is refused.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedtrust.errors import InvalidInput

__all__ = ["pairwise_mask", "add_pairwise_mask", "add_mod", "sub_mod", "mask_stream", "training_purpose", "INFO_PREFIX"]

INFO_PREFIX = b"fedtrust/mask/v1|"
#: Largest modulus supported: sums of two reduced values must fit in uint64.
MAX_MODULUS = 1 << 63


def training_purpose(round_index: int) -> bytes:
    """`purpose` for the masks of one federated-training round (distinct per round)."""
    if not isinstance(round_index, int) or isinstance(round_index, bool) or round_index < 0:
        raise InvalidInput("a training round index must be a non-negative integer")
    return b"train/round/%d" % round_index


def _check_modulus(modulus: int) -> None:
    if not isinstance(modulus, int) or isinstance(modulus, bool) or not 2 <= modulus <= MAX_MODULUS:
        raise InvalidInput("the mask modulus must be an integer in [2, 2^63]")


def add_mod(a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
    """(a + b) mod `modulus` for uint64 arrays already reduced to [0, modulus)."""
    _check_modulus(modulus)
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    m = np.uint64(modulus)
    s = a + b  # < 2·2^63 = 2^64: no overflow
    return np.where(s >= m, s - m, s)


def sub_mod(a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
    """(a − b) mod `modulus` for uint64 arrays already reduced to [0, modulus)."""
    _check_modulus(modulus)
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    m = np.uint64(modulus)
    return np.where(a >= b, a - b, a + (m - b))


def _keystream(seed: bytes):
    """The AES-256-CTR keystream of a mask seed (counter from zero): the words both mask paths draw."""
    return Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()


def mask_stream(seed: bytes, length: int, modulus: int) -> np.ndarray:
    """`length` uniform values in [0, modulus) from a 32-byte seed (AES-256-CTR + rejection)."""
    _check_modulus(modulus)
    if len(seed) != 32:
        raise InvalidInput("a mask seed must be 32 bytes")
    if length == 0:
        return np.zeros(0, dtype=np.uint64)
    bits = (modulus - 1).bit_length()
    low_mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    m = np.uint64(modulus)
    # Acceptance probability is modulus / 2^bits > 1/2; ask for a little more than expected.
    accept = modulus / float(1 << bits)
    encryptor = _keystream(seed)
    parts: list[np.ndarray] = []
    have = 0
    while have < length:
        need = length - have
        words = int(need / accept * 1.02) + 64
        raw = encryptor.update(bytes(8 * words))
        vals = np.frombuffer(raw, dtype="<u8") & low_mask
        if modulus != 1 << bits:  # a power-of-two modulus accepts every masked word
            vals = vals[vals < m]
        parts.append(vals)
        have += vals.size
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return np.ascontiguousarray(out[:length], dtype=np.uint64)


def _check_field(name: str, value: str, forbidden: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"the {name} for pairwise masks must be a non-empty string")
    for ch in forbidden:
        if ch in value:
            raise InvalidInput(f"the {name} for pairwise masks must not contain {ch!r}")


def _peer_seeds(
    kx_private: X25519PrivateKey,
    self_name: str,
    peer_keys: Mapping[str, X25519PublicKey],
    job_id: str,
    length: int,
    modulus: int,
    purpose: bytes,
) -> list[tuple[bool, bytes]]:
    """(this participant adds the stream, its 32-byte seed) per peer in name order, after every input check."""
    _check_modulus(modulus)
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise InvalidInput("the mask length must be a non-negative integer")
    if not isinstance(kx_private, X25519PrivateKey):
        raise InvalidInput("pairwise masks need this node's X25519 private key")
    if not isinstance(purpose, bytes) or not purpose or b"|" in purpose:
        raise InvalidInput("the mask purpose must be non-empty bytes without '|'")
    _check_field("job id", job_id, "|")
    _check_field("participant name", self_name, "|,")
    if self_name in peer_keys:
        raise InvalidInput("the peer keys for pairwise masks must not include this participant")
    for name, key in peer_keys.items():
        _check_field("participant name", name, "|,")
        if not isinstance(key, X25519PublicKey):
            raise InvalidInput(f"the key-agreement key of participant {name} is not an X25519 public key")
    names = sorted([self_name, *peer_keys])
    info = INFO_PREFIX + purpose + b"|" + job_id.encode() + b"|" + ",".join(names).encode()
    seeds = []
    for peer in sorted(peer_keys):
        try:
            shared = kx_private.exchange(peer_keys[peer])
        except ValueError:  # all-zero shared secret: a low-order public key
            raise InvalidInput(f"the key-agreement key of participant {peer} is invalid (low order)") from None
        seeds.append((self_name < peer, HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)))
    return seeds


def pairwise_mask(
    kx_private: X25519PrivateKey,
    self_name: str,
    peer_keys: Mapping[str, X25519PublicKey],
    job_id: str,
    length: int,
    modulus: int,
    purpose: bytes = b"query",
) -> np.ndarray:
    """This participant's mask: Σ_j ±PRG(HKDF(X25519(self, j), info)) mod `modulus`.

    `peer_keys` maps every *other* participant's name to its X25519 public
    key. The mask is + for peers whose name sorts after `self_name`, − for
    those before, so all participants' masks sum to 0 mod `modulus`.
    Returns a uint64 array of `length` values in [0, modulus). With no peers
    the mask is all zeros (a lone participant's "aggregate" is its own value).
    """
    seeds = _peer_seeds(kx_private, self_name, peer_keys, job_id, length, modulus, purpose)
    mask = np.zeros(length, dtype=np.uint64)
    m = np.uint64(modulus)
    spare = np.empty(length, dtype=np.uint64)
    for plus, seed in seeds:
        stream = mask_stream(seed, length, modulus)
        # In place and branch-free, bit-identical to add_mod / sub_mod. With a, b < m ≤ 2^63:
        # add: s = a + b < 2^64; s − m wraps above s exactly when s < m, so min(s, s − m) = s mod m.
        # sub: d = a − b wraps to ≥ 2^64 − m exactly when a < b; then d + m wraps to a − b + m < d,
        #      otherwise d + m > d, so min(d, d + m) = (a − b) mod m.
        if plus:
            mask += stream
            np.subtract(mask, m, out=spare)
        else:
            mask -= stream
            np.add(mask, m, out=spare)
        np.minimum(mask, spare, out=mask)
    return mask


def add_pairwise_mask(
    vector: np.ndarray,
    kx_private: X25519PrivateKey,
    self_name: str,
    peer_keys: Mapping[str, X25519PublicKey],
    job_id: str,
    modulus: int,
    purpose: bytes,
) -> None:
    """`vector` += this participant's `pairwise_mask(...)` mod `modulus`, in place, for a power-of-two modulus.

    Bit for bit `(vector + pairwise_mask(...)) mod modulus` for a uint64 `vector` with values in
    [0, modulus): with modulus = 2^k dividing 2^64, wrapping uint64 additions and subtractions of the
    raw keystream words agree with the masked words mod 2^k (a power-of-two modulus accepts every word,
    so the streams are the same), and one reduction at the end replaces one per peer. One pass per peer
    over the keystream, no temporary mask.
    """
    if not isinstance(modulus, int) or modulus & (modulus - 1):
        raise InvalidInput("masks are added in place only for a power-of-two modulus; use pairwise_mask")
    if not isinstance(vector, np.ndarray) or vector.dtype != np.uint64 or vector.ndim != 1 \
            or not vector.flags.writeable or not vector.flags.c_contiguous:
        raise InvalidInput("masks are added in place only to a writable, contiguous uint64 vector")
    length = int(vector.size)
    seeds = _peer_seeds(kx_private, self_name, peer_keys, job_id, length, modulus, purpose)
    if not seeds or length == 0:
        return
    zeros = bytes(8 * length)
    for plus, seed in seeds:
        words = np.frombuffer(_keystream(seed).update(zeros), "<u8")
        if plus:
            vector += words
        else:
            vector -= words
    vector &= np.uint64(modulus - 1)
