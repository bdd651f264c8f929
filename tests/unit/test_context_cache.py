"""The kept copies of buyers' public HE contexts: found only under the digest they hash to, per contract, bounded."""
from __future__ import annotations

import hashlib

import pytest

from fedtrust.errors import InvalidInput
from fedtrust.privacy.context_cache import ContextCache


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_context_is_kept_only_under_the_digest_it_hashes_to():
    cache = ContextCache()
    real, forged = b"buyer context" * 100, b"another context" * 100
    with pytest.raises(InvalidInput, match="does not match the digest in the signed job spec"):
        cache.keep("contract-a", digest(real), forged)
    assert cache.get("contract-a", digest(real)) is None
    cache.keep("contract-a", digest(real), real)
    assert cache.get("contract-a", digest(real)) == real


def test_a_copy_kept_under_one_contract_never_serves_another():
    cache = ContextCache()
    ctx = b"ctx" * 1000
    cache.keep("contract-a", digest(ctx), ctx)
    assert cache.get("contract-b", digest(ctx)) is None
    assert cache.get("contract-a", digest(b"other")) is None


def test_the_cache_is_bounded_in_entries_and_bytes_least_recently_used_first_out():
    cache = ContextCache(max_entries=2, max_bytes=10_000)
    a, b, c = (bytes([i]) * 3000 for i in range(3))
    cache.keep("k", digest(a), a)
    cache.keep("k", digest(b), b)
    assert cache.get("k", digest(a)) == a  # a is now the most recently used
    cache.keep("k", digest(c), c)
    assert cache.get("k", digest(b)) is None and cache.get("k", digest(a)) == a and cache.get("k", digest(c)) == c
    big = b"x" * 6000
    cache.keep("k", digest(big), big)  # 3000 + 3000 + 6000 > 10,000 bytes: the oldest go
    assert cache.get("k", digest(big)) == big
    assert sum(cache.get("k", digest(x)) is not None for x in (a, c)) <= 1
    huge = b"y" * 20_000  # larger than the whole cache: not kept, nothing evicted for it
    cache.keep("k", digest(huge), huge)
    assert cache.get("k", digest(huge)) is None and cache.get("k", digest(big)) == big
