"""Reading the request streams of the daemons: a header message first, then a payload in chunks, within limits.

Both the node and the coordinator receive streams of this shape (a `header`
carrying the signed job and contract, then the HE context or a Flower message
in chunks); the declared sizes are checked against the limits before a byte
of payload is kept (`fedtrust.transport.chunks.Assembler`).
"""
from __future__ import annotations

from typing import Any, Iterator

from fedtrust.errors import InvalidInput
from fedtrust.transport.chunks import Assembler
from fedtrust.transport.limits import MAX_ENVELOPE_BYTES

__all__ = ["check_envelope_sizes", "read_header", "read_header_and_payload"]


def check_envelope_sizes(msg: Any) -> None:
    """The signed job spec and contract a message carries are within `MAX_ENVELOPE_BYTES`."""
    if len(msg.job_envelope) > MAX_ENVELOPE_BYTES or len(msg.contract_envelope) > MAX_ENVELOPE_BYTES:
        raise InvalidInput(f"job spec or contract exceeds {MAX_ENVELOPE_BYTES} bytes")


def read_header(requests: Iterator[Any], header_field: str = "header") -> Any:
    """A stream's first message: its header, whose envelopes are within their limit."""
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != header_field:
        raise InvalidInput(f"the stream must start with a {header_field} message")
    header = getattr(first, header_field)
    check_envelope_sizes(header)
    return header


def read_header_and_payload(requests: Iterator[Any], header_field: str, size_field: str, chunk_field: str,
                            limit: int, what: str) -> tuple[Any, bytes]:
    """The header, then its payload in `chunk_field` messages: exactly the header's `size_field` bytes, at most `limit`."""
    header = read_header(requests, header_field)
    size = getattr(header, size_field)
    if size > limit:
        raise InvalidInput(f"{what} of {size} bytes exceeds the limit of {limit} bytes")
    asm = Assembler(size, limit, what)
    for msg in requests:
        if msg.WhichOneof("part") != chunk_field:
            raise InvalidInput(f"only {chunk_field} messages may follow the header")
        asm.add(getattr(msg, chunk_field))
    return header, asm.finish()
