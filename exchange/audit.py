"""Offline audits of the exchange's log: `fedtrust audit checkpoint|inclusion|consistency|settlement`.

An auditor holds files (checkpoints, proofs, receipts, settlements) and the
exchange's public key, and nothing else: no database, no network. Each
function here reads those bytes, verifies them, and returns what was proved
as a plain dict (for `--json`), or raises VerificationError / InvalidInput
naming what failed. Everything is checked against the key the auditor
brought, never against a key or origin a file names for itself; inputs are
parsed strictly (canonical base64, exact fields, canonical PEM), so a file
that differs by one bit from what the exchange wrote is refused rather than
read as the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedtrust.errors import ConfigError, InvalidInput, VerificationError
from fedtrust.exchange.receipt_log import (
    Checkpoint,
    ConsistencyProof,
    InclusionProof,
    check_consistency,
    check_inclusion,
    receipt_leaf_hash,
    verify_checkpoint,
    verify_settlement,
)
from fedtrust.exchange.verify import JOB_KINDS
from fedtrust.trust.credentials import load_exchange_key, public_key_pem
from fedtrust.trust.dsse import Envelope, load_json
from fedtrust.trust.note import parse_verifier_key
from fedtrust.trust.receipts import ReceiptBundle
from fedtrust.trust.verify import verify_bundle

__all__ = ["ExchangeKey", "load_key", "audit_checkpoint", "audit_inclusion", "audit_consistency", "audit_settlement"]

MAX_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ExchangeKey:
    """The exchange's public key, with its log origin when the auditor was given a verifier key."""

    public_key: Ed25519PublicKey
    origin: str | None = None


def _read(path: str | Path, what: str) -> bytes:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise InvalidInput(f"{what} {p} is larger than {MAX_FILE_BYTES} bytes")
        return p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {p}: {e.strerror or e}") from None


def load_key(spec: str) -> ExchangeKey:
    """`spec`: the exchange's `exchange.pub` (PEM), a file holding its verifier key, or the verifier key itself.

    A PEM file must be exactly what the exchange wrote (re-encoding it gives
    the same text), so a changed bit is refused even where PEM's base64 would
    ignore it.
    """
    p = Path(spec)
    if "+" in spec and not p.exists():
        name, key = parse_verifier_key(spec)
        return ExchangeKey(key, name)
    data = _read(p, "exchange key file")
    if data.lstrip().startswith(b"-----BEGIN"):
        key = load_exchange_key(data, str(p))
        if data.rstrip(b"\r\n") != public_key_pem(key).rstrip(b"\n"):
            raise InvalidInput(f"{p} is not the PEM public key the exchange wrote (it is not canonically encoded); "
                               "copy exchange.pub again")
        return ExchangeKey(key)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInput(f"{p} holds neither a PEM public key nor a verifier key") from None
    if text.rstrip("\r\n") != text.strip():
        raise InvalidInput(f"{p} holds a verifier key with stray characters around it; copy it again")
    name, key = parse_verifier_key(text.rstrip("\r\n"))
    return ExchangeKey(key, name)


def _doc_or_note(data: bytes, what: str) -> tuple[dict[str, Any] | None, bytes]:
    """A file is either a C2SP note or the JSON `fedtrust exchange log --out` writes (with "checkpoint")."""
    if data[:1] == b"{":
        doc = load_json(data, what)
        if not isinstance(doc, dict) or not isinstance(doc.get("checkpoint"), str):
            raise InvalidInput(f"{what} is JSON without a `checkpoint` note; pass the file `exchange log --out` wrote")
        if not set(doc) <= {"checkpoint", "inclusion", "consistency", "verifier_key"}:
            raise InvalidInput(f"{what} has fields other than checkpoint, inclusion, consistency and verifier_key")
        return doc, doc["checkpoint"].encode("utf-8")
    return None, data


def _checkpoint(data: bytes, key: ExchangeKey, what: str) -> tuple[dict[str, Any] | None, Checkpoint]:
    doc, note = _doc_or_note(data, what)
    if doc is not None and "verifier_key" in doc:
        if not isinstance(doc["verifier_key"], str):
            raise InvalidInput(f"{what}: verifier_key must be a string")
        name, vk = parse_verifier_key(doc["verifier_key"])  # informational; never trusted over the auditor's key
        if vk != key.public_key or (key.origin is not None and name != key.origin):
            raise VerificationError(f"{what} names another exchange's key than the one given")
    return doc, verify_checkpoint(note, key.public_key, key.origin)


def _cp_dict(cp: Checkpoint) -> dict[str, Any]:
    return {"origin": cp.origin, "size": cp.size, "root": cp.root.hex()}


def audit_checkpoint(checkpoint_file: str | Path, key: ExchangeKey) -> dict[str, Any]:
    """The checkpoint is signed by the exchange's key under its origin."""
    _, cp = _checkpoint(_read(checkpoint_file, "checkpoint"), key, "checkpoint")
    return {"valid": True, "checkpoint": _cp_dict(cp)}


def _proof_part(doc: dict[str, Any] | None, proof_file: str | Path | None, field: str, what: str) -> object:
    if proof_file is not None:
        pdoc = load_json(_read(proof_file, what), what)
        if isinstance(pdoc, dict) and field in pdoc and "checkpoint" in pdoc:
            return pdoc[field]
        return pdoc
    if doc is None or field not in doc:
        raise ConfigError(f"no {what} given: pass --proof, or the file `fedtrust exchange log --out` wrote with it")
    return doc[field]


def audit_inclusion(checkpoint_file: str | Path, key: ExchangeKey, *, proof_file: str | Path | None = None,
                    receipt_file: str | Path | None = None) -> dict[str, Any]:
    """An entry is in the log the signed checkpoint pins; with a receipt, that entry is this receipt."""
    doc, cp = _checkpoint(_read(checkpoint_file, "checkpoint"), key, "checkpoint")
    proof = InclusionProof.from_dict(_proof_part(doc, proof_file, "inclusion", "inclusion proof"))
    out: dict[str, Any] = {"valid": True, "checkpoint": _cp_dict(cp), "index": proof.index}
    leaf = None
    if receipt_file is not None:
        bundle = ReceiptBundle.from_json(_read(receipt_file, "receipt"))
        v = verify_bundle(bundle, key.public_key, JOB_KINDS, require_acknowledgement=True)
        leaf = receipt_leaf_hash(v.job.job_id, v.contract_digest, bundle.digest)
        out.update(job_id=v.job.job_id, contract_digest=v.contract_digest, receipt_digest=bundle.digest)
    check_inclusion(proof, cp, leaf)
    out["receipt_checked"] = leaf is not None
    return out


def audit_consistency(old_file: str | Path, new_file: str | Path, key: ExchangeKey, *,
                      proof_file: str | Path | None = None) -> dict[str, Any]:
    """The log of the old checkpoint is a prefix of the log of the new one: nothing logged was changed."""
    _, old = _checkpoint(_read(old_file, "old checkpoint"), key, "old checkpoint")
    doc, new = _checkpoint(_read(new_file, "new checkpoint"), key, "new checkpoint")
    if old.origin != new.origin:
        raise VerificationError(f"the checkpoints are of two logs ({old.origin}, {new.origin}); compare one log's")
    proof = ConsistencyProof.from_dict(_proof_part(doc, proof_file, "consistency", "consistency proof"))
    check_consistency(old, new, proof)
    return {"valid": True, "old": _cp_dict(old), "new": _cp_dict(new)}


def audit_settlement(settlement_file: str | Path, key: ExchangeKey, *, checkpoint_file: str | Path | None = None,
                     proof_file: str | Path | None = None) -> dict[str, Any]:
    """The settlement is signed by the exchange; with a checkpoint, its log root is the checkpoint's log.

    Same size: the roots must be equal. A later checkpoint needs the
    consistency proof from the settlement's size (`exchange log --from-size`).
    """
    env = Envelope.from_json(_read(settlement_file, "settlement"))
    p = verify_settlement(env, key.public_key, key.origin)
    out: dict[str, Any] = {"valid": True, "settlement": p, "log_checked": False}
    if checkpoint_file is not None:
        doc, cp = _checkpoint(_read(checkpoint_file, "checkpoint"), key, "checkpoint")
        if cp.origin != p["origin"]:
            raise VerificationError(f"the settlement is of log {p['origin']}, the checkpoint of {cp.origin}")
        root = bytes.fromhex(p["log_root"])
        if cp.size == p["log_size"]:
            if cp.root != root:
                raise VerificationError("the settlement's log root differs from the signed checkpoint's at the same "
                                        "size: the exchange signed two different logs")
        else:
            proof = ConsistencyProof.from_dict(_proof_part(doc, proof_file, "consistency", "consistency proof"))
            check_consistency(Checkpoint(cp.origin, p["log_size"], root), cp, proof)
        out["log_checked"] = True
        out["checkpoint"] = _cp_dict(cp)
    return out


