"""A party's MPC `Link` over its one relayed gRPC stream (`MpcService.Session`), with transcript digests.

The coordinator relays sealed frames (`privacy.mpc.sealed_link`) between the parties of an MPC job; each party
holds one bidirectional stream to it. Frames this party sends are queued for the servicer to yield as
`MpcOut.frame(peer=receiver)`; frames the coordinator forwards arrive as `MpcIn.frame(peer=sender)` and are
delivered here by the thread reading the request stream. The link keeps a digest of every frame it sent and
received, in stream order (`transcript`): the party attests both, and the coordinator, which saw the same frames
in the same order, checks them, so a receipt names exactly the traffic of the session.
"""
from __future__ import annotations

import hashlib
import queue
import struct
import threading

from fedtrust.errors import InvalidInput, JobFailed

__all__ = ["StreamLink", "transcript_entry", "MAX_FRAME_BYTES"]

#: the largest sealed frame one party may send or receive (a 4M-element tensor and its header)
MAX_FRAME_BYTES = 32 * 1024 * 1024 + 4096
_CLOSED = object()


def transcript_entry(peer: int, frame: bytes) -> bytes:
    """What one frame adds to a transcript digest: the other party's rank and the frame's SHA-256."""
    return struct.pack(">I", peer) + hashlib.sha256(frame).digest()


class StreamLink:
    def __init__(self, rank: int, parties: int, *, idle_s: float, max_frame: int = MAX_FRAME_BYTES):
        self.rank, self.parties, self.idle_s, self.max_frame = rank, parties, idle_s, max_frame
        self.outgoing: queue.Queue = queue.Queue()
        self._in: dict[int, queue.Queue] = {r: queue.Queue() for r in range(parties) if r != rank}
        self._sent, self._received = hashlib.sha256(), hashlib.sha256()
        self._lock = threading.Lock()
        self.reason: str | None = None

    # -- the party's side ---------------------------------------------------------------------------------
    def send(self, dst: int, frame: bytes) -> None:
        if dst not in self._in:
            raise InvalidInput(f"MPC party {self.rank} cannot send to rank {dst}")
        if len(frame) > self.max_frame:
            raise InvalidInput(f"an MPC frame of {len(frame)} bytes is over the limit of {self.max_frame}")
        with self._lock:
            self._sent.update(transcript_entry(dst, frame))
        self.outgoing.put((dst, frame))

    def recv(self, src: int) -> bytes:
        q = self._in.get(src)
        if q is None:
            raise InvalidInput(f"MPC party {self.rank} cannot receive from rank {src}")
        try:
            item = q.get(timeout=self.idle_s)
        except queue.Empty:
            raise JobFailed(f"MPC party {src} sent nothing for {self.idle_s:g} s; the session timed out") from None
        if item is _CLOSED:
            q.put(_CLOSED)  # every later recv fails too
            raise JobFailed(f"the MPC session ended before party {src}'s frame arrived: {self.reason}")
        return item

    # -- the stream reader's side ---------------------------------------------------------------------------
    def deliver(self, src: int, frame: bytes) -> None:
        """A frame the coordinator forwarded (InvalidInput for a bad sender or size: the session fails)."""
        if src not in self._in:
            raise InvalidInput(f"the relay forwarded a frame from rank {src}, which is no party of this session")
        if len(frame) > self.max_frame:
            raise InvalidInput(f"the relay forwarded an MPC frame of {len(frame)} bytes, over the limit")
        with self._lock:
            self._received.update(transcript_entry(src, frame))
        self._in[src].put(frame)

    def close(self, reason: str) -> None:
        """The stream ended: every waiting and later `recv` fails with `reason`."""
        if self.reason is None:
            self.reason = reason
        for q in self._in.values():
            q.put(_CLOSED)

    def transcript(self) -> tuple[str, str]:
        """(digest of the frames sent, digest of the frames received), hex."""
        with self._lock:
            return self._sent.hexdigest(), self._received.hexdigest()
