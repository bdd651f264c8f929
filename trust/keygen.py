"""A subject makes its own keys and asks the exchange to certify them (`fedtrust keygen`).

Why this is safe: the exchange never sees a private key, so it cannot sign a
node's attestation or a buyer's acknowledgement; a receipt proves something
even against the exchange. The request proves possession of every key it
names: it is signed with the subject's own Ed25519 key (the key it asks to
have certified), it embeds a CSR signed with the TLS key, and it binds the
X25519 key-agreement key inside that signed payload (X25519 cannot sign; the
binding under the signing key is what ties it to the subject).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrust.errors import ConfigError, InvalidInput, VerificationError
from fedtrust.trust import pki
from fedtrust.trust.canonical import Fields, sha256_hex, utc_now
from fedtrust.trust.credentials import (
    KX_KEY,
    SIGNING_KEY,
    TLS_KEY,
    make_private_dir,
    raw_b64,
    signing_public_key_of,
    write_file,
)
from fedtrust.trust.dsse import Envelope, Signer, verify_object

__all__ = ["REQUEST_TYPE", "REQUEST", "RegistrationRequest", "keygen", "verify_request", "load_request"]

REQUEST_TYPE = "https://fedtrust.dev/RegistrationRequest/v1"
REQUEST = "request.json"
MAX_ADDRESSES = 8


@dataclass(frozen=True)
class RegistrationRequest:
    role: str
    name: str
    addresses: tuple[str, ...]
    signing_key: str  # base64 raw Ed25519 public key (this request is signed with it)
    kx_key: str | None  # base64 raw X25519 public key; nodes only
    csr_pem: str  # PEM CSR signed by the TLS key
    created_at: str

    @property
    def uri(self) -> str:
        return pki.subject_uri(self.role, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "name": self.name, "addresses": list(self.addresses),
                "signing_key": self.signing_key, "kx_key": self.kx_key, "csr_pem": self.csr_pem,
                "created_at": self.created_at}

    @classmethod
    def from_dict(cls, d: object) -> RegistrationRequest:
        f = Fields(d, "registration request")
        return cls(f.text("role"), f.text("name"), f.texts("addresses"), f.text("signing_key"),
                   f.opt_text("kx_key"), f.text("csr_pem"), f.time("created_at"))


def check_addresses(role: str, addresses: Sequence[str]) -> tuple[str, ...]:
    """Role rules for addresses: a node needs one, a buyer has none; each is HOST:PORT."""
    if role in ("node", "dealer") and not addresses:
        raise ConfigError(f"a {role} needs --address HOST:PORT so the coordinator can reach it")
    if addresses and role not in pki.ADDRESS_ROLES:
        raise ConfigError(f"a {role} runs no server, so it has no address; drop --address")
    if len(addresses) > MAX_ADDRESSES:
        raise ConfigError(f"at most {MAX_ADDRESSES} --address values are allowed")
    for a in addresses:
        pki.address_host(a)
    if len(set(addresses)) != len(addresses):
        raise ConfigError("an --address is given twice; list each address once")
    return tuple(addresses)


def _pem(key: Ed25519PrivateKey | X25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _reused_keys(d: Path, role: str) -> tuple[Ed25519PrivateKey, ec.EllipticCurvePrivateKey, X25519PrivateKey | None]:
    """The keys in an existing credential directory, to renew with new addresses but the same keys."""
    def load(name: str, kind: type) -> Any:
        try:
            key = pki.load_private_key((d / name).read_bytes(), str(d / name))
        except FileNotFoundError:
            raise ConfigError(f"--reuse-keys {d} has no {name}; point it at the directory keygen wrote") from None
        if not isinstance(key, kind):
            raise ConfigError(f"{d / name} is not the kind of key keygen writes there")
        return key

    kx = load(KX_KEY, X25519PrivateKey) if role in pki.KX_ROLES else None
    return load(SIGNING_KEY, Ed25519PrivateKey), load(TLS_KEY, ec.EllipticCurvePrivateKey), kx


def keygen(role: str, name: str, addresses: Sequence[str], out_dir: str | Path,
           reuse_keys: str | Path | None = None) -> RegistrationRequest:
    """Create the subject's keys in `out_dir` (0700; keys 0600) and its signed `request.json`.

    With `reuse_keys`, the keys of that earlier directory are copied instead
    (a renewal that only changes addresses)."""
    pki.check_role(role)
    pki.check_name(name)
    addrs = check_addresses(role, list(addresses))
    out = Path(out_dir)
    if reuse_keys is not None:
        signing, tls, kx = _reused_keys(Path(reuse_keys), role)
    else:
        signing = Ed25519PrivateKey.generate()
        tls = ec.generate_private_key(ec.SECP256R1())
        kx = X25519PrivateKey.generate() if role in pki.KX_ROLES else None
    make_private_dir(out)
    write_file(out / SIGNING_KEY, _pem(signing), secret=True)
    write_file(out / TLS_KEY, _pem(tls), secret=True)
    if kx is not None:
        write_file(out / KX_KEY, _pem(kx), secret=True)
    request = RegistrationRequest(role, name, addrs, raw_b64(signing.public_key()),
                                  raw_b64(kx.public_key()) if kx else None,
                                  pki.make_csr(tls, role, name).decode("ascii"), utc_now())
    envelope = Signer(signing).sign_statement(REQUEST_TYPE, request.to_dict(),
                                              [(request.uri, sha256_hex(request.csr_pem.encode()))])
    write_file(out / REQUEST, envelope.to_json(), secret=False)
    return request


def verify_request(envelope: Envelope) -> tuple[RegistrationRequest, ec.EllipticCurvePublicKey]:
    """Proof of possession of all three keys and the role/name/address rules; returns the TLS public key."""
    try:
        claimed = json.loads(envelope.payload)["predicate"]["signing_key"]
        key = signing_public_key_of(claimed)
    except (ValueError, KeyError, TypeError, InvalidInput):
        raise VerificationError("registration request names no Ed25519 signing key; rerun `fedtrust keygen`") from None
    try:
        req = verify_object(envelope, key, REQUEST_TYPE, RegistrationRequest.from_dict, "registration request")
    except VerificationError as e:
        raise VerificationError(f"registration request is not signed by the key it names (no proof of possession): {e}") from None
    try:
        pki.check_role(req.role)
        pki.check_name(req.name)
        check_addresses(req.role, req.addresses)
    except ConfigError as e:
        raise VerificationError(f"registration request: {e}") from None
    if req.role in pki.KX_ROLES:
        if req.kx_key is None:
            raise VerificationError(f"registration request of a {req.role} carries no key-agreement (kx) key")
        try:
            raw = base64.b64decode(req.kx_key, validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise VerificationError("registration request's kx_key is not a base64 raw 32-byte X25519 key")
    elif req.kx_key is not None:
        raise VerificationError("only nodes and dealers carry a key-agreement key; rerun `fedtrust keygen` for this role")
    return req, pki.check_csr(req.csr_pem, req.role, req.name)


def load_request(path: str | Path) -> Envelope:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"request file {p} does not exist; run `fedtrust keygen` and pass its request.json") from None
    except IsADirectoryError:
        raise ConfigError(f"{p} is a directory; pass the request.json `fedtrust keygen` wrote in it") from None
    try:
        return Envelope.from_json(data)
    except InvalidInput as e:
        raise ConfigError(f"request file {p} is not a signed request: {e}") from None
