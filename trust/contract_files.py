"""A contract file as its parties handle it: read, verify, add one's signature, summarise.

The domain side of `fedtrust contract sign|show`; the CLI only prints.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedtrust.errors import ConfigError, InvalidInput
from fedtrust.trust.contracts import Contract, contract_signatures, sign_as, verify_contract
from fedtrust.trust.credentials import Identity
from fedtrust.trust.dsse import Envelope

__all__ = ["read_contract", "sign_contract_file", "ContractSummary", "summarise"]


def read_contract(path: str | Path, exchange_key: Ed25519PublicKey) -> tuple[Contract, Envelope]:
    """The contract in `path`, verified under the exchange's key (ConfigError for a missing or garbled file)."""
    p = Path(path)
    try:
        env = Envelope.from_json(p.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"contract file {p} does not exist") from None
    except InvalidInput as e:
        raise ConfigError(f"contract file {p} is not a signed contract: {e}") from None
    return verify_contract(env, exchange_key), env


def _replace(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a reader sees the old or the new contract, never half of one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sign_contract_file(path: str | Path, identity: Identity, out: str | Path | None = None) -> tuple[Contract, Envelope]:
    """Add `identity`'s signature to the contract in `path` (written to `out`, default in place)."""
    contract, env = read_contract(path, identity.exchange_key)
    signed = sign_as(env, contract, identity.role, identity.name, identity.signer)
    target = Path(out) if out else Path(path)
    if out and target.exists():
        raise ConfigError(f"{target} already exists; choose a new output file or sign in place")
    _replace(target, signed.to_json())
    return contract, signed


@dataclass(frozen=True)
class ContractSummary:
    digest: str
    contract: Contract
    signatures: dict[str, bool]  # party label -> signed (exchange only when its key was given)

    @property
    def missing(self) -> list[str]:
        return [p for p, ok in self.signatures.items() if not ok and not p.startswith("coordinator ")]

    def to_dict(self) -> dict[str, Any]:
        c = self.contract
        return {
            "digest": self.digest, "contract_id": c.contract_id, "purpose": c.purpose, "price": c.price,
            "valid_from": c.valid_from, "valid_until": c.valid_until, "issued_at": c.issued_at,
            "revocation_max_age_h": c.revocation_max_age_h,
            "buyer": c.buyer.uri, "coordinator": c.coordinator.uri,
            "owners": [{"owner": h.credential.uri, "dataset": h.product.dataset, "product_digest": h.product_digest}
                       for h in c.owners],
            "rules": c.rules.to_dict(),
            "signatures": self.signatures, "missing": self.missing,
        }


def summarise(env: Envelope, contract: Contract, exchange_key: Ed25519PublicKey | None) -> ContractSummary:
    return ContractSummary(env.digest, contract, contract_signatures(env, contract, exchange_key))
