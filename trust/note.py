"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

A signed note is UTF-8 text followed by a blank line and one signature line
per signer: `— <key name> <base64(key hash ‖ signature)>`. The key hash is
the first four bytes of SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ raw Ed25519 public
key), and the signature covers the text exactly (up to and including its
last newline). This is the envelope transparency logs (Go's sumdb, Sigstore
Rekor v2, Tessera) and their witnesses and monitors use for checkpoints, so
the exchange's log checkpoints can be checked by their tools as well as by
fedtrust.

Why opening is safe: the caller names the key (name and public key); only a
signature line with that name and key hash counts, it must verify over the
text, and only then is the text returned for parsing. Signature lines by
other keys (witness cosignatures) are carried but not trusted. The parser is
strict where leniency would let two encodings pass for one note: valid UTF-8,
no control characters but newline, canonical padded base64 (so a flipped
padding bit is refused, not ignored), a bounded size.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedtrust.errors import InvalidInput, VerificationError

__all__ = [
    "MAX_NOTE_BYTES", "SIG_TYPE_ED25519", "NoteSignature", "check_key_name", "key_hash", "verifier_key",
    "parse_verifier_key", "sign_note", "open_note", "b64_canonical", "unb64_canonical",
]

MAX_NOTE_BYTES = 64 * 1024
SIG_TYPE_ED25519 = 0x01
_DASH = "\u2014 "
_NAME = re.compile(r"[^\s+]+")


def b64_canonical(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64_canonical(text: str, what: str) -> bytes:
    """Standard padded base64 whose re-encoding is exactly `text` (no ignored bits, no whitespace)."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidInput(f"{what} is not standard base64") from None
    if b64_canonical(data) != text:
        raise InvalidInput(f"{what} is not canonically encoded base64")
    return data


def check_key_name(name: object) -> str:
    """A key name (and so a log origin): non-empty, no whitespace, no '+', at most 256 characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 256:
        raise InvalidInput("a signed-note key name must be 1-256 characters with no spaces and no '+', "
                           "e.g. example.org/exchange")
    return name


def _raw(public_key: Ed25519PublicKey) -> bytes:
    if not isinstance(public_key, Ed25519PublicKey):
        raise InvalidInput("signed notes are verified with an Ed25519 public key")
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte key hash of signed-note: SHA-256(name ‖ '\\n' ‖ 0x01 ‖ key)[:4]."""
    check_key_name(name)
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([SIG_TYPE_ED25519]) + _raw(public_key)).digest()[:4]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string `<name>+<hex key hash>+<base64(0x01 ‖ key)>` (Go's note.NewVerifier format)."""
    return f"{name}+{key_hash(name, public_key).hex()}+{b64_canonical(bytes([SIG_TYPE_ED25519]) + _raw(public_key))}"


def parse_verifier_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """(name, key) from a verifier key string; InvalidInput unless it is well formed and its hash matches."""
    parts = text.split("+", 2)  # the base64 key may itself contain '+'
    if len(parts) != 3:
        raise InvalidInput("a verifier key is NAME+HASH+KEY (as `fedtrust exchange log` prints it)")
    name, hexhash, b64key = parts
    check_key_name(name)
    blob = unb64_canonical(b64key, "verifier key")
    if len(blob) != 33 or blob[0] != SIG_TYPE_ED25519:
        raise InvalidInput("verifier key is not an Ed25519 signed-note key (type 0x01, 32 bytes)")
    key = Ed25519PublicKey.from_public_bytes(blob[1:])
    if hexhash != key_hash(name, key).hex():
        raise InvalidInput("verifier key's hash does not match its name and key; copy the whole key again")
    return name, key


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: bytes
    sig: bytes


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note: `text` (which must end in a newline), a blank line, one Ed25519 signature line."""
    _check_text(text)
    kh = key_hash(name, private_key.public_key())
    sig = private_key.sign(text.encode("utf-8"))
    return f"{text}\n{_DASH}{name} {b64_canonical(kh + sig)}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n") or text.startswith("\n") or "\n\n" in text:
        raise InvalidInput("a note's text must be non-empty lines each ending in a newline, with no blank line")
    if any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F for c in text):
        raise InvalidInput("a note's text must not contain control characters")


def _parse(note: bytes | str) -> tuple[str, list[NoteSignature]]:
    if isinstance(note, str):
        try:
            note = note.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput("note is not valid UTF-8") from None
    if len(note) > MAX_NOTE_BYTES:
        raise InvalidInput(f"note is larger than {MAX_NOTE_BYTES} bytes")
    try:
        msg = bytes(note).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("note is not valid UTF-8") from None
    split = msg.rfind("\n\n")
    if split < 0:
        raise InvalidInput("note has no signature block (a blank line, then `— name signature` lines)")
    text, block = msg[: split + 1], msg[split + 2:]
    _check_text(text)
    if not block.endswith("\n"):
        raise InvalidInput("note's signature block must end in a newline")
    sigs = []
    for line in block[:-1].split("\n"):
        if not line.startswith(_DASH):
            raise InvalidInput("note signature lines must start with an em dash and a space")
        fields = line[len(_DASH):].split(" ")
        if len(fields) != 2:
            raise InvalidInput("a note signature line is `— <key name> <base64 signature>`")
        name = check_key_name(fields[0])
        blob = unb64_canonical(fields[1], "note signature")
        if len(blob) < 5:
            raise InvalidInput("note signature is too short to hold a key hash and a signature")
        sigs.append(NoteSignature(name, blob[:4], blob[4:]))
    if len(sigs) > 100:
        raise InvalidInput("note carries more than 100 signatures")
    return text, sigs


def open_note(note: bytes | str, name: str, public_key: Ed25519PublicKey) -> str:
    """Verify `note` under the key `name`/`public_key` and return its text.

    InvalidInput for a malformed note; VerificationError when no signature
    line is by this key, or one is and does not verify.
    """
    text, sigs = _parse(note)
    kh = key_hash(name, public_key)
    mine = [s for s in sigs if s.name == name and s.key_hash == kh]
    if not mine:
        raise VerificationError(f"note carries no signature by key {name}+{kh.hex()}; it was signed by another "
                                "key or for another log origin")
    for s in mine:
        try:
            public_key.verify(s.sig, text.encode("utf-8"))
        except InvalidSignature:
            raise VerificationError(f"note signature by {name}+{kh.hex()} does not verify; the note was altered") from None
    return text
