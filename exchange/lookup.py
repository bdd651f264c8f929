"""Finding things in the exchange's registry by the names people type: contract digests (or prefixes), listings.

A contract has one identifier everywhere: the digest of its signed payload
(what job specs, receipts, settlements and node ledgers name). People may
type any unique prefix of it, or give the contract file itself.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fedtrust.errors import ConfigError, InvalidInput, NotFound
from fedtrust.exchange.store import ExchangeStore
from fedtrust.trust.canonical import sha256_hex
from fedtrust.trust.contracts import Contract, verify_contract
from fedtrust.trust.credentials import verify_credential
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.products import verify_product

__all__ = ["MIN_PREFIX", "resolve_contract", "subjects", "products", "contracts"]

MIN_PREFIX = 6
_HEX = re.compile(r"[0-9a-f]{1,64}")


def resolve_contract(store: ExchangeStore, ref: str) -> str:
    """The digest of the contract `ref` names: a digest, a unique prefix of one (≥ 6 hex digits) or a contract file."""
    ref = ref.strip()
    p = Path(ref)
    if not _HEX.fullmatch(ref.lower()) and p.is_file():
        try:
            digest = Envelope.from_json(p.read_bytes()).digest
        except InvalidInput:
            raise ConfigError(f"{p} is not a contract file; pass the contract's digest or the file `exchange contract` wrote") from None
        store.get_contract(digest)  # NotFound unless this exchange issued it
        return digest
    ref = ref.lower()
    if not _HEX.fullmatch(ref):
        by_id = store.db.read().execute("SELECT digest FROM contracts WHERE contract_id = ?", (ref,)).fetchone()
        if by_id is not None:
            raise InvalidInput(f"{ref} is the contract's internal id; contracts are named by their digest: "
                               f"{by_id['digest']}")
        raise InvalidInput("a contract is named by its digest (hex, or a unique prefix of it) or its file")
    if len(ref) < MIN_PREFIX:
        raise InvalidInput(f"a contract digest prefix needs at least {MIN_PREFIX} hex digits")
    rows = store.db.read().execute(
        "SELECT digest FROM contracts WHERE substr(digest, 1, ?) = ? LIMIT 2", (len(ref), ref)).fetchall()
    if not rows:
        raise NotFound(f"no contract issued by this exchange has a digest starting {ref}; "
                       "`fedtrust exchange contracts DIR` lists them")
    if len(rows) > 1:
        raise InvalidInput(f"the prefix {ref} matches several contracts; type more digits")
    return rows[0]["digest"]


def subjects(store: ExchangeStore) -> list[dict[str, Any]]:
    rows = store.db.read().execute("SELECT digest, envelope FROM subjects ORDER BY role, name").fetchall()
    out = []
    for r in rows:
        c = verify_credential(Envelope.from_json(r["envelope"]), store.exchange_key)
        out.append({"role": c.role, "name": c.name, "uri": c.uri, "address": c.address, "issued_at": c.issued_at,
                    "digest": r["digest"]})
    return out


def products(store: ExchangeStore) -> list[dict[str, Any]]:
    rows = store.db.read().execute("SELECT digest, envelope FROM products ORDER BY owner, dataset").fetchall()
    out = []
    for r in rows:
        p = verify_product(Envelope.from_json(r["envelope"]), store.exchange_key)
        out.append({"digest": r["digest"], "owner": p.owner, "dataset": p.dataset,
                    "columns": [c.name for c in p.schema.columns], "commitment": p.commitment,
                    "issued_at": p.issued_at})
    return out


def contract_summary(contract: Contract, digest: str) -> dict[str, Any]:
    return {"digest": digest, "buyer": contract.buyer.name, "coordinator": contract.coordinator.name,
            "owners": [h.credential.name for h in contract.owners], "price": contract.price,
            "valid_from": contract.valid_from, "valid_until": contract.valid_until}


def contracts(store: ExchangeStore) -> list[dict[str, Any]]:
    rows = store.db.read().execute("SELECT digest, envelope FROM contracts ORDER BY issued_at, digest").fetchall()
    out = []
    for r in rows:
        env = Envelope.from_json(r["envelope"])
        if sha256_hex(env.payload) != r["digest"]:
            raise InvalidInput("a contract row does not match its digest; the registry file was altered")
        out.append(contract_summary(verify_contract(env, store.exchange_key), r["digest"]))
    return out
