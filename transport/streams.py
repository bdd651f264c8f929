"""The one wire edge of chunked streams: sending and reading payloads in `CHUNK_BYTES` pieces, within limits.

Every streaming RPC of fedtrust has one of two shapes:

- **header first** (the request streams, `PsiStep`'s and `TrainRound`'s …): a header message that declares the
  payload's size, then the payload in chunk messages. `send_header_first` writes it; `read_header_first` reads
  it back as (header, payload), checking the header's envelopes against `MAX_ENVELOPE_BYTES` and the declared
  size against the payload's limit before a byte is kept.
- **chunks, then a closing message** (the reply streams): the payload in chunks, then a message (a release, an
  outcome) that claims them and says their size. `send_chunks_then` writes it; `read_parts` reads any stream of
  this shape as (part, message, the chunks since the previous message), so a stream may carry several payloads
  and progress messages in between; `read_chunks_then` is the common case of one payload and one closing message.

A reader never trusts a declared size: `fedtrust.transport.chunks.Assembler` refuses a payload that grows past
its declared size or its limit *while it arrives*, so a hostile peer cannot make the reader buffer more than the
limit. A reader given a `deadline` (a `time.monotonic()` instant, see `deadline_after`) refuses a stream still
arriving after it, so a caller that trickles chunks cannot hold a daemon's thread for ever.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fedtrust.errors import InvalidInput, NodeUnreachable
from fedtrust.transport.chunks import Assembler, split
from fedtrust.transport.limits import MAX_ENVELOPE_BYTES, STREAM_SECONDS

__all__ = [
    "check_envelope_sizes",
    "deadline_after",
    "deadline_of",
    "read_header",
    "read_header_first",
    "read_payload",
    "read_parts",
    "read_chunks_then",
    "send_header_first",
    "send_chunks_then",
]


def check_envelope_sizes(msg: Any) -> None:
    """The signed job spec and contract a message carries are within `MAX_ENVELOPE_BYTES`."""
    if len(msg.job_envelope) > MAX_ENVELOPE_BYTES or len(msg.contract_envelope) > MAX_ENVELOPE_BYTES:
        raise InvalidInput(f"job spec or contract exceeds {MAX_ENVELOPE_BYTES} bytes")


def deadline_after(seconds: float | None) -> float:
    """The `time.monotonic()` instant `seconds` from now, at most `STREAM_SECONDS` (the default)."""
    if seconds is None or seconds > STREAM_SECONDS:
        seconds = STREAM_SECONDS
    return time.monotonic() + max(seconds, 0.0)


def deadline_of(context: Any) -> float:
    """A servicer's deadline for reading its request stream: the call's own deadline, at most `STREAM_SECONDS`."""
    remaining = context.time_remaining() if context is not None else None
    return deadline_after(remaining)


def _within(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise NodeUnreachable(f"{what} was still arriving after its deadline; the link is too slow or the peer "
                              "stalled, retry the call")


def _part(msg: Any) -> str | None:
    return msg.WhichOneof("part")


def read_header(requests: Iterator[Any], header_field: str = "header") -> Any:
    """A stream's first message: its header, whose envelopes are within their limit."""
    first = next(requests, None)
    if first is None or _part(first) != header_field:
        raise InvalidInput(f"the stream must start with a {header_field} message")
    header = getattr(first, header_field)
    check_envelope_sizes(header)
    return header


def read_header_first(requests: Iterator[Any], *, size: str, chunk_field: str, limit: int, what: str,
                      header_field: str = "header", deadline: float | None = None) -> tuple[Any, bytes]:
    """(header, payload) of a header-first stream: exactly the header's `size` field of bytes, at most `limit`."""
    header = read_header(requests, header_field)
    return header, read_payload(requests, getattr(header, size), chunk_field=chunk_field, limit=limit, what=what,
                                deadline=deadline)


def read_payload(requests: Iterator[Any], declared: int, *, chunk_field: str, limit: int, what: str,
                 deadline: float | None = None, view: bool = False) -> bytes:
    """The rest of a header-first stream (its header already read): exactly `declared` bytes, at most `limit`
    (with `view`, as a read-only memoryview instead of a copy: `Assembler.finish`)."""
    if declared > limit:
        raise InvalidInput(f"{what} of {declared} bytes exceeds the limit of {limit} bytes")
    asm = Assembler(declared, limit, what)
    for msg in requests:
        _within(deadline, what)
        if _part(msg) != chunk_field:
            raise InvalidInput(f"only {chunk_field} messages may follow the header")
        asm.add(getattr(msg, chunk_field))
    return asm.finish(view)


def read_parts(messages: Iterable[Any], chunk_field: str, limit: int, what: str,
               deadline: float | None = None) -> Iterator[tuple[str, Any, bytes]]:
    """Each non-chunk message of a stream as (its part name, its value, the chunk bytes that arrived since the
    previous one, at most `limit` bytes); InvalidInput when the stream ends with chunks no message claims."""
    asm = Assembler(None, limit, what)
    for msg in messages:
        _within(deadline, what)
        part = _part(msg)
        if part == chunk_field:
            asm.add(getattr(msg, chunk_field))
            continue
        if part is None:
            raise InvalidInput(f"{what}: a message carries nothing; the sender is broken")
        data = asm.finish()
        asm = Assembler(None, limit, what)
        yield part, getattr(msg, part), data
    if asm.received:
        raise InvalidInput(f"{what}: the stream ended with chunks that no message claims; the sender is broken")


def read_chunks_then(replies: Iterable[Any], *, chunk_field: str, last_field: str, limit: int, what: str,
                     size_field: str | None = None, deadline: float | None = None) -> tuple[Any, bytes]:
    """(closing message, payload) of a chunks-then-close stream, the payload at most `limit` bytes and, with
    `size_field`, exactly the size the closing message states. InvalidInput when the closing message is missing."""
    for part, value, data in read_parts(replies, chunk_field, limit, what, deadline):
        if part == last_field:
            if size_field is not None and getattr(value, size_field) != len(data):
                raise InvalidInput(f"{what}: its size does not match the size its {last_field} states")
            return value, data
        if data:
            raise InvalidInput(f"{what}: chunks arrived before a {part} message, which claims none")
    raise InvalidInput(f"{what}: the stream ended without its {last_field}")


def send_header_first(message: Callable[..., Any], header_field: str, header: Any, chunk_field: str,
                      payload: bytes | Iterable[bytes]) -> Iterator[Any]:
    """`message(header=…)`, then `message(chunk=…)` per piece of `payload` (bytes, or several blobs in order)."""
    yield message(**{header_field: header})
    yield from _chunks(message, chunk_field, payload)


def send_chunks_then(message: Callable[..., Any], chunk_field: str, payload: bytes | Iterable[bytes],
                     last_field: str, last: Any) -> Iterator[Any]:
    """`message(chunk=…)` per piece of `payload` (bytes, or several blobs in order), then `message(last=…)`."""
    yield from _chunks(message, chunk_field, payload)
    yield message(**{last_field: last})


def _chunks(message: Callable[..., Any], chunk_field: str, payload: bytes | Iterable[bytes]) -> Iterator[Any]:
    blobs: Iterable[bytes] = [bytes(payload)] if isinstance(payload, (bytearray, memoryview)) else \
        [payload] if isinstance(payload, bytes) else payload
    for blob in blobs:
        for chunk in split(blob):
            yield message(**{chunk_field: chunk})
