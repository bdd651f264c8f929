"""DSSE envelopes around in-toto Statements: signing and verification.

Every signed fedtrust object is the canonical JSON of an in-toto Statement,
wrapped in a DSSE envelope and signed over the DSSE pre-authentication
encoding (PAE). Verification checks the signature first and then parses
*only the verified payload bytes*; nothing in the envelope outside the
signature is trusted.

Envelopes go out exactly as the DSSE spec shows them (`payloadType`,
`payload`, `signatures: [{keyid, sig}]`, standard base64), so Sigstore's
strict envelope parser and securesystemslib read them. The algorithm is not a
field: it follows from the key the *verifier* holds, and fedtrust key ids name
it (`ed25519:<sha256 of the raw key>`), so SM2 or ML-DSA keys can be added
later without new fields. Inbound, every spec-valid variant is accepted: a
missing or foreign `keyid` (the spec calls it an unauthenticated hint, so the
verifier's key is tried on such signatures), standard or URL-safe base64 with
or without padding, and the legacy `alg` field of older fedtrust envelopes.
None of that widens what is trusted: a signature counts only if it verifies
under the key the caller expects, and only the verified payload bytes are
parsed.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedtrust.errors import ConfigError, InvalidInput, VerificationError
from fedtrust.trust.canonical import canonical, is_canonical, is_sha256_hex, sha256_hex

__all__ = [
    "PAYLOAD_TYPE", "STATEMENT_TYPE", "ALG_ED25519", "MAX_ENVELOPE_BYTES",
    "Signature", "Envelope", "Signer", "pae", "keyid_of", "signed_by", "first_signer", "verify_statement", "verify_object",
    "verify_object_by_one_of", "load_json",
]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
ALG_ED25519 = "ed25519"
#: an envelope never exceeds the gRPC message limit
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
#: a contract carries the exchange's, the buyer's, the coordinator's and every owner's signature
MAX_SIGNATURES = 64

T = TypeVar("T")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    """Standard or URL-safe base64 (RFC 4648 §4/§5), padded or not, as the DSSE spec allows; one alphabet per value."""
    if not isinstance(value, str):
        raise InvalidInput(f"envelope {what} must be a base64 string")
    if ("-" in value or "_" in value) and ("+" in value or "/" in value):
        raise InvalidInput(f"envelope {what} mixes the standard and URL-safe base64 alphabets")
    text = value.replace("-", "+").replace("_", "/")
    stripped = text.rstrip("=")
    if len(text) - len(stripped) > 2 or len(stripped) % 4 == 1:
        raise InvalidInput(f"envelope {what} is not valid base64")
    try:
        data = base64.b64decode((stripped + "=" * (-len(stripped) % 4)).encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidInput(f"envelope {what} is not valid base64") from None
    if base64.b64encode(data).decode("ascii").rstrip("=") != stripped:  # set padding bits: two texts, one value
        raise InvalidInput(f"envelope {what} is not canonically encoded base64 (its padding bits are set)")
    return data


def _text(value: object, what: str, limit: int) -> str:
    """A string field of an envelope: UTF-8 encodable (no lone surrogates) and at most `limit` characters."""
    if not isinstance(value, str):
        raise InvalidInput(f"envelope {what} must be a string")
    if len(value) > limit:
        raise InvalidInput(f"envelope {what} is longer than {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"envelope {what} is not valid Unicode") from None
    return value


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what a signature actually covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    """One DSSE signature; `keyid` is "" when the envelope gave none (an unauthenticated hint either way)."""

    keyid: str
    sig: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"keyid": self.keyid, "sig": _b64(self.sig)} if self.keyid else {"sig": _b64(self.sig)}

    @classmethod
    def from_dict(cls, d: object) -> Signature:
        if not isinstance(d, dict) or "sig" not in d:
            raise InvalidInput("envelope signature must be an object with sig (and optionally keyid)")
        if not set(d) <= {"keyid", "sig", "alg"}:
            raise InvalidInput("envelope signature may have only the fields keyid and sig")
        if "alg" in d and d["alg"] != ALG_ED25519:  # older fedtrust envelopes named the algorithm
            raise InvalidInput(f"envelope signature names an unsupported algorithm; only {ALG_ED25519} is supported")
        keyid = _text(d.get("keyid", ""), "signature keyid", 256)
        sig = _unb64(d["sig"], "signature")
        if not sig:
            raise InvalidInput("envelope signature is empty")
        return cls(keyid, sig)


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    @functools.cached_property
    def digest(self) -> str:
        """The digest other objects use to refer to this signed object (computed once: the payload is bytes)."""
        return sha256_hex(self.payload)

    def to_dict(self) -> dict[str, Any]:
        return {
            "payloadType": self.payload_type,
            "payload": _b64(self.payload),
            "signatures": [s.to_dict() for s in self.signatures],
        }

    def to_json(self) -> bytes:
        return canonical(self.to_dict())

    @classmethod
    def from_dict(cls, d: object) -> Envelope:
        """InvalidInput (and nothing else) when `d` is not a well-formed envelope."""
        if not isinstance(d, dict):
            raise InvalidInput("envelope must be a JSON object with payloadType, payload and signatures")
        if set(d) != {"payloadType", "payload", "signatures"}:
            raise InvalidInput("envelope must have exactly the fields payloadType, payload and signatures")
        payload_type, sigs = _text(d["payloadType"], "payloadType", 256), d["signatures"]
        payload = _unb64(d["payload"], "payload")
        if not isinstance(sigs, list) or not sigs:
            raise InvalidInput("envelope must carry a non-empty list of signatures")
        if len(sigs) > MAX_SIGNATURES:
            raise InvalidInput(f"envelope carries more than {MAX_SIGNATURES} signatures")
        return cls(payload_type, payload, tuple(Signature.from_dict(s) for s in sigs))

    @classmethod
    def from_json(cls, data: bytes | str) -> Envelope:
        """Parse bytes from a file or the network; raises InvalidInput and nothing else."""
        return cls.from_dict(load_json(data, "envelope"))


def load_json(data: object, what: str) -> object:
    """json.loads for untrusted bytes: InvalidInput for anything malformed or oversized."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{what} is not UTF-8 JSON") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"{what} must be JSON bytes")
    if len(data) > MAX_ENVELOPE_BYTES:
        raise InvalidInput(f"{what} is larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise InvalidInput(f"{what} is not valid JSON") from None


def keyid_of(public_key: Ed25519PublicKey) -> str:
    """`ed25519:` + sha256 hex of the raw public key."""
    if not isinstance(public_key, Ed25519PublicKey):
        raise InvalidInput("only Ed25519 signing keys are supported")
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{ALG_ED25519}:{sha256_hex(raw)}"


class Signer:
    """An Ed25519 private key that signs in-toto statements into DSSE envelopes."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise InvalidInput("a Signer needs an Ed25519 private key")
        self._key = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()
        self.keyid: str = keyid_of(self.public_key)

    def __repr__(self) -> str:  # never print key material
        return f"Signer({self.keyid})"

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def sign_statement(
        self,
        predicate_type: str,
        predicate: dict[str, Any],
        subjects: Sequence[tuple[str, str]] = (),
    ) -> Envelope:
        """Sign `predicate` as an in-toto Statement; `subjects` are (name, sha256 hex) pairs."""
        for name, digest in subjects:
            if not isinstance(name, str) or not is_sha256_hex(digest):
                raise InvalidInput("statement subjects must be (name, sha256 hex) pairs")
        statement = {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": n, "digest": {"sha256": d}} for n, d in subjects],
            "predicateType": predicate_type,
            "predicate": predicate,
        }
        payload = canonical(statement)
        sig = self._key.sign(pae(PAYLOAD_TYPE, payload))
        return Envelope(PAYLOAD_TYPE, payload, (Signature(self.keyid, sig),))

    def countersign(self, envelope: Envelope) -> Envelope:
        """`envelope` with this key's signature added over the same PAE (several parties sign one payload,
        so its digest does not change); unchanged when this key already signed it."""
        if signed_by(envelope, self.public_key):
            return envelope
        if len(envelope.signatures) >= MAX_SIGNATURES:
            raise InvalidInput(f"envelope already carries {MAX_SIGNATURES} signatures, the most one may carry")
        sig = self._key.sign(pae(envelope.payload_type, envelope.payload))
        return Envelope(envelope.payload_type, envelope.payload, envelope.signatures + (Signature(self.keyid, sig),))


def signed_by(envelope: Envelope, public_key: Ed25519PublicKey) -> bool:
    """Whether some signature of `envelope` verifies over PAE under `public_key` (those naming its keyid tried first)."""
    return first_signer(envelope, [public_key]) is not None


def first_signer(envelope: Envelope, public_keys: Sequence[Ed25519PublicKey]) -> int | None:
    """The index in `public_keys` of a key under which some signature of `envelope` verifies over PAE, else None.

    The (key, signature) pairs whose keyid names the key are tried first; as
    DSSE makes keyid an optional, unauthenticated hint, every other pair is
    tried after them. Each pair is checked at most once, so a verifier that
    holds several candidate keys (a contract's owners) pays one verification
    for an envelope whose keyid names its signer, not one per candidate.
    """
    keyids = [keyid_of(k) for k in public_keys]
    data = pae(envelope.payload_type, envelope.payload)
    pairs = [(i, s) for i in range(len(public_keys)) for s in envelope.signatures]
    for i, s in sorted(pairs, key=lambda p: p[1].keyid != keyids[p[0]]):  # stable: named pairs first
        try:
            public_keys[i].verify(s.sig, data)
            return i
        except InvalidSignature:
            continue
    return None


def _not_signed(envelope: Envelope, public_key: Ed25519PublicKey) -> VerificationError:
    keyid = keyid_of(public_key)
    if any(s.keyid == keyid for s in envelope.signatures):
        return VerificationError(
            f"signature by {keyid} does not verify; the envelope was altered or signed by another key")
    return VerificationError(f"envelope carries no signature by {keyid}; it must be signed by the expected key")


def verify_statement(envelope: Envelope, public_key: Ed25519PublicKey, predicate_type: str) -> dict[str, Any]:
    """Verify `envelope` under `public_key` and return the statement's predicate.

    Checks, in order: some signature verifies over PAE under `public_key`
    (those carrying the key's keyid first; as DSSE makes keyid an optional,
    unauthenticated hint, the others are tried too); the payload type; then
    parses only the verified bytes (which must be canonical JSON) and checks
    the statement type and `predicate_type`. VerificationError with one
    precise message per failed check.
    """
    if not signed_by(envelope, public_key):
        raise _not_signed(envelope, public_key)
    return _verified_predicate(envelope, predicate_type)


def _verified_predicate(envelope: Envelope, predicate_type: str) -> dict[str, Any]:
    """`verify_statement`'s checks after the signature: only ever called on an envelope whose signature verified."""
    if envelope.payload_type != PAYLOAD_TYPE:
        raise VerificationError(f"expected payload type {PAYLOAD_TYPE}, got {envelope.payload_type!r}")
    payload = envelope.payload
    try:
        statement = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        raise VerificationError("signed payload is not JSON; it is not a fedtrust statement") from None
    if not is_canonical(statement, payload):
        raise VerificationError("signed payload is not canonical JSON (RFC 8785); re-sign it with fedtrust")
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise VerificationError(f"signed payload is not an in-toto statement (_type must be {STATEMENT_TYPE})")
    got = statement.get("predicateType")
    if got != predicate_type:
        raise VerificationError(f"expected predicate type {predicate_type}, got {got!r}")
    subject = statement.get("subject")
    if not isinstance(subject, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("digest"), dict) for s in subject
    ):
        raise VerificationError("signed statement has a malformed subject list")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise VerificationError("signed statement has no predicate object")
    return predicate


def verify_object(
    envelope: Envelope,
    public_key: Ed25519PublicKey,
    predicate_type: str,
    from_dict: Callable[[dict[str, Any]], T],
    what: str,
) -> T:
    """verify_statement, then build the object; a malformed signed predicate is a VerificationError."""
    return _build(verify_statement(envelope, public_key, predicate_type), from_dict, what)


def verify_object_by_one_of(
    envelope: Envelope,
    public_keys: Sequence[Ed25519PublicKey],
    predicate_type: str,
    from_dict: Callable[[dict[str, Any]], T],
    what: str,
) -> tuple[int, T] | None:
    """`verify_object` under whichever of `public_keys` signed `envelope` (`first_signer`): (its index, the object);
    None when no signature verifies under any of them (the caller words that refusal)."""
    i = first_signer(envelope, public_keys)
    if i is None:
        return None
    return i, _build(_verified_predicate(envelope, predicate_type), from_dict, what)


def _build(predicate: dict[str, Any], from_dict: Callable[[dict[str, Any]], T], what: str) -> T:
    try:
        return from_dict(predicate)
    except (InvalidInput, ConfigError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise VerificationError(f"signed {what} is malformed ({e}); it was not made by this fedtrust version") from None
