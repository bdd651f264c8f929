"""Messages from one node to another that the relaying coordinator cannot read or alter.

Vertical jobs (PSI steps) travel node → coordinator → node over mutual TLS; the
coordinator is a relay and must learn nothing but sizes. Each message is sealed
with AES-256-GCM under a key both nodes derive alone: HKDF-SHA256 over their
X25519 agreement (the keys certified in their exchange credentials), with the
job digest, sender, receiver and step in the info, which is also the
associated data. So a sealed message opens only for the named receiver, for
this job and step, from this sender: the coordinator cannot read it, replay
it into another job or step, swap sender and receiver, or change a byte
(GCM's tag fails). Each key seals one message; the nonce is random anyway.
"""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedtrust.errors import InvalidInput, VerificationError

__all__ = ["seal", "open_sealed"]

_PREFIX = b"fedtrust/sealed/v1|"
_NONCE = 12


def _info(job_digest: str, sender: str, receiver: str, step: str) -> bytes:
    for f in (job_digest, sender, receiver, step):
        if "|" in f or not f:
            raise InvalidInput("sealed message fields must be non-empty and free of '|'")
    return _PREFIX + "|".join((job_digest, sender, receiver, step)).encode()


def _key(own: X25519PrivateKey, peer: X25519PublicKey, info: bytes) -> AESGCM:
    try:
        shared = own.exchange(peer)
    except ValueError:
        raise VerificationError("the peer's key-agreement key is of small order; its credential is unusable") from None
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared))


def seal(own: X25519PrivateKey, peer: X25519PublicKey, *, job_digest: str, sender: str, receiver: str, step: str,
         plaintext: bytes) -> bytes:
    info = _info(job_digest, sender, receiver, step)
    nonce = os.urandom(_NONCE)
    return nonce + _key(own, peer, info).encrypt(nonce, plaintext, info)


def open_sealed(own: X25519PrivateKey, peer: X25519PublicKey, *, job_digest: str, sender: str, receiver: str,
                step: str, sealed: bytes) -> bytes:
    info = _info(job_digest, sender, receiver, step)
    if len(sealed) < _NONCE + 16:
        raise VerificationError(f"sealed {step} message from {sender} is truncated; the relay altered it")
    try:
        return _key(own, peer, info).decrypt(sealed[:_NONCE], sealed[_NONCE:], info)
    except InvalidTag:
        raise VerificationError(
            f"sealed {step} message from {sender} does not open for this job and step; the relay altered or misrouted it"
        ) from None
