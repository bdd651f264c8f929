"""A client-streaming call's messages must arrive within `stream_idle_s` (fedtrust.transport.guard.DeadlineIterator)."""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from fedtrust.errors import InvalidInput
from fedtrust.transport.guard import DeadlineIterator


class FakeContext:
    """What DeadlineIterator uses of a servicer context: `cancel()`, which makes the stream's next read fail."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def stalling(context: FakeContext, first: list[str]):
    """Yields `first`, then waits for a message that never comes (until the call is cancelled)."""
    yield from first
    context.cancelled.wait(30)
    raise grpc.RpcError()


def test_a_stalled_stream_is_cancelled_after_its_idle_time() -> None:
    ctx = FakeContext()
    it = DeadlineIterator(stalling(ctx, []), ctx, 0.2)
    start = time.monotonic()
    with pytest.raises(InvalidInput, match=r"^the caller did not send the stream's header within 0.2 s; the call "
                                           r"was cancelled$"):
        next(it)
    assert 0.15 < time.monotonic() - start < 10


def test_a_stream_stalling_after_its_header_names_the_next_chunk() -> None:
    ctx = FakeContext()
    it = DeadlineIterator(stalling(ctx, ["header"]), ctx, 0.2)
    assert next(it) == "header"
    with pytest.raises(InvalidInput, match="did not send the next chunk within 0.2 s"):
        next(it)


def test_messages_that_arrive_in_time_are_never_cancelled_and_start_no_thread_each() -> None:
    ctx = FakeContext()
    list(DeadlineIterator(iter(["warm-up"]), ctx, 0.1))  # the one watchdog thread of the process exists now
    before = threading.active_count()
    it = DeadlineIterator(iter(range(500)), ctx, 0.1)
    seen = []
    for x in it:
        seen.append(x)
        assert threading.active_count() <= before  # no timer thread per message
    time.sleep(0.3)  # every deadline of those reads has passed: none of them fires
    assert seen == list(range(500)) and not ctx.cancelled.is_set() and not it.expired
