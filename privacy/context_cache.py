"""Buyers' public HE contexts kept by digest, so a context crosses the wire once per contract, not once per job.

A buyer reuses one BFV key pair for the query jobs of a contract
(`fedtrust.buyer.keys`), so every job of the contract names the same context
digest in its signed spec. The coordinator and each node keep the bytes of a
context they have received, keyed by (contract digest, context digest); a
later job may then name the context by digest only (an empty context in the
request) and the daemon uses its copy, or answers `ContextNeeded` once and the
caller resends it.

Why this is safe: a copy is kept only after its SHA-256 equals the digest it
is filed under (`keep` checks it itself), and it is found only under the
digest the buyer signed in the job spec being served, so a caller can never
make a daemon use a context the buyer did not sign: sending none yields either
the very bytes the buyer signed or a refusal. Copies are filed per contract,
so one contract's jobs never use a context that arrived under another. The
bytes are public (the buyer's public key material); the cache is bounded in
entries and bytes, least recently used first out, and lives in memory only.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from fedtrust.errors import InvalidInput

__all__ = ["ContextCache"]


class ContextCache:
    def __init__(self, max_entries: int = 16, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def keep(self, contract_digest: str, context_digest: str, context: bytes) -> None:
        """File `context` under (contract, digest); InvalidInput unless its SHA-256 is that digest."""
        if hashlib.sha256(context).hexdigest() != context_digest:
            raise InvalidInput("HE context does not match the digest in the signed job spec; resend the buyer's context")
        data = bytes(context)
        if len(data) > self.max_bytes:
            return
        key = (contract_digest, context_digest)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = data
            self._size += len(data)
            while len(self._items) > self.max_entries or self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    def get(self, contract_digest: str, context_digest: str) -> bytes | None:
        """The kept copy of the context a job of this contract names, or None."""
        key = (contract_digest, context_digest)
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def __contains__(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._items
