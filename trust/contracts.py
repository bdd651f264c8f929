"""Contracts: buyer, coordinator, the owners' products and the rules nodes enforce.

The exchange issues and signs a contract; then the buyer and every owner add
their own signatures to the same DSSE envelope (`sign_as`): the e-contract the
two sides of a trade sign through the exchange. The digest (sha256 of the
payload) does not change as signatures are added. Each holding embeds the
owner's public credential and the product's own signed envelope, so a node
(or the exchange, later) re-verifies every product and its digest from the
contract alone. `verify_contract` checks the exchange's signature and every
structural rule; `contract_signatures` says which parties signed and
`require_signatures` refuses a contract a needed party has not signed; time
validity is checked separately with `Contract.check_valid_at`.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedtrust.errors import ConfigError, InvalidInput, PolicyViolation, VerificationError
from fedtrust.trust.canonical import Fields, parse_time, sha256_hex
from fedtrust.trust.clock import check_not_expired, check_started
from fedtrust.trust.credentials import SubjectCredential, signing_public_key
from fedtrust.trust.dsse import Envelope, Signer, signed_by, verify_object
from fedtrust.trust.products import Product, verify_product
from fedtrust.trust.rules import Rules
from fedtrust.trust.schema import Schema
from fedtrust.trust.vertical import check_vertical_products

__all__ = [
    "CONTRACT_TYPE", "Holding", "Contract", "check_price", "check_rules", "sign_contract",
    "verify_contract", "contract_envelope", "Party", "contract_signatures", "require_signatures", "sign_as",
    "MAX_PURPOSE_CHARS",
]

CONTRACT_TYPE = "https://fedtrust.dev/Contract/v1"
MAX_PURPOSE_CHARS = 2000
_PRICE = re.compile(r"(0|[1-9][0-9]{0,17})(\.[0-9]{1,8})?")


def check_price(price: str) -> str:
    """A non-negative decimal string such as `0`, `1200` or `99.50`."""
    if not isinstance(price, str) or not _PRICE.fullmatch(price):
        raise ConfigError(f"price {price!r} must be a non-negative decimal such as 0, 1200 or 99.50")
    return price


@dataclass(frozen=True)
class Holding:
    credential: SubjectCredential
    product: Product
    product_digest: str
    product_envelope: Envelope

    def to_dict(self) -> dict[str, Any]:
        return {
            "credential": self.credential.to_dict(),
            "product": self.product.to_dict(),
            "product_digest": self.product_digest,
            "product_envelope": self.product_envelope.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: object) -> Holding:
        f = Fields(d, "contract holding")
        return cls(
            SubjectCredential.from_dict(f.obj("credential")),
            Product.from_dict(f.obj("product")),
            f.digest("product_digest"),
            Envelope.from_dict(f.obj("product_envelope")),
        )

    @classmethod
    def of(cls, credential: SubjectCredential, product_envelope: Envelope, exchange_key: Ed25519PublicKey) -> Holding:
        return cls(credential, verify_product(product_envelope, exchange_key), product_envelope.digest, product_envelope)


@dataclass(frozen=True)
class Contract:
    contract_id: str
    buyer: SubjectCredential
    coordinator: SubjectCredential
    owners: tuple[Holding, ...]
    rules: Rules
    valid_from: str
    valid_until: str
    price: str
    issued_at: str
    #: what the buyer may use the results for (the e-contract's stated use)
    purpose: str = ""
    #: nodes refuse jobs while the newest revocation list they hold is older than this (None: no freshness rule)
    revocation_max_age_h: int | None = None
    #: the MPC dealer the owners agreed on (a `dealer` subject; neither buyer nor coordinator); None: no MPC jobs
    dealer: SubjectCredential | None = None

    @property
    def dataset(self) -> str:
        return self.owners[0].product.dataset

    @property
    def schema(self) -> Schema:
        return self.owners[0].product.schema

    @property
    def owner_names(self) -> tuple[str, ...]:
        return tuple(sorted(h.credential.name for h in self.owners))

    def holding(self, node_name: str) -> Holding:
        for h in self.owners:
            if h.credential.name == node_name:
                return h
        raise PolicyViolation(f"node {node_name} holds no product under this contract; send jobs to its owners only")

    def check_valid_at(self, when: datetime, skew: timedelta | None = None) -> None:
        """PolicyViolation outside the validity window; with `skew` (a daemon's clock tolerance) the window is
        widened by it and the message names both clocks."""
        if skew is not None:
            check_started(self.valid_from, "the contract", now=when, skew=skew)
            check_not_expired(self.valid_until, "the contract", "ask the exchange for a new contract", now=when,
                              skew=skew)
            return
        if when < parse_time(self.valid_from):
            raise PolicyViolation(f"contract is not valid before {self.valid_from}; wait until then")
        if when >= parse_time(self.valid_until):
            raise PolicyViolation(f"contract expired at {self.valid_until}; ask the exchange for a new contract")

    def to_dict(self) -> dict[str, Any]:
        d = self._fields()
        if self.dealer is not None:  # absent otherwise: contracts without MPC sign the same JSON as before
            d["dealer"] = self.dealer.to_dict()
        return d

    def _fields(self) -> dict[str, Any]:
        return {
            "contract_id": self.contract_id,
            "buyer": self.buyer.to_dict(),
            "coordinator": self.coordinator.to_dict(),
            "owners": [h.to_dict() for h in self.owners],
            "rules": self.rules.to_dict(),
            "valid_from": self.valid_from,
            "valid_until": self.valid_until,
            "price": self.price,
            "issued_at": self.issued_at,
            "purpose": self.purpose,
            "revocation_max_age_h": self.revocation_max_age_h,
        }

    @classmethod
    def from_dict(cls, d: object) -> Contract:
        f = Fields(d, "contract")
        try:
            price = check_price(f.text("price"))
            rules = Rules.from_dict(f.obj("rules"))
        except ConfigError as e:
            raise InvalidInput(f"contract: {e}") from None
        owners = f.items("owners")
        if not owners:
            raise InvalidInput("contract: field `owners` must list the owners' holdings")
        max_age = f.raw("revocation_max_age_h")
        if max_age is not None and (not isinstance(max_age, int) or isinstance(max_age, bool) or max_age < 1):
            raise InvalidInput("contract: revocation_max_age_h must be a positive whole number of hours or null")
        return cls(
            contract_id=f.text("contract_id"),
            buyer=SubjectCredential.from_dict(f.obj("buyer")),
            coordinator=SubjectCredential.from_dict(f.obj("coordinator")),
            owners=tuple(Holding.from_dict(h) for h in owners),
            rules=rules,
            valid_from=f.time("valid_from"),
            valid_until=f.time("valid_until"),
            price=price,
            issued_at=f.time("issued_at"),
            purpose=f.text("purpose"),
            revocation_max_age_h=max_age,
            dealer=SubjectCredential.from_dict(f.obj("dealer")) if f.d.get("dealer") is not None else None,
        )


def check_rules(rules: Rules, schema: Schema) -> None:
    """The rules may only name schema columns: aggregated ones numeric, group-by ones categories."""
    q = rules.query
    if rules.vertical is not None:
        return  # checked against every product by trust.vertical.check_vertical_products
    if q is None and rules.training is None:
        raise ConfigError("rules have neither [query] nor [training]; a contract must sell one of them")
    if q is not None:
        _check_query_rules(q, schema)
    if rules.training is not None:
        for name in rules.training.columns:
            if not schema.has(name):
                raise ConfigError(f"rules: training column {name!r} is not in the product schema; list schema columns only")
            if schema.column(name).type == "key":
                raise ConfigError(f"rules: training column {name!r} is a join key; keys are never trained on")


def _check_query_rules(q, schema: Schema) -> None:
    for name in (*q.columns, *q.filters, *q.group_by):
        if schema.has(name) and schema.column(name).type == "key":
            raise ConfigError(f"rules: column {name!r} is a join key; keys are never aggregated, filtered or grouped")
    for name in q.columns:
        if not schema.has(name):
            raise ConfigError(f"rules: aggregated column {name!r} is not in the product schema; list schema columns only")
        if not schema.column(name).numeric:
            raise ConfigError(f"rules: aggregated column {name!r} is a category; aggregate numeric columns only")
    for name in q.filters:
        if not schema.has(name):
            raise ConfigError(f"rules: filter column {name!r} is not in the product schema; list schema columns only")
    for name in q.group_by:
        if not schema.has(name):
            raise ConfigError(f"rules: group-by column {name!r} is not in the product schema; list schema columns only")
        if schema.column(name).type != "category":
            raise ConfigError(f"rules: group-by column {name!r} is numeric; group by category columns only")
    if any(a != "COUNT" for a in q.aggregates) and not q.columns:
        raise ConfigError("rules allow aggregates other than COUNT but list no aggregated `columns`; add them")


def sign_contract(contract: Contract, exchange_signer: Signer) -> Envelope:
    subjects = [(f"product:{h.credential.name}/{h.product.dataset}", h.product_digest) for h in contract.owners]
    return exchange_signer.sign_statement(CONTRACT_TYPE, contract.to_dict(), subjects)


#: contracts that verified, keyed by everything `verify_contract` reads (bounded)
_VERIFIED_LIMIT = 32
#: contract envelopes parsed, keyed by the sha256 of their bytes (bounded)
_parsed: "OrderedDict[str, Envelope]" = OrderedDict()


def contract_envelope(raw: bytes) -> Envelope:
    """`Envelope.from_json` of a contract's bytes, remembered by their sha256: every party parses the same
    contract (≈16 KB at 3 owners) on every job. An envelope is immutable; InvalidInput as `from_json`."""
    key = sha256_hex(bytes(raw))
    with _verified_lock:
        hit = _parsed.get(key)
        if hit is not None:
            _parsed.move_to_end(key)
            return hit
    env = Envelope.from_json(raw)
    with _verified_lock:
        _parsed[key] = env
        while len(_parsed) > _VERIFIED_LIMIT:
            _parsed.popitem(last=False)
    return env
_verified: "OrderedDict[tuple, Contract]" = OrderedDict()
_verified_lock = threading.Lock()


def verify_contract(envelope: Envelope, exchange_key: Ed25519PublicKey) -> Contract:
    """Exchange signature, then every rule of a well-formed contract (not its validity window).

    A pure function of the envelope (payload type, payload, every signature)
    and the exchange key, so a success is remembered under exactly those
    (every party checks the same contract on every job: 44 ms at 10 owners,
    quadratic in owners). Time-dependent checks (validity window, revocation,
    withdrawal) are the callers' and still run every time.
    """
    key = (
        envelope.payload_type, sha256_hex(envelope.payload),
        tuple((sig.keyid, sig.sig) for sig in envelope.signatures),
        exchange_key.public_bytes(Encoding.Raw, PublicFormat.Raw),
    )
    with _verified_lock:
        hit = _verified.get(key)
        if hit is not None:
            _verified.move_to_end(key)
            return hit
    c = _verify_contract(envelope, exchange_key)
    with _verified_lock:
        _verified[key] = c
        while len(_verified) > _VERIFIED_LIMIT:
            _verified.popitem(last=False)
    return c


def _verify_contract(envelope: Envelope, exchange_key: Ed25519PublicKey) -> Contract:
    c = verify_object(envelope, exchange_key, CONTRACT_TYPE, Contract.from_dict, "contract")
    if c.buyer.role != "buyer":
        raise VerificationError(f"contract's buyer credential has role {c.buyer.role}; the buyer must be a buyer subject")
    if c.coordinator.role != "coordinator":
        raise VerificationError(
            f"contract's coordinator credential has role {c.coordinator.role}; the coordinator must be a coordinator subject"
        )
    if c.buyer.name == c.coordinator.name:
        raise VerificationError("contract names the same subject as buyer and coordinator; they must be different subjects")
    names = [h.credential.name for h in c.owners]
    if c.dealer is not None and (c.dealer.role != "dealer" or c.dealer.name in (c.buyer.name, c.coordinator.name,
                                                                                  *names)):
        raise VerificationError("contract's MPC dealer must be a dealer subject other than the buyer, the coordinator "
                                "and the owners")
    if len(set(names)) != len(names):
        raise VerificationError("contract lists an owner twice; each owner holds exactly one product")
    if len(names) < 2:
        raise VerificationError("contract has fewer than two distinct owners; a federated contract needs at least two")
    for h in c.owners:
        if h.credential.role != "node":
            raise VerificationError(f"contract owner {h.credential.name} has role {h.credential.role}; owners must be nodes")
        if h.product.owner != h.credential.name:
            raise VerificationError(f"contract holding of {h.credential.name} embeds a product owned by {h.product.owner}")
        try:
            signed = verify_product(h.product_envelope, exchange_key)
        except VerificationError as e:
            raise VerificationError(f"product embedded for owner {h.credential.name} does not verify: {e}") from None
        if signed != h.product or h.product_envelope.digest != h.product_digest:
            raise VerificationError(
                f"product digest of owner {h.credential.name} does not match its signed product; the contract was altered"
            )
    first = c.owners[0].product
    if c.rules.vertical is not None:
        try:
            check_vertical_products(c.rules.vertical, [h.product for h in c.owners])
        except ConfigError as e:
            raise VerificationError(f"vertical contract: {e}") from None
    elif any(h.product.dataset != first.dataset for h in c.owners):
        raise VerificationError("contract products name different datasets; all products must be one dataset")
    if c.rules.vertical is None and any(h.product.schema != first.schema for h in c.owners):
        raise VerificationError("contract products have different schemas; all products must share one schema")
    if parse_time(c.valid_from) >= parse_time(c.valid_until):
        raise VerificationError("contract validity window is empty (valid_from is not before valid_until)")
    return c


@dataclass(frozen=True)
class Party:
    """One party whose signature a contract can carry; `credential` is None for the exchange."""

    label: str  # "exchange", "buyer analyst", "owner bank-a", "coordinator coord"
    uri: str | None
    credential: SubjectCredential | None


def parties(contract: Contract) -> list[Party]:
    """Everyone who signs: the exchange, the buyer, every owner (in name order), the coordinator."""
    out = [Party("exchange", None, None), Party(f"buyer {contract.buyer.name}", contract.buyer.uri, contract.buyer)]
    out += [Party(f"owner {h.credential.name}", h.credential.uri, h.credential)
            for h in sorted(contract.owners, key=lambda h: h.credential.name)]
    out.append(Party(f"coordinator {contract.coordinator.name}", contract.coordinator.uri, contract.coordinator))
    return out


def contract_signatures(envelope: Envelope, contract: Contract, exchange_key: Ed25519PublicKey | None) -> dict[str, bool]:
    """Party label -> whether the envelope carries its valid signature (`exchange` only when its key is given).

    Each party's key is the signing key of the credential embedded in the
    contract, so a renewed credential does not let a new key sign old contracts.
    """
    out: dict[str, bool] = {}
    for p in parties(contract):
        if p.credential is None:
            if exchange_key is not None:
                out[p.label] = signed_by(envelope, exchange_key)
        else:
            out[p.label] = signed_by(envelope, signing_public_key(p.credential))
    return out


#: (contract, parties) whose signatures verified, keyed by everything `require_signatures` reads (bounded)
_signed: "OrderedDict[tuple, None]" = OrderedDict()


def require_signatures(envelope: Envelope, contract: Contract, needed: Sequence[tuple[str, str]]) -> None:
    """VerificationError naming the first party among `needed` (role, name) that has not signed `envelope`
    (the exchange's signature is `verify_contract`'s job).

    Like `verify_contract`, a pure function of the envelope (payload type,
    payload, every signature) and the parties' keys, which the signed payload
    embeds; a success is remembered under exactly those, since every party
    checks the same contract's signatures on every job."""
    parties_needed = [(p, signing_public_key(p.credential)) for p in parties(contract)
                      if p.credential is not None and (p.credential.role, p.credential.name) in needed]
    key = (
        envelope.payload_type, sha256_hex(envelope.payload),
        tuple((sig.keyid, sig.sig) for sig in envelope.signatures),
        tuple(k.public_bytes(Encoding.Raw, PublicFormat.Raw) for _, k in parties_needed),
    )
    with _verified_lock:
        if key in _signed:
            _signed.move_to_end(key)
            return
    for p, public_key in parties_needed:
        if not signed_by(envelope, public_key):
            raise VerificationError(
                f"contract lacks the signature of {p.label} ({p.uri}); each party must sign it with "
                f"`fedtrust contract sign CONTRACT --credentials DIR` before jobs run under it"
            )
    with _verified_lock:
        _signed[key] = None
        while len(_signed) > _VERIFIED_LIMIT:
            _signed.popitem(last=False)


def sign_as(envelope: Envelope, contract: Contract, role: str, name: str, signer: Signer) -> Envelope:
    """Add the signature of party (role, name), whose credential the contract embeds, with `signer`."""
    for p in parties(contract):
        if p.credential is not None and (p.credential.role, p.credential.name) == (role, name):
            if signing_public_key(p.credential) != signer.public_key:
                raise ConfigError(
                    f"these credentials' signing key is not the one the contract names for {p.label}; sign with the "
                    "credentials the contract was issued for"
                )
            return signer.countersign(envelope)
    raise ConfigError(f"fedtrust://{role}/{name} is not a party to this contract; only its buyer, owners and "
                      "coordinator sign it")
