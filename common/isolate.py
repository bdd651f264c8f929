"""Run untrusted parsing in a throw-away worker process.

Role
----
A node or coordinator daemon must parse bytes it received from the network
with native code (TenSEAL / Microsoft SEAL): the buyer's public HE context,
other nodes' ciphertexts. A bug in that native code, or a crafted input that
trips it (segfault, abort, runaway allocation, endless loop), must not take
the daemon down or corrupt its memory. `run_isolated` therefore runs a
module-level function in a *fresh* worker process per call and turns every
way that process can fail into one `InvalidInput`:
``"<what> was rejected: <reason>"``.

Security reasoning
------------------
- One process per call, never reused: whatever a malicious input does to the
  worker's heap cannot influence a later call (another job, another buyer).
  Up to `SPARES` workers are started ahead of time and wait, holding no data,
  for their one call (the parent sends it over the worker's private pipe),
  so a call does not wait for a process start; each still exits after it.
- Start method ``forkserver`` (``spawn`` where that is missing), never a
  plain ``fork`` of the daemon: the daemon runs gRPC threads, and forking a
  multi-threaded process can deadlock the child on locks held by other
  threads; it would also copy the daemon's secrets (TLS and signing keys)
  into the process that parses hostile input. The fork server is a fresh
  interpreter that only imports the modules named in its preload list
  (``fedtrust.isolate`` and whatever `preload` registered, e.g. TenSEAL), so
  each worker is forked from a small, single-purpose, key-free process and
  starts in milliseconds with TenSEAL already imported.
- Only plain data crosses the boundary: bytes, ints, lists of them, and
  short strings. The parent pickles arguments to its *own* worker over a
  private pipe and unpickles what that worker sends back (the result, or an
  error *message* — exception objects are never sent). Nothing received
  from the network is unpickled: the worker gets raw bytes and parses them
  with TenSEAL.
- A crash is detected from the worker's exit (signal or status); a timeout
  kills the worker (SIGKILL). An optional address-space limit turns a
  runaway allocation into a MemoryError inside the worker instead of
  pressure on the host.
- Messages name what failed, never a data value: an `InvalidInput` raised by
  the worker function is passed on with its message (it is fedtrust code
  that words it); any other exception is reported by its type name only.

It is safe to call from several threads at once: every call has its own
process and pipe; the few multiprocessing book-keeping calls that are not
thread-safe run under a module lock.

Usage notes
-----------
- As with any ``forkserver``/``spawn`` use of multiprocessing, the program's
  main module must be import-safe (``if __name__ == "__main__":``): the
  fork server imports it once so that workers need not. The ``fedtrust``
  console script, ``python -m …`` and pytest all are.
- Import the modules that register preloads (``fedtrust.privacy.he``) before
  the first call; the fork server starts on the first call and keeps its
  preload list from then on. It is shared with any other forkserver user in
  the process.
- Cost (2-core dev VM, Python 3.11): ~0.1 s for the first call (fork server
  start, TenSEAL import), then ~6–20 ms per call depending on how much the
  main module imports.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import sys
import threading
import time
import types
from collections import OrderedDict
from typing import Any, Callable

from fedtrust.errors import InvalidInput

__all__ = ["run_isolated", "run_in_session", "end_sessions", "prepare", "run_prepared", "take_prepared",
           "PreparedWorker", "preload", "start_worker"]

_lock = threading.Lock()
_context: Any = None
# Workers run functions of fedtrust's own modules only, so they never need the
# caller's main module: `_start` hides it while a worker starts (see there).
_preload: list[str] = ["fedtrust.isolate", "fedtrust.errors"]
_NO_MAIN = types.ModuleType("__main__")


def _start(proc: Any) -> None:
    """Start a worker without the caller's `__main__`.

    multiprocessing sends the main module's path or name to every new worker,
    which re-runs it before it reads its arguments (spawn semantics, also
    under forkserver). For a daemon started from a script that re-imports the
    whole daemon (gRPC, DuckDB, …): measured 250-800 ms per call against
    ~40 ms without. While the lock is held the main module is swapped for an
    empty one, so the preparation data names no main module at all.
    """
    real = sys.modules.get("__main__")
    sys.modules["__main__"] = _NO_MAIN
    try:
        proc.start()
    finally:
        if real is not None:
            sys.modules["__main__"] = real


def preload(*modules: str) -> None:
    """Ask the fork server to import `modules` before it forks any worker.

    Only effective before the first `run_isolated` call of the process (the
    fork server starts then); later calls are harmless no-ops. Modules that
    fail to import are skipped by the fork server (the worker imports them
    itself then, just more slowly).
    """
    with _lock:
        for m in modules:
            if m not in _preload:
                _preload.append(m)
        if _context is not None and hasattr(_context, "set_forkserver_preload"):
            # Still takes effect if the fork server has not been started yet.
            _context.set_forkserver_preload(list(_preload))


def _get_context() -> Any:
    global _context
    with _lock:
        if _context is None:
            methods = multiprocessing.get_all_start_methods()
            if "forkserver" in methods:
                forkserver = multiprocessing.get_context("forkserver")
                forkserver.set_forkserver_preload(list(_preload))
                _context = forkserver
            else:  # pragma: no cover - platforms without forkserver (Windows)
                _context = multiprocessing.get_context("spawn")
        return _context


def _worker_main(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], memory_limit: int | None) -> None:
    """Body of the worker process: run `fn`, send back ("ok", result) or a message."""
    try:
        if memory_limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        result = fn(*args)
        reply: tuple[str, Any] = ("ok", result)
    except InvalidInput as e:
        reply = ("invalid", str(e))
    except MemoryError:
        reply = ("error", "it needed more memory than allowed")
    except RecursionError:
        reply = ("error", "it nested too deeply")
    except BaseException as e:  # noqa: BLE001 - everything becomes a message
        reply = ("error", f"the worker raised {type(e).__name__}")
    try:
        conn.send(reply)
    except BaseException as e:  # noqa: BLE001 - e.g. an unpicklable result
        try:
            conn.send(("error", f"its result could not be sent back ({type(e).__name__})"))
        except BaseException:  # noqa: BLE001
            pass
    finally:
        conn.close()


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "the worker process vanished"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the worker process crashed ({name})"
    return f"the worker process exited with status {exitcode} without a result"


#: Workers started ahead of time, each waiting for its one call (see `_take_spare`).
SPARES = 2
_spares: list[tuple[Any, Any]] = []
_spares_pid: int | None = None
_refilling = False


def _spare_main(conn: Any) -> None:
    """Body of a pre-started worker: wait for exactly one call from the parent, run it, exit."""
    try:
        fn, args, memory_limit = conn.recv()  # sent by the parent that started us: never network data
    except BaseException:  # noqa: BLE001 - the parent went away (EOF) or shut the pool down
        conn.close()
        return
    _worker_main(conn, fn, args, memory_limit)


def _new_spare() -> tuple[Any, Any]:
    ctx = _get_context()
    parent_end, child_end = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=_spare_main, args=(child_end,), name="fedtrust-isolate", daemon=True)
    try:
        with _lock:  # Process.start() reaps other children: not thread-safe with join()
            _start(proc)
    finally:
        child_end.close()
    return proc, parent_end


def _refill() -> None:
    global _refilling
    try:
        while True:
            with _lock:
                if len(_spares) >= SPARES or _spares_pid != os.getpid():
                    return
            spare = _new_spare()
            with _lock:
                _spares.append(spare)
    except Exception:  # noqa: BLE001 - a spare that cannot start now is started on demand later
        return
    finally:
        with _lock:
            _refilling = False


def _take_spare() -> tuple[Any, Any]:
    """A fresh worker for one call: a pre-started one when there is one, else started now.

    Pre-starting only moves the start (fork from the key-free fork server) off
    the caller's path: every worker still runs exactly one call and exits, so
    nothing one input does to a worker can reach another call. A refill
    thread keeps `SPARES` waiting (they hold no data until their call).
    """
    global _spares_pid, _refilling
    spare = None
    with _lock:
        if _spares_pid != os.getpid():  # a forked child never uses its parent's workers
            _spares.clear()
            _spares_pid = os.getpid()
        while _spares and spare is None:
            proc, conn = _spares.pop(0)
            proc.join(0)
            if proc.exitcode is None:
                spare = (proc, conn)
            else:  # died while waiting (e.g. killed by the host): drop it
                conn.close()
        start_refill = SPARES > 0 and not _refilling
        if start_refill:
            _refilling = True
    if start_refill:
        threading.Thread(target=_refill, name="fedtrust-isolate-refill", daemon=True).start()
    return spare if spare is not None else _new_spare()


def run_isolated(
    fn: Callable[..., Any],
    *args: Any,
    timeout: float,
    what: str,
    memory_limit: int | None = None,
) -> Any:
    """Run ``fn(*args)`` in a fresh worker process (pre-started, never reused) and return its result.

    `fn` must be a module-level function (it is pickled by reference);
    `args` and the result should be plain data (bytes, ints, str, lists,
    tuples). `timeout` is in seconds, for the whole call. `what` names the
    input for the error message, e.g. ``"the buyer's HE context"``.
    `memory_limit` (bytes) caps the worker's address space.

    Raises `InvalidInput("<what> was rejected: <reason>")` when the function
    raises, the worker crashes (any signal, any exit without a result) or
    the timeout passes (the worker is killed). The calling process is never
    affected.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    proc, conn = _take_spare()
    deadline = time.monotonic() + timeout
    reply = None
    failure: str | None = None
    try:
        try:
            conn.send((fn, args, memory_limit))  # our own data, to our own worker
        except (OSError, ValueError):  # the spare died while it waited: its exit status says how
            pass
        try:
            remaining = max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait([conn, proc.sentinel], remaining)
            if not ready:
                failure = f"it took longer than {timeout:g} s"
            elif conn.poll():
                try:
                    reply = conn.recv()
                except (EOFError, OSError, pickle.UnpicklingError):  # died mid-message
                    reply = None
            if reply is None and failure is None:
                # Pipe closed without a message: the worker died. Wait for its status.
                multiprocessing.connection.wait([proc.sentinel], max(0.0, deadline - time.monotonic()) + 1.0)
                with _lock:
                    proc.join(0)
                    exitcode = proc.exitcode
                failure = _exit_reason(exitcode)
        finally:
            if failure is None and reply is not None:
                # it answered and is exiting: reap it off the caller's path (killed if it lingers)
                threading.Thread(target=_reap, args=(proc, 2.0), name="fedtrust-isolate-reap", daemon=True).start()
            else:
                _reap(proc, 0.0 if failure is not None and reply is None else 2.0)
    finally:
        conn.close()

    if failure is not None:
        raise InvalidInput(f"{what} was rejected: {failure}")
    if not (isinstance(reply, tuple) and len(reply) == 2):
        raise InvalidInput(f"{what} was rejected: the worker answered malformed data")
    status, value = reply
    if status == "ok":
        return value
    raise InvalidInput(f"{what} was rejected: {value}")


def _reap(proc: Any, grace: float) -> None:
    """Make sure the worker is gone (SIGKILL after `grace` s) and its resources released."""
    try:
        if not multiprocessing.connection.wait([proc.sentinel], grace):
            proc.kill()
            multiprocessing.connection.wait([proc.sentinel], 5.0)
        with _lock:  # reading the exit status races with Process.start()'s reaping
            proc.join(0)
            if proc.exitcode is not None:
                proc.close()
    except (ValueError, AssertionError, OSError):  # never started or already closed
        pass


def start_worker(fn: Callable[..., Any], *args: Any, name: str) -> tuple[Any, Any]:
    """Start ``fn(conn, *args)`` in a long-lived worker process; returns (process, receiving end of a pipe).

    For jobs that report as they go (a training job's strategy loop, which
    needs a process of its own because Flower's task identity is
    process-global). Same start method and fast start as `run_isolated`; the
    worker sends plain data through `conn`; the caller owns the process and
    must kill it (`Process.kill`) when it no longer wants it.
    """
    ctx = _get_context()
    recv_conn, send_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=fn, args=(send_conn, *args), name=name, daemon=True)
    with _lock:
        _start(proc)
    send_conn.close()
    return proc, recv_conn


# --------------------------------------------------------------------------- keyed sessions
#
# A session is a worker that keeps what it parsed (e.g. a buyer's HE context) for
# further calls *under the same key* — the caller chooses a key that names one
# party's input and one purpose (a node uses (contract digest, context digest)),
# so a session never handles another key's data. Everything else is as for
# `run_isolated`: the worker is forked from the key-free fork server, a crash,
# timeout or error ends the session (the next call starts a new one), and the
# worker's address space is capped. Use it only where everything a session sees
# is input of the key's owner or data that owner may see anyway.

_SESSION_LIMIT = 16
_SESSION_IDLE_S = 120.0


def _session_main(conn: Any, init: Callable[..., Any], init_args: tuple[Any, ...], memory_limit: int | None) -> None:
    """Body of a session worker: state = init(*init_args), then answer fn(state, *args) per request."""
    try:
        if memory_limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        state = init(*init_args)
        conn.send(("ok", None))
    except BaseException as e:  # noqa: BLE001
        _send_failure(conn, e)
        conn.close()
        return
    while True:
        try:
            request = conn.recv()  # from the parent that started us: never network-decoded objects
        except BaseException:  # noqa: BLE001 - the parent closed the session
            break
        if request is None:
            break
        fn, args = request
        try:
            conn.send(("ok", fn(state, *args)))
        except BaseException as e:  # noqa: BLE001
            _send_failure(conn, e)
            break  # a session that failed once is never used again
    conn.close()


def _send_failure(conn: Any, e: BaseException) -> None:
    if isinstance(e, InvalidInput):
        reply = ("invalid", str(e))
    elif isinstance(e, MemoryError):
        reply = ("error", "it needed more memory than allowed")
    elif isinstance(e, RecursionError):
        reply = ("error", "it nested too deeply")
    else:
        reply = ("error", f"the worker raised {type(e).__name__}")
    try:
        conn.send(reply)
    except BaseException:  # noqa: BLE001
        pass


class _Session:
    def __init__(self, proc: Any, conn: Any) -> None:
        self.proc, self.conn = proc, conn
        self.busy = threading.Lock()
        self.used = time.monotonic()

    def ask(self, request: Any, deadline: float, timeout: float) -> tuple[str | None, Any]:
        """(failure, reply): exactly one is not None."""
        try:
            if request is not None:
                self.conn.send(request)
            ready = multiprocessing.connection.wait([self.conn, self.proc.sentinel],
                                                    max(0.0, deadline - time.monotonic()))
            if not ready:
                return f"it took longer than {timeout:g} s", None
            if self.conn.poll():
                reply = self.conn.recv()
                if isinstance(reply, tuple) and len(reply) == 2:
                    return None, reply
                return "the worker answered malformed data", None
        except (EOFError, OSError, ValueError, pickle.UnpicklingError):
            pass
        multiprocessing.connection.wait([self.proc.sentinel], max(0.0, deadline - time.monotonic()) + 1.0)
        with _lock:
            self.proc.join(0)
            exitcode = self.proc.exitcode
        return _exit_reason(exitcode), None

    def end(self, reap_here: bool = False) -> None:
        """Ask the worker to exit and reap it (in a thread of its own, or in this one with `reap_here`)."""
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.conn.close()
        if reap_here:
            _reap(self.proc, 1.0)
        else:
            threading.Thread(target=_reap, args=(self.proc, 1.0), name="fedtrust-isolate-reap", daemon=True).start()


_sessions: "dict[tuple[str, ...], _Session]" = {}
_sessions_lock = threading.Lock()


def _spawn_session(init: Callable[..., Any], init_args: tuple[Any, ...], memory_limit: int | None,
                   name: str) -> _Session:
    """Start a worker that runs ``init(*init_args)`` and then serves calls over its own pipe."""
    ctx = _get_context()
    parent_end, child_end = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=_session_main, args=(child_end, init, init_args, memory_limit), name=name,
                       daemon=True)
    try:
        with _lock:
            _start(proc)
    finally:
        child_end.close()
    return _Session(proc, parent_end)


def _drop(key: tuple[str, ...], session: _Session) -> None:
    with _sessions_lock:
        if _sessions.get(key) is session:
            del _sessions[key]
    session.end()


def run_in_session(
    key: tuple[str, ...],
    init: Callable[..., Any],
    init_args: tuple[Any, ...],
    fn: Callable[..., Any],
    *args: Any,
    timeout: float,
    what: str,
    memory_limit: int | None = None,
) -> Any:
    """``fn(state, *args)`` in the worker kept for `key`, whose state is ``init(*init_args)``.

    The first call for a key (or the first after a failure, an eviction or
    `_SESSION_IDLE_S` idle seconds) starts the worker and runs `init`; later
    calls skip it. At most `_SESSION_LIMIT` sessions live at once (least
    recently used ones end first). A call that finds the key's session busy
    runs in a one-off worker instead (init + fn). Failures raise
    ``InvalidInput("<what> was rejected: <reason>")`` and end the session.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    now = time.monotonic()
    stale: list[_Session] = []
    with _sessions_lock:
        for k, s in list(_sessions.items()):
            # an ended session keeps its busy lock held: a thread that found it a moment ago runs one-off instead
            if now - s.used > _SESSION_IDLE_S and s.busy.acquire(blocking=False):
                stale.append(_sessions.pop(k))
        session = _sessions.get(key)
    for s in stale:
        s.end()
    fresh = session is None
    if session is None:
        session = _spawn_session(init, init_args, memory_limit, "fedtrust-isolate-session")
        session.busy.acquire()  # ours until its first call is answered
        evicted: list[_Session] = []
        kept = False
        with _sessions_lock:
            other = _sessions.get(key)
            if other is None:
                # least recently used first, and never one that is serving a call (its busy lock is held)
                for k in sorted(_sessions, key=lambda k: _sessions[k].used):
                    if len(_sessions) < _SESSION_LIMIT:
                        break
                    if _sessions[k].busy.acquire(blocking=False):
                        evicted.append(_sessions.pop(k))
                kept = len(_sessions) < _SESSION_LIMIT
                if kept:
                    _sessions[key] = session
        for s in evicted:
            s.end()
        if other is not None or not kept:
            # another thread started one for this key meanwhile, or every kept session is busy: ours serves
            # this call only
            try:
                return _call(None, session, True, fn, args, timeout, what)
            finally:
                session.busy.release()
                session.end()
        got = True
    else:
        got = session.busy.acquire(blocking=False)
    if not got:
        return run_isolated(_one_off, init, init_args, fn, args, timeout=timeout, what=what, memory_limit=memory_limit)
    try:
        return _call(key, session, fresh, fn, args, timeout, what)
    finally:
        session.busy.release()


def _call(key: tuple[str, ...] | None, session: _Session, fresh: bool, fn: Callable[..., Any],
          args: tuple[Any, ...], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    steps = [None, (fn, args)] if fresh else [(fn, args)]
    reply: Any = None
    for request in steps:  # the session's own answer to init, then fn's
        failure, reply = session.ask(request, deadline, timeout)
        if failure is None and reply[0] != "ok":
            failure = reply[1]
        if failure is not None:
            if key is not None:
                _drop(key, session)
            raise InvalidInput(f"{what} was rejected: {failure}")
    session.used = time.monotonic()
    return reply[1]


def _one_off(init: Callable[..., Any], init_args: tuple[Any, ...], fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(init(*init_args), *args)


def end_sessions() -> None:
    """End every session of this process (daemons call it when they stop)."""
    with _sessions_lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for s in sessions:
        s.end()


# --------------------------------------------------------------------------- prepared one-call workers
#
# For a call whose expensive set-up reads only the caller's own trusted input
# (the buyer's own public context) while its real argument is untrusted (other
# parties' ciphertexts): `prepare` starts the worker and runs `init` before the
# untrusted data exists; `run_prepared` then sends it that data once and ends
# the worker, exactly like `run_isolated` — nothing the untrusted input does can
# reach a later call. As soon as a prepared worker's job is over, the next one for
# the same key is started off the caller's path (it runs `init` on the same trusted
# input and waits, holding no untrusted data), so a process that runs one job
# after another (the buyer's API, the benchmarks) finds one warm: a key's
# worker is still used for exactly one call, never reused.

_PREPARED_LIMIT = 4
#: a prepared worker nobody took for this long is ended (the next `prepare` starts another)
_PREPARED_IDLE_S = _SESSION_IDLE_S
_prepared: "OrderedDict[tuple[str, ...], tuple[_Session, tuple[Any, ...]]]" = OrderedDict()


def _alive(session: _Session) -> bool:
    with _lock:  # reading the exit status races with Process.start()'s reaping
        session.proc.join(0)
        return session.proc.exitcode is None


def _keep_prepared(key: tuple[str, ...], session: _Session, spec: tuple[Any, ...]) -> None:
    now = time.monotonic()
    old: list[_Session] = []
    with _sessions_lock:
        for k, (s, _) in list(_prepared.items()):
            if now - s.used > _PREPARED_IDLE_S:
                old.append(_prepared.pop(k)[0])
        if key in _prepared:
            old.append(_prepared.pop(key)[0])
        _prepared[key] = (session, spec)
        while len(_prepared) > _PREPARED_LIMIT:
            old.append(_prepared.popitem(last=False)[1][0])
    for s in old:
        s.end()


def prepare(key: tuple[str, ...], init: Callable[..., Any], init_args: tuple[Any, ...],
            memory_limit: int | None = None) -> None:
    """Make sure a one-call worker for `key` has run (or is running) ``init(*init_args)``; returns at once when
    one is waiting or on its way already, else after starting it."""
    with _sessions_lock:
        entry = _prepared.get(key)
        coming = key in _coming
    if coming or (entry is not None and time.monotonic() - entry[0].used <= _PREPARED_IDLE_S and _alive(entry[0])):
        return
    _keep_prepared(key, _spawn_session(init, init_args, memory_limit, "fedtrust-isolate-prepared"),
                   (init, init_args, memory_limit))


#: keys whose next prepared worker is being started (set when it is kept, or when starting it failed)
_coming: dict[tuple[str, ...], threading.Event] = {}
#: how long `run_prepared` waits for a worker on its way before it starts one of its own
_COMING_WAIT_S = 10.0


def _prepare_next(key: tuple[str, ...], spec: tuple[Any, ...]) -> None:
    with _sessions_lock:
        if key in _coming or key in _prepared:
            return
        done = _coming[key] = threading.Event()
    try:
        _keep_prepared(key, _spawn_session(spec[0], spec[1], spec[2], "fedtrust-isolate-prepared"), spec)
    except Exception:  # noqa: BLE001 - no worker waiting: the next call starts one itself
        pass
    finally:
        with _sessions_lock:
            _coming.pop(key, None)
        done.set()


def run_prepared(key: tuple[str, ...], init: Callable[..., Any], init_args: tuple[Any, ...],
                 fn: Callable[..., Any], *args: Any, timeout: float, what: str,
                 memory_limit: int | None = None) -> Any:
    """``fn(init(*init_args), *args)`` in the worker `prepare` started for `key` (else in a fresh one); one call.

    The worker taken is replaced at once by a new one for the same key (see above)."""
    worker = take_prepared(key, init, init_args, memory_limit)
    try:
        return worker.finish(fn, *args, timeout=timeout, what=what)
    finally:
        worker.close()


def take_prepared(key: tuple[str, ...], init: Callable[..., Any], init_args: tuple[Any, ...],
                  memory_limit: int | None = None) -> "PreparedWorker":
    """The worker `prepare` started for `key` (waiting for one on its way), else one started now, for one job."""
    with _sessions_lock:
        entry = _prepared.pop(key, None)
        coming = _coming.get(key) if entry is None else None
    if coming is not None and coming.wait(_COMING_WAIT_S):
        with _sessions_lock:
            entry = _prepared.pop(key, None)
    if entry is not None and not _alive(entry[0]):  # killed while it waited: not the input's fault
        entry[0].end()
        entry = None
    spec = (init, init_args, memory_limit)
    if entry is None:
        entry = (_spawn_session(init, init_args, memory_limit, "fedtrust-isolate-prepared"), spec)
    return PreparedWorker(key, *entry)


class PreparedWorker:
    """A prepared worker taken for one job: `send` requests as their (untrusted) input arrives, then `finish`.

    Requests go out from a thread of their own, so a caller reading a stream never waits for the worker; the
    worker answers them in order, and `finish` reads every answer within its timeout. The worker serves this
    job only: `close` ends it, and the same thread then reaps it and starts the key's next one (the module's
    comment above), all off the caller's path.
    """

    def __init__(self, key: tuple[str, ...], session: _Session, spec: tuple[Any, ...]) -> None:
        self.key, self.session, self.spec = key, session, spec
        self._answers = 1  # the worker's answer to its init comes first
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._finished = False
        self._closed = False
        self._sender = threading.Thread(target=self._send_all, name="fedtrust-isolate-send", daemon=True)
        self._sender.start()

    def _send_all(self) -> None:
        broken = False
        while True:
            request = self._queue.get()
            if request is None:  # `close`: the caller no longer reads the worker's answers
                break
            if broken:
                continue
            try:
                self.session.conn.send(request)  # our own data, to our own worker
            except (OSError, ValueError):  # the worker died: `finish` reads its exit status
                broken = True
        self.session.end(reap_here=True)
        _prepare_next(self.key, self.spec)

    def send(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(state, *args)``; its answer is read (and a failure raised) by `finish`."""
        self._answers += 1
        self._queue.put((fn, args))

    def finish(self, fn: Callable[..., Any], *args: Any, timeout: float, what: str) -> Any:
        """``fn(state, *args)`` after every request sent before; InvalidInput("<what> was rejected: <reason>") for
        the first that failed (or a crash, or the timeout)."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.send(fn, *args)
        deadline = time.monotonic() + timeout
        reply: Any = None
        for _ in range(self._answers):
            failure, reply = self.session.ask(None, deadline, timeout)
            if failure is None and reply[0] != "ok":
                failure = reply[1]
            if failure is not None:
                self.close()
                raise InvalidInput(f"{what} was rejected: {failure}")
        self._answers = 0
        self._finished = True
        return reply[1]

    def close(self) -> None:
        """End the worker (it is never used again); its sender thread reaps it and starts the key's next one."""
        if self._closed:
            return
        self._closed = True
        if not self._finished:
            # a job that ended early, or a worker that failed or stalled: it may be busy with input nobody will
            # read (or not reading at all, with the sender blocked on it); killing it frees the sender
            self.session.proc.kill()
        self._queue.put(None)
