"""The buyer's BFV key pair per contract, made once and reused by the contract's query jobs.

Key generation (≈35 ms) and the public context (≈390 KB) are the same for every
job of a contract, so the buyer keeps one pair per contract under
`<credentials>/he-keys/<contract digest>/` (folder 0700, secret 0600) and an
in-process copy (bounded, keyed by credentials folder and contract digest, so a
pair never serves another contract or buyer).

Why reuse is safe: the key pair protects only the transport of releases to
this buyer, who may decrypt each of them anyway. What keeps one node's release
uniform is its pairwise mask, which is derived from the job digest and so is
fresh for every job; each ciphertext is bound to its job by the node's signed
attestation (the buyer checks the digest of every relayed ciphertext), so a
ciphertext from an earlier job of the contract cannot be replayed into a later one.
"""
from __future__ import annotations

import os
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

from fedtrust.errors import ConfigError
from fedtrust.privacy import he
from fedtrust.privacy.params import HeParams
from fedtrust.trust.canonical import sha256_hex

__all__ = ["contract_keys", "keys_dir"]

_CACHE_SIZE = 8
_cache: OrderedDict[tuple[str, str], he.BuyerKeys] = OrderedDict()
_lock = threading.Lock()


def keys_dir(credentials: Path, contract_digest: str) -> Path:
    if not contract_digest or not all(c in "0123456789abcdef" for c in contract_digest):
        raise ConfigError("a contract digest must be lowercase hex; name the contract by its digest")
    return Path(credentials) / "he-keys" / contract_digest


def _load(folder: Path) -> he.BuyerKeys | None:
    try:
        public = (folder / "he-public.bin").read_bytes()
        secret = (folder / "he-secret.bin").read_bytes()
    except FileNotFoundError:
        return None
    if not public or not secret:
        raise ConfigError(f"the saved HE key pair in {folder} is empty; delete the folder to make a new one")
    return he.BuyerKeys(public, secret, HeParams(context_digest=sha256_hex(public)))


def _save(folder: Path, keys: he.BuyerKeys) -> he.BuyerKeys:
    """Write the pair atomically; when another process saved one first, use that one."""
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = folder.parent / f".tmp-{secrets.token_hex(8)}"
    tmp.mkdir(mode=0o700)
    fd = os.open(tmp / "he-secret.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keys.secret_bytes)
    (tmp / "he-public.bin").write_bytes(keys.public_bytes)
    try:
        os.rename(tmp, folder)
    except OSError:  # someone else saved a pair for this contract first
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
        saved = _load(folder)
        if saved is None:
            raise ConfigError(f"cannot save the HE key pair in {folder}; check the folder's permissions") from None
        return saved
    return keys


def contract_keys(credentials: Path, contract_digest: str) -> he.BuyerKeys:
    """This buyer's key pair for the contract: cached, else saved, else generated and saved."""
    folder = keys_dir(credentials, contract_digest)
    key = (str(Path(credentials).resolve()), contract_digest)
    with _lock:
        keys = _cache.get(key)
        if keys is not None:
            _cache.move_to_end(key)
            return keys
    keys = _load(folder) or _save(folder, he.BuyerKeys.generate())
    with _lock:
        _cache[key] = keys
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return keys
