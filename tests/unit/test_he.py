"""fedtrust.privacy.he: exact masked aggregation, context and ciphertext checks, collusion view."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy.stats import chi2

from fedtrust.errors import InvalidInput
from fedtrust.privacy import he
from fedtrust.privacy.masking import add_mod, pairwise_mask
from fedtrust.privacy.params import PLAIN_MODULUS as T
from fedtrust.privacy.params import SLOTS, HeParams

NAMES = ["node-a", "node-b", "node-c"]


@pytest.fixture(scope="module")
def buyer() -> he.BuyerKeys:
    return he.BuyerKeys.generate()


@pytest.fixture(scope="module")
def kx() -> dict[str, X25519PrivateKey]:
    return {n: X25519PrivateKey.generate() for n in NAMES}


def mask_of(kx, name: str, length: int, job: str = "job-1") -> np.ndarray:
    peers = {m: kx[m].public_key() for m in NAMES if m != name}
    return pairwise_mask(kx[name], name, peers, job, length, T)


def public_of(ctx: ts.Context) -> bytes:
    return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def params_for(blob: bytes) -> HeParams:
    return HeParams(context_digest=hashlib.sha256(blob).hexdigest())


def test_generate(buyer) -> None:
    assert buyer.params.plain_modulus == T
    assert buyer.params.context_digest == hashlib.sha256(buyer.public_bytes).hexdigest()
    assert len(buyer.public_bytes) < he.MAX_CONTEXT_BYTES
    assert "secret=<hidden>" in repr(buyer)
    again = he.BuyerKeys.from_bytes(buyer.public_bytes, buyer.secret_bytes)
    assert again.params == buyer.params


def test_the_buyers_smaller_modulus_still_sums_many_parties_exactly(buyer) -> None:
    """Three 60-bit primes (a 120-bit ciphertext level): ~260 KB ciphertexts, and 64 parties' t − 1 sum exactly."""
    seal = ts.context_from(buyer.public_bytes).seal_context().data
    assert seal.key_context_data().total_coeff_modulus_bit_count() == 180
    assert seal.first_context_data().total_coeff_modulus_bit_count() == 120
    (ct,) = he.encrypt_isolated(buyer.public_bytes, buyer.params, [T - 1] * SLOTS)
    assert len(ct) < 300_000
    (total,) = he.add_isolated(buyer.public_bytes, buyer.params, [[ct]] * 64, SLOTS)
    assert he.decrypt(buyer.secret_bytes, [total]) == [64 * (T - 1) % T] * SLOTS


def test_a_context_with_seals_default_modulus_is_still_served() -> None:
    """Buyers whose saved key pair predates the smaller modulus keep working (nodes accept up to 218 bits)."""
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=T)
    blob = public_of(ctx)
    (ct,) = he.encrypt_isolated(blob, params_for(blob), [5] * 10)
    assert ts.bfv_vector_from(ctx, ct).decrypt()[:10] == [5] * 10


def test_ciphertext_count() -> None:
    assert he.ciphertext_count(1) == 1
    assert he.ciphertext_count(SLOTS) == 1
    assert he.ciphertext_count(SLOTS + 1) == 2
    with pytest.raises(InvalidInput):
        he.ciphertext_count(0)


def test_three_masked_nodes_sum_exactly(buyer, kx) -> None:
    length = SLOTS + 100  # two ciphertexts, the second partly filled
    rng = np.random.default_rng(1)
    data = {n: rng.integers(0, 1 << 40, size=length, dtype=np.uint64) for n in NAMES}
    data["node-c"][:3] = [0, T - 1, T - 2]  # values near t wrap correctly
    released = {}
    for n in NAMES:
        masked = add_mod(data[n], mask_of(kx, n, length), T)
        released[n] = he.encrypt_isolated(buyer.public_bytes, buyer.params, masked)
        assert len(released[n]) == 2
        assert all(len(c) <= he.MAX_CIPHERTEXT_BYTES for c in released[n])
    summed = he.add_isolated(buyer.public_bytes, buyer.params, [released[n] for n in NAMES], length=length)
    result = he.decrypt(buyer.secret_bytes, summed, length)
    expected = [(int(a) + int(b) + int(c)) % T for a, b, c in zip(data["node-a"], data["node-b"], data["node-c"])]
    assert result == expected
    # without the length, all slots of all ciphertexts come back
    assert he.decrypt(buyer.secret_bytes, summed)[:length] == expected


def test_collusion_sees_uniform_noise(buyer, kx) -> None:
    """Buyer + coordinator decrypt one node's release: uniform, whatever the node's data."""
    length = 2 * SLOTS
    for true_value in (0, 7):
        masked = add_mod(np.full(length, true_value, dtype=np.uint64), mask_of(kx, "node-b", length, "job-c"), T)
        release = he.encrypt_isolated(buyer.public_bytes, buyer.params, masked)
        seen = np.array(he.decrypt(buyer.secret_bytes, release, length), dtype=np.uint64)
        buckets = (seen.astype(object) * 16 // T).astype(np.int64)
        counts = np.bincount(buckets, minlength=16)
        e = length / 16
        stat = float(((counts - e) ** 2 / e).sum())
        assert chi2.sf(stat, 15) > 1e-4
        u = seen.astype(np.float64) / T
        assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / length)
        assert abs(u.var() - 1 / 12) < 5 * 0.000824 * np.sqrt(8192 / length)
    # control: without masks the same test sees the data
    plain = he.encrypt_isolated(buyer.public_bytes, buyer.params, [0] * SLOTS)
    counts = np.bincount(np.array(he.decrypt(buyer.secret_bytes, plain)) * 16 // T, minlength=16)
    assert chi2.sf(float(((counts - SLOTS / 16) ** 2 / (SLOTS / 16)).sum()), 15) < 1e-4


def test_context_with_secret_key_is_refused(buyer) -> None:
    params = params_for(buyer.secret_bytes)
    with pytest.raises(InvalidInput, match="contains a secret key"):
        he.encrypt_isolated(buyer.secret_bytes, params, [1, 2, 3])


def test_context_with_other_plain_modulus_is_refused() -> None:
    other = public_of(ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=1032193))
    with pytest.raises(InvalidInput, match="plain modulus differs"):
        he.encrypt_isolated(other, params_for(other), [1, 2, 3])
    with pytest.raises(InvalidInput, match="plain modulus differs"):
        he.add_isolated(other, params_for(other), [[b"x"]])


def test_context_with_other_degree_or_scheme_is_refused() -> None:
    small = public_of(ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=4096, plain_modulus=1032193))
    with pytest.raises(InvalidInput, match="degree differs"):
        he.encrypt_isolated(small, params_for(small), [1])
    ckks = public_of(ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60]))
    with pytest.raises(InvalidInput, match="not a BFV context"):
        he.encrypt_isolated(ckks, params_for(ckks), [1])


def test_params_claiming_other_modulus_are_refused(buyer) -> None:
    bad = HeParams(context_digest=buyer.params.context_digest, plain_modulus=1032193)
    with pytest.raises(InvalidInput, match="not supported"):
        he.encrypt_isolated(buyer.public_bytes, bad, [1])


def test_context_digest_mismatch_is_refused(buyer) -> None:
    other = he.BuyerKeys.generate()
    with pytest.raises(InvalidInput, match="does not match the digest"):
        he.encrypt_isolated(other.public_bytes, buyer.params, [1])


def test_garbage_context_is_refused_and_process_survives() -> None:
    for blob in (b"", os.urandom(1000), b"\x0a\xff\xff\xff\xff\x0f" + os.urandom(4000)):
        with pytest.raises(InvalidInput, match="rejected"):
            he.encrypt_isolated(blob, params_for(blob), [1])
        with pytest.raises(InvalidInput, match="rejected"):
            he.add_isolated(blob, params_for(blob), [[b"x"], [b"y"]])
    big = b"\x00" * (he.MAX_CONTEXT_BYTES + 1)
    with pytest.raises(InvalidInput, match="larger than"):
        he.encrypt_isolated(big, params_for(big), [1])


def test_vector_values_must_be_reduced(buyer) -> None:
    for bad in ([T], [-1], [1.5], [], [[1, 2]], ["1"], [True]):
        with pytest.raises(InvalidInput):
            he.encrypt_isolated(buyer.public_bytes, buyer.params, bad)
    with pytest.raises(InvalidInput):
        he.encrypt_isolated(buyer.public_bytes, buyer.params, np.array([T], dtype=np.uint64))


def test_garbage_ciphertexts_are_refused(buyer) -> None:
    good = he.encrypt_isolated(buyer.public_bytes, buyer.params, list(range(100)))
    other_size = he.encrypt_isolated(buyer.public_bytes, buyer.params, list(range(50)))
    pub, params = buyer.public_bytes, buyer.params
    # TenSEAL trusts the serialized slot count (field 1); claim far more slots than exist
    assert good[0][:3] == b"\x0a\x01\x64"
    forged_size = b"\x08\xa0\x8d\x06" + good[0][3:]
    cases = {
        "does not parse": [good, [os.urandom(5000)]],
        "exactly one ciphertext": [good, [b"\x08\x05"]],  # size 5, no ciphertext
        "slot count outside": [good, [forged_size]],
        "different number of slots": [good, other_size],
        "different number of ciphertexts": [good, good + good],
        "sent no ciphertexts": [good, []],
        "larger than": [good, [b"\x01" * (he.MAX_CIPHERTEXT_BYTES + 1)]],
        "does not parse as a BFV": [good, [good[0][: len(good[0]) // 2]]],
    }
    for message, per_party in cases.items():
        with pytest.raises(InvalidInput, match=message):
            he.add_isolated(pub, params, per_party)
    with pytest.raises(InvalidInput, match="does not fit"):
        he.add_isolated(pub, params, [good, good], length=SLOTS + 1)
    with pytest.raises(InvalidInput, match="different number of slots"):
        he.add_isolated(pub, params, [good, good], length=99)
    # the buyer's decrypt checks too
    with pytest.raises(InvalidInput, match="does not parse"):
        he.decrypt(buyer.secret_bytes, [os.urandom(3000)])
    with pytest.raises(InvalidInput, match="slot count outside"):
        he.decrypt(buyer.secret_bytes, [forged_size])
    with pytest.raises(InvalidInput, match="no secret key"):
        he.decrypt(buyer.public_bytes, good)
    # and the happy path still works afterwards
    assert he.decrypt(buyer.secret_bytes, he.add_isolated(pub, params, [good, good]), 100) == [2 * i for i in range(100)]


def test_the_buyers_adder_sums_what_arrived_once_it_is_the_verified_input(buyer) -> None:
    """he.Adder adds each release as it arrives, in a worker that parsed the buyer's context ahead of time; its sum
    is used only for exactly the verified ciphertexts, else they are added again (same result, same refusals)."""
    length = SLOTS + 7
    releases = [he.encrypt_isolated(buyer.public_bytes, buyer.params, [i + 1] * length) for i in range(3)]
    expected = [6] * length
    adder = he.start_add(buyer.public_bytes, buyer.params, ("contract-1",), length, 3)
    try:
        for cts in reversed(releases):  # arrival order is not the participants' order
            adder.feed(cts)
        assert he.decrypt(buyer.secret_bytes, adder.total([list(r) for r in releases]), length) == expected
    finally:
        adder.close()
    # what was verified differs from what arrived (a release swapped for another job's): the verified ones count
    other = he.encrypt_isolated(buyer.public_bytes, buyer.params, [100] * length)
    adder = he.start_add(buyer.public_bytes, buyer.params, ("contract-1",), length, 3)
    try:
        for cts in releases:
            adder.feed(cts)
        total = adder.total([list(releases[0]), list(releases[1]), list(other)])
        assert he.decrypt(buyer.secret_bytes, total, length) == [103] * length
    finally:
        adder.close()


def test_the_buyers_adder_refuses_a_malformed_release_as_add_isolated_does(buyer) -> None:
    good = he.encrypt_isolated(buyer.public_bytes, buyer.params, [1] * 10)
    bad = [good[0][:1000] + bytes(len(good[0]) - 1000)]  # right size, garbage body
    with pytest.raises(InvalidInput) as plain:
        he.add_isolated(buyer.public_bytes, buyer.params, [good, bad], 10)
    adder = he.start_add(buyer.public_bytes, buyer.params, ("contract-2",), 10, 2)
    try:
        adder.feed(good)
        adder.feed(bad)
        with pytest.raises(InvalidInput) as fed:
            adder.total([good, bad])
    finally:
        adder.close()
    assert str(fed.value) == str(plain.value) and "party 1" in str(fed.value)


def test_a_remembered_context_digest_never_vouches_for_other_bytes(buyer) -> None:
    """Contexts checked before are not hashed again (a node's kept copy): only for that very immutable object."""
    he._check_public_args(buyer.public_bytes, buyer.params)  # remembered
    he._check_public_args(buyer.public_bytes, buyer.params)
    altered = bytearray(buyer.public_bytes)
    he._check_public_args(altered, buyer.params)  # a mutable copy is hashed every time
    altered[-1] ^= 1
    with pytest.raises(InvalidInput, match="does not match the digest"):
        he._check_public_args(altered, buyer.params)
    with pytest.raises(InvalidInput, match="does not match the digest"):
        he._check_public_args(bytes(altered), buyer.params)
