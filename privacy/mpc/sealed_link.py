"""MPC links sealed end to end between organisations: what a relay (the coordinator) cannot read or alter.

CrypTen's parties exchange shares many times per operation. Between
organisations those frames travel through fedtrust's mutual-TLS channels,
relayed by the coordinator, which must learn nothing: a share alone is
uniformly random, but a relay that saw both parties' shares of one value
would hold the value. `SealedLink` wraps any `Link` (the relay) and seals
every frame with AES-256-GCM under a key per (session, sender, receiver)
derived by HKDF from the two parties' certified X25519 keys, with the frame's
sequence number as the nonce and in the associated data. So a frame opens only
at its receiver, in order, once: the relay cannot read a share, change a bit,
drop, reorder, replay or redirect a frame without the receiver refusing the
session ("MPC frame … does not open"). Each key's nonces are a counter, never
reused; the session (the job digest) makes keys fresh per job.
"""
from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedtrust.errors import InvalidInput, VerificationError

__all__ = ["SealedLink"]

_PREFIX = b"fedtrust/mpc-link/v1|"


class SealedLink:
    """A `Link` for party `names[rank]`; `inner` carries the sealed frames (in order per pair)."""

    def __init__(self, inner, *, session: str, names: list[str], rank: int, own: X25519PrivateKey,
                 peers: dict[str, X25519PublicKey]):
        if len(set(names)) != len(names) or any("|" in n or not n for n in names) or "|" in session or not session:
            raise InvalidInput("MPC session names must be distinct, non-empty and free of '|'")
        self.inner, self.session, self.names, self.rank = inner, session, list(names), rank
        me = names[rank]
        self._send_keys, self._recv_keys = {}, {}
        for r, name in enumerate(names):
            if r == rank:
                continue
            try:
                shared = own.exchange(peers[name])
            except ValueError:
                raise VerificationError(f"party {name}'s key-agreement key is of small order; its credential is unusable") from None
            except KeyError:
                raise InvalidInput(f"no key-agreement key for MPC party {name}") from None
            self._send_keys[r] = AESGCM(self._derive(shared, me, name))
            self._recv_keys[r] = AESGCM(self._derive(shared, name, me))
        self._sent = {r: 0 for r in self._send_keys}
        self._received = {r: 0 for r in self._recv_keys}

    def _derive(self, shared: bytes, sender: str, receiver: str) -> bytes:
        info = _PREFIX + "|".join((self.session, sender, receiver)).encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)

    def _aad(self, sender: int, receiver: int, seq: int) -> bytes:
        return _PREFIX + "|".join((self.session, self.names[sender], self.names[receiver])).encode() + struct.pack(">Q", seq)

    def send(self, dst: int, frame: bytes) -> None:
        seq = self._sent[dst]
        self._sent[dst] = seq + 1
        nonce = struct.pack(">IQ", 0, seq)
        self.inner.send(dst, self._send_keys[dst].encrypt(nonce, frame, self._aad(self.rank, dst, seq)))

    def recv(self, src: int) -> bytes:
        sealed = self.inner.recv(src)
        seq = self._received[src]
        try:
            frame = self._recv_keys[src].decrypt(struct.pack(">IQ", 0, seq), sealed, self._aad(src, self.rank, seq))
        except (InvalidTag, ValueError):
            raise VerificationError(f"MPC frame {seq} from {self.names[src]} does not open (altered, reordered, "
                                    "replayed or misrouted by the relay); the session is refused") from None
        self._received[src] = seq + 1
        return frame
