"""Pre-started workers and keyed sessions (fedtrust.isolate): faster, never shared across keys or calls."""
from __future__ import annotations

import os
import threading
import time

import pytest

from fedtrust import isolate
from fedtrust.errors import InvalidInput


# module level, so they pickle by reference
def _pid() -> int:
    return os.getpid()


def _init(tag: str) -> dict:
    if tag == "bad":
        raise InvalidInput("the blob has a bad header")
    return {"tag": tag, "calls": 0}


def _state(state: dict, crash: bool = False) -> tuple[str, int, int]:
    if crash:
        os.abort()
    state["calls"] += 1
    return state["tag"], state["calls"], os.getpid()


def _slow(state: dict, seconds: float) -> str:
    time.sleep(seconds)
    return state["tag"]


def test_pre_started_workers_still_run_one_call_each() -> None:
    pids = {isolate.run_isolated(_pid, timeout=30, what="x") for _ in range(4)}
    assert len(pids) == 4  # four calls, four processes: a worker is never reused
    assert os.getpid() not in pids


def test_session_keeps_state_for_its_key_only() -> None:
    isolate.end_sessions()
    a1 = isolate.run_in_session(("t", "a"), _init, ("a",), _state, timeout=30, what="x")
    a2 = isolate.run_in_session(("t", "a"), _init, ("a",), _state, timeout=30, what="x")
    b1 = isolate.run_in_session(("t", "b"), _init, ("b",), _state, timeout=30, what="x")
    assert a1[:2] == ("a", 1) and a2[:2] == ("a", 2) and a1[2] == a2[2]  # same worker, parsed once
    assert b1[:2] == ("b", 1) and b1[2] != a1[2]  # another key: another worker, another state
    isolate.end_sessions()


def test_failed_session_is_never_reused() -> None:
    isolate.end_sessions()
    first = isolate.run_in_session(("t", "c"), _init, ("c",), _state, timeout=30, what="the blob")
    with pytest.raises(InvalidInput, match=r"^the blob was rejected: the worker process crashed \(SIGABRT\)$"):
        isolate.run_in_session(("t", "c"), _init, ("c",), _state, True, timeout=30, what="the blob")
    again = isolate.run_in_session(("t", "c"), _init, ("c",), _state, timeout=30, what="the blob")
    assert again[:2] == ("c", 1) and again[2] != first[2]  # a fresh worker parsed it again
    with pytest.raises(InvalidInput, match=r"^the blob was rejected: the blob has a bad header$"):
        isolate.run_in_session(("t", "bad"), _init, ("bad",), _state, timeout=30, what="the blob")
    isolate.end_sessions()


def test_sessions_are_bounded() -> None:
    isolate.end_sessions()
    pids = [isolate.run_in_session(("t", str(i)), _init, (str(i),), _state, timeout=30, what="x")[2]
            for i in range(isolate._SESSION_LIMIT + 2)]
    assert len(isolate._sessions) == isolate._SESSION_LIMIT
    # the least recently used key was ended: asking it again starts (and parses in) a new worker
    again = isolate.run_in_session(("t", "0"), _init, ("0",), _state, timeout=30, what="x")
    assert again[1] == 1 and again[2] != pids[0]
    isolate.end_sessions()


def test_a_session_serving_a_call_is_never_evicted(monkeypatch) -> None:
    """More keys than the limit at once (a node serving many contracts): the busy session finishes its call,
    and the newcomer is served by a worker of its own instead of ending the busy one."""
    isolate.end_sessions()
    monkeypatch.setattr(isolate, "_SESSION_LIMIT", 1)
    out: list[object] = []

    def slow_call() -> None:
        try:
            out.append(isolate.run_in_session(("t", "busy"), _init, ("busy",), _slow, 1.5, timeout=30, what="x"))
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            out.append(e)

    t = threading.Thread(target=slow_call)
    t.start()
    deadline = time.monotonic() + 20
    while ("t", "busy") not in isolate._sessions and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isolate.run_in_session(("t", "new"), _init, ("new",), _state, timeout=30, what="x")[:2] == ("new", 1)
    t.join(30)
    assert out == ["busy"]  # not "process object is closed" or a crashed worker
    assert list(isolate._sessions) == [("t", "busy")]  # the newcomer's worker served its call only
    isolate.end_sessions()


def test_a_prepared_worker_serves_exactly_one_call() -> None:
    isolate.prepare(("t", "p"), _init, ("p",))
    first = isolate.run_prepared(("t", "p"), _init, ("p",), _state, timeout=30, what="x")
    second = isolate.run_prepared(("t", "p"), _init, ("p",), _state, timeout=30, what="x")
    assert first[:2] == ("p", 1) and second[:2] == ("p", 1)  # each call its own, freshly initialised worker
    assert first[2] != second[2]
    isolate.prepare(("t", "bad"), _init, ("bad",))
    with pytest.raises(InvalidInput, match=r"^x was rejected: the blob has a bad header$"):
        isolate.run_prepared(("t", "bad"), _init, ("bad",), _state, timeout=30, what="x")


def _add(state: dict, n: int) -> int:
    if n < 0:
        raise InvalidInput("a negative count")
    state["calls"] += n
    return state["calls"]


def _total(state: dict) -> tuple[str, int, int]:
    return state["tag"], state["calls"], os.getpid()


def _wait_prepared(key: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 20
    while key not in isolate._prepared and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_taken_worker_serves_one_job_and_the_next_one_is_ready_for_the_key() -> None:
    key = ("t", "job")
    isolate.prepare(key, _init, ("job",))
    first = isolate.take_prepared(key, _init, ("job",))
    first.send(_add, 2)
    first.send(_add, 3)  # requests of one job, sent as their input arrives
    tag, calls, pid = first.finish(_total, timeout=30, what="x")
    first.close()
    assert (tag, calls) == ("job", 5)
    _wait_prepared(key)  # started when the first was taken: parsed the trusted input, holds nothing else
    second = isolate.take_prepared(key, _init, ("job",))
    try:
        again = second.finish(_total, timeout=30, what="x")
    finally:
        second.close()
    assert again[:2] == ("job", 0) and again[2] != pid  # a fresh process: nothing of the first job's input


def test_a_failed_request_of_a_job_is_raised_by_finish() -> None:
    worker = isolate.take_prepared(("t", "fail"), _init, ("fail",))
    worker.send(_add, 1)
    worker.send(_add, -1)
    with pytest.raises(InvalidInput, match=r"^the input was rejected: a negative count$"):
        worker.finish(_total, timeout=30, what="the input")
    worker.close()


def test_a_prepared_worker_killed_while_it_waited_is_not_blamed_on_the_input() -> None:
    key = ("t", "killed")
    isolate.prepare(key, _init, ("killed",))
    session = isolate._prepared[key][0]
    session.proc.kill()
    session.proc.join(5)
    assert isolate.run_prepared(key, _init, ("killed",), _state, timeout=30, what="x")[:2] == ("killed", 1)
