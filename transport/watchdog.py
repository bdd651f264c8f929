"""One watchdog thread per process: callbacks run when their deadline passes, unless disarmed first.

Stream reads (`transport.guard.DeadlineIterator`) and client calls (`transport.status.cancel_late`) arm it
instead of starting a timer thread each.
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("fedtrust.transport")

__all__ = ["WATCHDOG"]


class _Watchdog:
    """One daemon thread that runs callbacks whose deadline passed, for the whole process: every
    `DeadlineIterator` (`transport.guard`) and every client call's local bound (`transport.status.cancel_late`).

    Arming and disarming is a heap push and a flag under a lock: reading a stream's message no longer starts a
    timer thread of its own (two per streamed call and more per chunk). The thread sleeps until the earliest
    deadline; a disarmed entry is dropped when its deadline comes.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, list]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, callback: Callable[[], None]) -> list:
        """Run `callback` in `seconds` unless `disarm`ed first; returns the handle to disarm."""
        entry: list = [callback]
        when = time.monotonic() + seconds
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, entry))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fedtrust-stream-watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is entry:  # earlier than what the thread sleeps towards
                self._cond.notify()
        return entry

    @staticmethod
    def disarm(entry: list) -> None:
        entry[0] = None

    def _run(self) -> None:
        while True:
            due: list[Callable[[], None]] = []
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                when, _, entry = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                if entry[0] is not None:
                    due.append(entry[0])
            for callback in due:
                try:
                    callback()
                except Exception:  # noqa: BLE001 - one failing callback must not stop the others
                    log.exception("a stream deadline callback failed")


#: the process's one watchdog
WATCHDOG = _Watchdog()
