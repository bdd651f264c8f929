"""fedtrust.privacy.masking: pairwise masks cancel, are uniform, and are bound to job and purpose."""
from __future__ import annotations

import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from scipy.stats import chi2

from fedtrust.errors import InvalidInput
from fedtrust.privacy.masking import add_mod, mask_stream, pairwise_mask, sub_mod, training_purpose
from fedtrust.privacy.params import PLAIN_MODULUS as T

NAMES = ["insurer-a", "insurer-b", "hospital-c"]


@pytest.fixture(scope="module")
def keys() -> dict[str, X25519PrivateKey]:
    return {n: X25519PrivateKey.generate() for n in NAMES}


def masks_for(keys, job_id: str, length: int, modulus: int = T, purpose: bytes = b"query", names=NAMES):
    pubs = {n: keys[n].public_key() for n in names}
    return {
        n: pairwise_mask(keys[n], n, {m: pubs[m] for m in names if m != n}, job_id, length, modulus, purpose)
        for n in names
    }


def total(vectors, modulus: int = T) -> np.ndarray:
    acc = np.zeros_like(next(iter(vectors)))
    for v in vectors:
        acc = add_mod(acc, v, modulus)
    return acc


def test_three_masks_cancel(keys) -> None:
    masks = masks_for(keys, "job-1", 20000)
    for m in masks.values():
        assert m.dtype == np.uint64 and m.shape == (20000,)
        assert int(m.max()) < T
    assert not total(masks.values()).any()
    # a partial sum does not cancel
    assert total([masks["insurer-a"], masks["insurer-b"]]).any()


def test_masks_cancel_for_small_modulus_with_heavy_rejection(keys) -> None:
    modulus = (1 << 40) + 15  # bit length 41: about half of all words are rejected
    masks = masks_for(keys, "job-1", 5000, modulus=modulus)
    for m in masks.values():
        assert int(m.max()) < modulus
    assert not total(masks.values(), modulus).any()


def test_pair_agrees_and_is_deterministic(keys) -> None:
    a, b = keys["insurer-a"], keys["insurer-b"]
    ma = pairwise_mask(a, "insurer-a", {"insurer-b": b.public_key()}, "job-7", 1000, T)
    mb = pairwise_mask(b, "insurer-b", {"insurer-a": a.public_key()}, "job-7", 1000, T)
    assert not add_mod(ma, mb, T).any()
    again = pairwise_mask(a, "insurer-a", {"insurer-b": b.public_key()}, "job-7", 1000, T)
    assert np.array_equal(ma, again)
    # a longer mask starts with the shorter one (the stream is consumed in order)
    longer = pairwise_mask(a, "insurer-a", {"insurer-b": b.public_key()}, "job-7", 3000, T)
    assert np.array_equal(longer[:1000], ma)


def test_job_purpose_and_participants_change_the_mask(keys) -> None:
    base = masks_for(keys, "job-1", 256)["insurer-a"]
    assert not np.array_equal(base, masks_for(keys, "job-2", 256)["insurer-a"])
    r0 = masks_for(keys, "job-1", 256, purpose=training_purpose(0))
    r1 = masks_for(keys, "job-1", 256, purpose=training_purpose(1))
    assert not np.array_equal(base, r0["insurer-a"])
    assert not np.array_equal(r0["insurer-a"], r1["insurer-a"])
    assert not total(r1.values()).any()
    two = masks_for(keys, "job-1", 256, names=NAMES[:2])["insurer-a"]
    assert not np.array_equal(base, two)


def test_masks_look_uniform(keys) -> None:
    m = masks_for(keys, "job-u", 16384)["hospital-c"]
    counts = np.bincount((m // np.uint64(-(-T // 16))).astype(np.int64), minlength=16)
    expected = m.size / 16
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert chi2.sf(stat, 15) > 1e-4
    u = m.astype(np.float64) / T
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / u.size)
    assert abs(u.var() - 1 / 12) < 5 * 0.000824 * np.sqrt(8192 / u.size)


def test_mask_stream_rejects_instead_of_reducing() -> None:
    # modulus just above a power of two: plain reduction of 64-bit words would
    # skew towards small residues; rejection keeps the top half as likely.
    modulus = (1 << 20) + 1
    v = mask_stream(b"\x01" * 32, 200000, modulus)
    assert int(v.max()) < modulus
    low = np.count_nonzero(v < modulus // 2)
    assert abs(low / v.size - 0.5) < 0.01


def test_add_and_sub_mod() -> None:
    a = np.array([0, 1, T - 1, T - 2], dtype=np.uint64)
    b = np.array([T - 1, T - 1, T - 1, 5], dtype=np.uint64)
    assert add_mod(a, b, T).tolist() == [T - 1, 0, T - 2, 3]
    assert sub_mod(a, b, T).tolist() == [1, 2, 0, T - 7]
    assert add_mod(sub_mod(a, b, T), b, T).tolist() == a.tolist()


def test_no_peers_gives_zero_mask(keys) -> None:
    m = pairwise_mask(keys["insurer-a"], "insurer-a", {}, "job-1", 10, T)
    assert not m.any()


def test_bad_inputs_are_refused(keys) -> None:
    a = keys["insurer-a"]
    peers = {"insurer-b": keys["insurer-b"].public_key()}
    with pytest.raises(InvalidInput, match="must not include this participant"):
        pairwise_mask(a, "insurer-a", {**peers, "insurer-a": a.public_key()}, "j", 4, T)
    with pytest.raises(InvalidInput, match="must not contain"):
        pairwise_mask(a, "insurer,a", peers, "j", 4, T)
    with pytest.raises(InvalidInput, match="must not contain"):
        pairwise_mask(a, "insurer-a", peers, "j|x", 4, T)
    with pytest.raises(InvalidInput, match="purpose"):
        pairwise_mask(a, "insurer-a", peers, "j", 4, T, purpose=b"a|b")
    with pytest.raises(InvalidInput, match="modulus"):
        pairwise_mask(a, "insurer-a", peers, "j", 4, 1 << 64)
    with pytest.raises(InvalidInput, match="length"):
        pairwise_mask(a, "insurer-a", peers, "j", -1, T)
    low_order = X25519PublicKey.from_public_bytes(b"\x00" * 32)
    with pytest.raises(InvalidInput, match="low order"):
        pairwise_mask(a, "insurer-a", {"evil": low_order}, "j", 4, T)


def test_a_million_slots_is_fast(keys) -> None:
    pubs = {n: keys[n].public_key() for n in NAMES[1:]}
    start = time.perf_counter()
    m = pairwise_mask(keys["insurer-a"], "insurer-a", pubs, "job-big", 1_000_000, T)
    elapsed = time.perf_counter() - start
    assert m.shape == (1_000_000,)
    assert elapsed < 1.0, f"1M-slot mask took {elapsed:.2f} s"


def test_masks_added_in_place_are_bit_for_bit_the_modular_sum(keys) -> None:
    """add_pairwise_mask (one pass per peer, reduced once) equals vector + pairwise_mask mod 2^63, and masks cancel."""
    from fedtrust.privacy.masking import add_pairwise_mask

    modulus, length = 1 << 63, 50_003
    pubs = {n: keys[n].public_key() for n in NAMES}
    rng = np.random.default_rng(7)
    vectors = {n: rng.integers(0, 1 << 63, length, dtype=np.uint64) for n in NAMES}
    vectors["insurer-a"][:3] = [0, modulus - 1, 1]  # the edges of the range
    masked = {}
    for n in NAMES:
        peers = {m: pubs[m] for m in NAMES if m != n}
        want = add_mod(vectors[n], pairwise_mask(keys[n], n, peers, "job-9", length, modulus, b"train/round/2"), modulus)
        got = vectors[n].copy()
        add_pairwise_mask(got, keys[n], n, peers, "job-9", modulus, b"train/round/2")
        assert np.array_equal(got, want)
        masked[n] = got
    assert np.array_equal(total(masked.values(), modulus), total(vectors.values(), modulus))
    with pytest.raises(InvalidInput, match="power-of-two"):
        add_pairwise_mask(vectors["insurer-a"].copy(), keys["insurer-a"], "insurer-a", {}, "j", T, b"query")
    with pytest.raises(InvalidInput, match="writable, contiguous uint64"):
        add_pairwise_mask(vectors["insurer-a"][::2], keys["insurer-a"], "insurer-a", {}, "j", modulus, b"query")
