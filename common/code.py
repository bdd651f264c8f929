"""Digest of the fedtrust code that runs here, named in every attestation.

A receipt cannot prove a node computed honestly; it proves which software
the node says it ran. The digest covers every Python source file of the
installed fedtrust packages (paths relative to the package, sorted).
"""
from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

PACKAGES = ("fedtrust", "fedtrust.trust", "fedtrust.privacy", "fedtrust.query", "fedtrust.transport",
            "fedtrust.node", "fedtrust.coordinator", "fedtrust.exchange", "fedtrust.buyer", "fedtrust.training", "fedtrust.demo", "fedtrust.v1")


@lru_cache(maxsize=1)
def code_digest() -> str:
    h = hashlib.sha256()
    for pkg in PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        for f in sorted(root.glob("*.py")):
            h.update(f"{pkg}/{f.name}\0".encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()
