"""fedtrust.isolate: crashes, timeouts and errors in the worker never reach the caller."""
from __future__ import annotations

import os
import threading
import time

import pytest

from fedtrust.errors import InvalidInput
from fedtrust.isolate import run_isolated


# Worker bodies: module level, so they pickle by reference.
def _add(a: int, b: int) -> int:
    return a + b


def _echo(data: bytes) -> bytes:
    return data[::-1]


def _abort() -> None:
    os.abort()


def _segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def _sleep_forever(pid_file: str) -> None:
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


def _raise_value_error() -> None:
    raise ValueError("value 424242 is secret")


def _raise_invalid() -> None:
    raise InvalidInput("the blob has a bad header")


def _allocate_huge() -> int:
    return len(bytearray(16 * 1024**3))


def _exit_quietly() -> None:
    os._exit(3)


def _unpicklable() -> object:
    return threading.Lock()


def _crash_or_add(i: int) -> int:
    if i % 3 == 0:
        os.abort()
    return i * 2


def test_returns_result() -> None:
    assert run_isolated(_add, 2, 3, timeout=30, what="x") == 5
    blob = os.urandom(2 * 1024 * 1024)
    assert run_isolated(_echo, blob, timeout=30, what="x") == blob[::-1]


@pytest.mark.parametrize("fn, reason", [(_abort, "SIGABRT"), (_segfault, "SIGSEGV")])
def test_crash_becomes_invalid_input(fn, reason) -> None:
    with pytest.raises(InvalidInput, match=f"^the blob was rejected: .*{reason}"):
        run_isolated(fn, timeout=30, what="the blob")
    # the calling process is fine and the next call works
    assert run_isolated(_add, 1, 1, timeout=30, what="x") == 2


def test_exit_without_result() -> None:
    with pytest.raises(InvalidInput, match="exited with status 3"):
        run_isolated(_exit_quietly, timeout=30, what="the blob")


def test_exception_type_only_no_value() -> None:
    with pytest.raises(InvalidInput) as info:
        run_isolated(_raise_value_error, timeout=30, what="the blob")
    assert "ValueError" in str(info.value)
    assert "424242" not in str(info.value)


def test_invalid_input_message_passes_through() -> None:
    with pytest.raises(InvalidInput, match="^the blob was rejected: the blob has a bad header$"):
        run_isolated(_raise_invalid, timeout=30, what="the blob")


def test_memory_limit() -> None:
    with pytest.raises(InvalidInput, match="more memory"):
        run_isolated(_allocate_huge, timeout=30, what="the blob", memory_limit=1024**3)


def test_unpicklable_result() -> None:
    with pytest.raises(InvalidInput, match="could not be sent back"):
        run_isolated(_unpicklable, timeout=30, what="the blob")


def test_timeout_kills_worker(tmp_path) -> None:
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    with pytest.raises(InvalidInput, match="longer than 1 s"):
        run_isolated(_sleep_forever, str(pid_file), timeout=1.0, what="the blob")
    assert time.monotonic() - start < 5
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the timed-out worker is still running")


def test_concurrent_calls_from_threads() -> None:
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = run_isolated(_crash_or_add, i, timeout=30, what=f"item {i}")
        except InvalidInput as e:
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    for i in range(12):
        if i % 3 == 0:
            assert isinstance(results[i], InvalidInput)
            assert str(results[i]).startswith(f"item {i} was rejected")
        else:
            assert results[i] == i * 2
