"""Subject credentials (exchange-signed public parts) and a subject's local identity.

A `SubjectCredential` is what everyone may see about a node, buyer or
coordinator: role, name, address, TLS certificate, Ed25519 signing key and,
for nodes, the X25519 key-agreement key for pairwise masks. The exchange
signs it. An `Identity` is the secret side a subject loads from its
credential directory: the keys `fedtrust keygen` made there, plus the public
files `fedtrust exchange register` issued for them.
"""
from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedtrust.errors import ConfigError, InvalidInput, VerificationError
from fedtrust.trust.canonical import Fields, sha256_hex
from fedtrust.trust.dsse import Envelope, Signer, verify_object
from fedtrust.trust.pki import (
    KX_ROLES,
    certificate_subject,
    check_name,
    check_role,
    load_certificate,
    load_private_key,
    subject_uri,
)

__all__ = [
    "CREDENTIAL_TYPE", "FILES", "SubjectCredential", "Identity", "raw_b64", "signing_public_key",
    "kx_public_key", "sign_credential", "verify_credential", "write_credential_files", "load_identity", "load_identity_as",
    "signing_public_key_of",
    "load_exchange_key", "public_key_pem",
]

CREDENTIAL_TYPE = "https://fedtrust.dev/SubjectCredential/v1"

#: the files of a credential directory
TLS_CERT, TLS_KEY, SIGNING_KEY, KX_KEY = "tls.crt", "tls.key", "signing.key", "kx.key"
CA_CERT, EXCHANGE_PUB, CREDENTIAL = "ca.crt", "exchange.pub", "credential.json"
FILES = (TLS_CERT, TLS_KEY, SIGNING_KEY, KX_KEY, CA_CERT, EXCHANGE_PUB, CREDENTIAL)
#: what the exchange writes: public material only
PUBLIC_FILES = (TLS_CERT, CA_CERT, EXCHANGE_PUB, CREDENTIAL)
SECRET_FILES = (TLS_KEY, SIGNING_KEY, KX_KEY)


def raw_b64(key: Ed25519PublicKey | X25519PublicKey) -> str:
    """Base64 of a raw 32-byte public key, as credentials carry it."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _raw32(value: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 32:
        raise InvalidInput(f"credential {what} must be a base64 raw 32-byte public key")
    return raw


@dataclass(frozen=True)
class SubjectCredential:
    role: str
    name: str
    address: str | None
    cert_pem: str
    signing_key: str  # base64 raw Ed25519 public key
    kx_key: str | None  # base64 raw X25519 public key; nodes only
    issued_at: str

    @property
    def uri(self) -> str:
        return subject_uri(self.role, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "name": self.name,
            "address": self.address,
            "cert_pem": self.cert_pem,
            "signing_key": self.signing_key,
            "kx_key": self.kx_key,
            "issued_at": self.issued_at,
        }

    @classmethod
    def from_dict(cls, d: object) -> SubjectCredential:
        f = Fields(d, "subject credential")
        try:
            role, name = check_role(f.text("role")), check_name(f.text("name"))
        except ConfigError as e:
            raise InvalidInput(f"subject credential: {e}") from None
        cred = cls(role, name, f.opt_text("address"), f.text("cert_pem"), f.text("signing_key"),
                   f.opt_text("kx_key"), f.time("issued_at"))
        _raw32(cred.signing_key, "signing_key")
        if role in KX_ROLES:
            if cred.kx_key is None:
                raise InvalidInput(f"subject credential: a {role} credential needs a kx_key")
            _raw32(cred.kx_key, "kx_key")
        elif cred.kx_key is not None:
            raise InvalidInput("subject credential: only node and dealer credentials carry a kx_key")
        return cred


def signing_public_key(cred: SubjectCredential) -> Ed25519PublicKey:
    return signing_public_key_of(cred.signing_key)


def signing_public_key_of(value: str) -> Ed25519PublicKey:
    """An Ed25519 public key from its base64 raw form (InvalidInput when it is not one)."""
    return Ed25519PublicKey.from_public_bytes(_raw32(value, "signing_key"))


def kx_public_key(cred: SubjectCredential) -> X25519PublicKey:
    if cred.kx_key is None:
        raise InvalidInput(f"subject {cred.uri} has no key-agreement key; only nodes and dealers have one")
    return X25519PublicKey.from_public_bytes(_raw32(cred.kx_key, "kx_key"))


def sign_credential(cred: SubjectCredential, exchange_signer: Signer) -> Envelope:
    subject_digest = sha256_hex(cred.cert_pem.encode("utf-8"))
    return exchange_signer.sign_statement(CREDENTIAL_TYPE, cred.to_dict(), [(cred.uri, subject_digest)])


def verify_credential(envelope: Envelope, exchange_key: Ed25519PublicKey) -> SubjectCredential:
    """Exchange signature, then the certificate inside must name the same subject."""
    cred = verify_object(envelope, exchange_key, CREDENTIAL_TYPE, SubjectCredential.from_dict, "subject credential")
    if certificate_subject(load_certificate(cred.cert_pem)) != (cred.role, cred.name):
        raise VerificationError(f"credential for {cred.uri} carries a certificate for another subject")
    return cred


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_exchange_key(pem: bytes, what: str = EXCHANGE_PUB) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # a damaged file may name an unknown algorithm
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{what} is not an Ed25519 public key in PEM; copy the exchange's exchange.pub")
    return key


def write_file(path: Path, data: bytes, secret: bool) -> None:
    """Create `path` (never overwrite); secret files are 0600 from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def make_private_dir(path: Path) -> None:
    """Create `path` with mode 0700; refuse one that already holds files."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"{path} already exists and is not an empty directory; choose a new output directory")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_credential_files(
    out_dir: str | Path, *, credential_envelope: Envelope, tls_cert_pem: bytes, ca_pem: bytes,
    exchange_key: Ed25519PublicKey,
) -> Path:
    """Write the public files the exchange issues (credential, certificate, trust anchors) into `out_dir`.

    `out_dir` may be the directory `fedtrust keygen` made (the keys stay
    where they are) or a new one to copy there; it never overwrites a file.
    """
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d} is not a directory; pass the directory to write the credential into")
    if (d / CREDENTIAL).exists():
        raise ConfigError(f"{d} already holds a {CREDENTIAL}; write the new credential into another directory")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(d / TLS_CERT, tls_cert_pem, secret=False)
    write_file(d / CA_CERT, ca_pem, secret=False)
    write_file(d / EXCHANGE_PUB, public_key_pem(exchange_key), secret=False)
    write_file(d / CREDENTIAL, credential_envelope.to_json(), secret=False)
    return d


@dataclass(frozen=True)
class Identity:
    credential: SubjectCredential
    credential_envelope: Envelope
    tls_cert_pem: bytes
    tls_key_pem: bytes = field(repr=False)
    ca_pem: bytes
    signer: Signer = field(repr=False)
    kx_private: X25519PrivateKey | None = field(repr=False)
    exchange_key: Ed25519PublicKey = field(repr=False)

    @property
    def role(self) -> str:
        return self.credential.role

    @property
    def name(self) -> str:
        return self.credential.name


def _read(d: Path, name: str) -> bytes:
    try:
        return (d / name).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"credential directory {d} has no {name}; run `fedtrust keygen` there and `fedtrust exchange register` for its request.json") from None
    except OSError as e:
        raise ConfigError(f"cannot read {d / name}: {e.strerror or e}; check its permissions") from None


def load_identity(path: str | Path) -> Identity:
    """Load and cross-check a credential directory; ConfigError naming the file that is missing or wrong."""
    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"credential directory {d} does not exist; run `fedtrust keygen --out` there, then `fedtrust exchange register`")
    exchange_key = load_exchange_key(_read(d, EXCHANGE_PUB), str(d / EXCHANGE_PUB))
    try:
        envelope = Envelope.from_json(_read(d, CREDENTIAL))
        cred = verify_credential(envelope, exchange_key)
    except (InvalidInput, VerificationError) as e:
        raise ConfigError(f"{d / CREDENTIAL} does not verify under {EXCHANGE_PUB}: {e}") from None
    tls_cert, tls_key, ca = _read(d, TLS_CERT), _read(d, TLS_KEY), _read(d, CA_CERT)
    if tls_cert.strip() != cred.cert_pem.encode("utf-8").strip():
        raise ConfigError(f"{d / TLS_CERT} is not the certificate in {CREDENTIAL}; keep the keys keygen made next to the credential the exchange issued for them")
    tls_private = load_private_key(tls_key, str(d / TLS_KEY))
    if not isinstance(tls_private, ec.EllipticCurvePrivateKey) or (
        tls_private.public_key().public_numbers() != load_certificate(tls_cert).public_key().public_numbers()  # type: ignore[union-attr]
    ):
        raise ConfigError(f"{d / TLS_KEY} does not match {TLS_CERT}; keep the keys keygen made next to the credential the exchange issued for them")
    signing = load_private_key(_read(d, SIGNING_KEY), str(d / SIGNING_KEY))
    if not isinstance(signing, Ed25519PrivateKey) or raw_b64(signing.public_key()) != cred.signing_key:
        raise ConfigError(f"{d / SIGNING_KEY} does not match the signing key in {CREDENTIAL}; keep the keys keygen made next to the credential the exchange issued for them")
    kx: X25519PrivateKey | None = None
    if cred.role in KX_ROLES:
        kx_key = load_private_key(_read(d, KX_KEY), str(d / KX_KEY))
        if not isinstance(kx_key, X25519PrivateKey) or raw_b64(kx_key.public_key()) != cred.kx_key:
            raise ConfigError(f"{d / KX_KEY} does not match the key-agreement key in {CREDENTIAL}; keep the keys keygen made next to the credential the exchange issued for them")
        kx = kx_key
    return Identity(cred, envelope, tls_cert, tls_key, ca, Signer(signing), kx, exchange_key)


def load_identity_as(path: str | Path, role: str, name: str) -> Identity:
    """`load_identity`, refusing credentials of another subject than the daemon's config names."""
    identity = load_identity(path)
    cred = identity.credential
    if cred.role != role or cred.name != name:
        raise ConfigError(
            f"credentials in {path} are for fedtrust://{cred.role}/{cred.name}, not {role} {name!r}; point "
            f"[{role}] credentials at the directory holding its keys and credential"
        )
    return identity
