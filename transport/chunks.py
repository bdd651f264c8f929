"""Chunked transfer of large payloads under explicit size limits.

gRPC messages are capped at `MAX_MESSAGE_BYTES`, so HE contexts, ciphertexts
and model updates are streamed as `CHUNK_BYTES` pieces. The receiver never
trusts a declared size: `Assembler` refuses a stream that grows beyond its
declared size or a hard limit *while it arrives*, so a hostile peer cannot
make it buffer more than the limit. Several blobs (e.g. a list of
ciphertexts) travel as one concatenated chunk stream plus the list of their
sizes: `frame` / `unframe`.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from fedtrust.errors import InvalidInput
from fedtrust.transport.limits import CHUNK_BYTES

__all__ = ["split", "Assembler", "frame", "unframe"]


def split(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """`data` in pieces of at most `size` bytes (nothing for empty data)."""
    if size < 1:
        raise ValueError("chunk size must be at least 1 byte")
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


class Assembler:
    """Collects the chunks of one payload of a declared size.

    `expected` is the size the sender declared (None when the sizes come only
    after the data, as in `Release.ciphertext_sizes`; then only `limit`
    applies until `unframe`). InvalidInput as soon as the data exceeds the
    declared size or `limit`, and from `finish()` when it is short.
    `what` names the payload in messages ("HE context").
    """

    def __init__(self, expected: int | None, limit: int, what: str) -> None:
        self.what = what
        self.limit = limit
        self.expected = expected
        self._buf = bytearray()
        if expected is not None:
            if expected < 0:
                raise InvalidInput(f"{what} declares a negative size; the sender is broken")
            if expected > limit:
                raise InvalidInput(self._too_large())

    def _too_large(self) -> str:
        return (
            f"{self.what} exceeds {self.limit} bytes; the limit is fixed by the protocol, "
            f"send a smaller {self.what}"
        )

    @property
    def received(self) -> int:
        return len(self._buf)

    def add(self, chunk: bytes) -> None:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"{self.what} chunk is not bytes; the sender is broken")
        total = len(self._buf) + len(chunk)
        if total > self.limit:
            raise InvalidInput(self._too_large())
        if self.expected is not None and total > self.expected:
            raise InvalidInput(
                f"{self.what} is longer than its declared size of {self.expected} bytes; "
                "the sender must declare the exact size"
            )
        self._buf += chunk

    def finish(self, view: bool = False) -> bytes:
        """The assembled payload; InvalidInput when shorter than declared.

        With `view`, a read-only memoryview of the assembled bytes instead of a copy (for model-sized
        payloads that are only hashed and read as arrays); the Assembler takes no more chunks then.
        """
        if self.expected is not None and len(self._buf) != self.expected:
            raise InvalidInput(
                f"{self.what} ended after {len(self._buf)} of its declared {self.expected} "
                "bytes; the stream was cut short or the declared size is wrong"
            )
        if view:
            return memoryview(self._buf).toreadonly()  # type: ignore[return-value]
        return bytes(self._buf)


def frame(blobs: Sequence[bytes], size: int = CHUNK_BYTES) -> tuple[list[int], Iterator[bytes]]:
    """(sizes, chunks): the blobs' sizes in order, and their concatenation in
    pieces of at most `size` bytes (a piece may span two blobs)."""
    sizes = [len(b) for b in blobs]

    def chunks() -> Iterator[bytes]:
        pending = bytearray()
        for blob in blobs:
            view = memoryview(blob)
            while len(view):
                take = min(size - len(pending), len(view))
                pending += view[:take]
                view = view[take:]
                if len(pending) == size:
                    yield bytes(pending)
                    pending.clear()
        if pending:
            yield bytes(pending)

    if size < 1:
        raise ValueError("chunk size must be at least 1 byte")
    return sizes, chunks()


def unframe(
    sizes: Sequence[int],
    chunks: Iterable[bytes] | bytes,
    *,
    what: str,
    limit: int,
    limit_each: int | None = None,
    max_count: int | None = None,
) -> list[bytes]:
    """Split concatenated chunks back into blobs of the given sizes.

    InvalidInput when there are more than `max_count` blobs, one is larger
    than `limit_each`, they total more than `limit`, or the data does not
    add up to exactly the sizes. `chunks` may also be the already assembled
    bytes (e.g. from an `Assembler(None, limit, what)`).
    """
    sizes = list(sizes)
    if max_count is not None and len(sizes) > max_count:
        raise InvalidInput(
            f"{what}: {len(sizes)} items exceed the limit of {max_count}; the sender is broken "
            "or the job does not match its plan"
        )
    for n in sizes:
        if not isinstance(n, int) or n < 0:
            raise InvalidInput(f"{what}: an item size is not a non-negative integer; the sender is broken")
        if limit_each is not None and n > limit_each:
            raise InvalidInput(f"{what}: an item exceeds {limit_each} bytes; the limit is fixed by the protocol")
    total = sum(sizes)
    assembler = Assembler(total, limit, what)
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = [bytes(chunks)]
    for chunk in chunks:
        assembler.add(chunk)
    data = memoryview(assembler.finish())
    out, pos = [], 0
    for n in sizes:
        out.append(bytes(data[pos : pos + n]))
        pos += n
    return out
