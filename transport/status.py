"""The one mapping between fedtrust errors and gRPC status codes.

Servicers wrap every RPC method in `guarded`: a `fedtrust.errors.Error`
becomes its status code with the error's message as details (messages are
written to be safe to send: they name the broken rule, not data), and the
error's `kind` travels in the trailing metadata `fedtrust-error-kind`, so the
caller rebuilds the same class with `error_from_rpc`. Any other exception is
a bug: it is logged locally with its traceback and the caller gets INTERNAL
with a generic message, never the exception text, and the daemon keeps
serving.

Mapping (most specific class first):

    InvalidInput, ConfigError -> INVALID_ARGUMENT
    VerificationError         -> UNAUTHENTICATED   (a certificate, signature or
                                 signed object did not verify, or the caller is
                                 not the party the contract names: the request's
                                 credentials are not valid for it)
    BudgetExhausted           -> RESOURCE_EXHAUSTED
    PolicyViolation           -> PERMISSION_DENIED (authenticated, but the
                                 contract's rules forbid it)
    ReplayError               -> ALREADY_EXISTS
    NotFound                  -> NOT_FOUND
    NodeUnreachable           -> UNAVAILABLE
    JobFailed                 -> ABORTED
    Overloaded                -> RESOURCE_EXHAUSTED (too many calls from one caller)
    ContextNeeded             -> FAILED_PRECONDITION (a job named the buyer's HE
                                 context by digest only, and the callee keeps no
                                 copy: the caller resends it)
    anything else             -> INTERNAL "internal error; see the daemon log"
"""
from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, NoReturn, TypeVar

import grpc

from fedtrust import errors
from fedtrust.errors import Error
from fedtrust.transport.watchdog import WATCHDOG

__all__ = [
    "ERROR_KIND_KEY",
    "INTERNAL_MESSAGE",
    "INTERNAL_KIND",
    "status_code",
    "abort",
    "guarded",
    "error_from_rpc",
    "calling",
    "Calls",
    "cancel_late",
    "LOCAL_GRACE_S",
]

log = logging.getLogger(__name__)

#: trailing-metadata key carrying `Error.kind`
ERROR_KIND_KEY = "fedtrust-error-kind"
#: kind sent with INTERNAL (not an `Error` subclass)
INTERNAL_KIND = "internal"
INTERNAL_MESSAGE = "internal error; see the daemon log"

_CODES: dict[type[Error], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.VerificationError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PolicyViolation: grpc.StatusCode.PERMISSION_DENIED,
    errors.BudgetExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ReplayError: grpc.StatusCode.ALREADY_EXISTS,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.NodeUnreachable: grpc.StatusCode.UNAVAILABLE,
    errors.JobFailed: grpc.StatusCode.ABORTED,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ContextNeeded: grpc.StatusCode.FAILED_PRECONDITION,
}

#: kind -> class, for the caller side
_KINDS: dict[str, type[Error]] = {cls.kind: cls for cls in _CODES}

#: caller side, when the server sent no kind (gRPC itself failed the call)
_FALLBACK: dict[grpc.StatusCode, type[Error]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.UNAUTHENTICATED: errors.VerificationError,
    grpc.StatusCode.PERMISSION_DENIED: errors.VerificationError,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.ReplayError,
    grpc.StatusCode.ABORTED: errors.JobFailed,
}


def status_code(err: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an exception (INTERNAL for non-fedtrust ones)."""
    for cls in type(err).__mro__:
        code = _CODES.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _kind(err: BaseException) -> str:
    return err.kind if isinstance(err, Error) and status_code(err) is not grpc.StatusCode.INTERNAL else INTERNAL_KIND


def abort(context: grpc.ServicerContext, err: BaseException) -> NoReturn:
    """End the RPC with the status for `err` (always raises).

    A fedtrust error's message is sent; anything else sends only the
    generic INTERNAL message.
    """
    code = status_code(err)
    kind = _kind(err)
    details = str(err) if code is not grpc.StatusCode.INTERNAL else INTERNAL_MESSAGE
    try:
        kept = tuple(
            (k, v) for k, v in (context.trailing_metadata() or ()) if k != ERROR_KIND_KEY
        )
        context.set_trailing_metadata(kept + ((ERROR_KIND_KEY, kind),))
    except Exception:  # pragma: no cover - metadata already sent
        log.debug("could not set trailing metadata", exc_info=True)
    context.abort(code, details)
    raise AssertionError("context.abort returned")  # pragma: no cover


def _active(context: Any) -> bool:
    try:
        return bool(context.is_active())
    except Exception:
        return False


def _already_aborted(context: Any) -> bool:
    """True when the handler ended the RPC itself (context.abort / set_code)."""
    try:
        code = context.code()
    except Exception:
        return False
    return code is not None and code is not grpc.StatusCode.OK


def _handle(context: Any, exc: Exception, name: str) -> NoReturn:
    if _already_aborted(context):
        raise exc
    if isinstance(exc, grpc.RpcError) and not _active(context):
        # reading the request stream failed because the call ended: the caller went away, the stream's
        # deadline cut it (`transport.guard`), or the daemon is stopping — not a bug, nothing to send
        log.info("%s: the call ended before its request arrived", name)
        raise exc
    if isinstance(exc, Error) and status_code(exc) is not grpc.StatusCode.INTERNAL:
        log.info("%s refused (%s): %s", name, exc.kind, exc)
    else:
        log.error("%s failed with an unexpected error", name, exc_info=exc)
    abort(context, exc)


F = TypeVar("F", bound=Callable[..., Any])


def guarded(handler: F) -> F:
    """Wrap a servicer method (unary or streaming, plain function or method):
    errors become the mapped status, other exceptions INTERNAL, and the
    daemon keeps serving. The context must be the handler's last argument."""
    name = getattr(handler, "__qualname__", repr(handler))

    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def stream_wrapper(*args: Any) -> Any:
            context = args[-1]
            try:
                yield from handler(*args)
            except Exception as exc:
                _handle(context, exc, name)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(handler)
    def wrapper(*args: Any) -> Any:
        context = args[-1]
        try:
            result = handler(*args)
        except Exception as exc:
            _handle(context, exc, name)
        if inspect.isgenerator(result) or (
            hasattr(result, "__next__") and hasattr(result, "__iter__")
        ):
            # a method returning an iterator (e.g. response streaming without
            # `yield` in its own body): guard its iteration too
            return _guard_iter(result, context, name)
        return result

    return wrapper  # type: ignore[return-value]


def _guard_iter(it: Any, context: Any, name: str) -> Any:
    try:
        yield from it
    except Exception as exc:
        _handle(context, exc, name)


def error_from_rpc(e: grpc.RpcError, peer: str) -> Error:
    """Rebuild the fedtrust error a peer sent (same class, same message).

    `peer` names the other side in messages ("node n1", "the coordinator at
    host:port"). UNAVAILABLE and DEADLINE_EXCEEDED without a kind become
    NodeUnreachable naming the peer; INTERNAL keeps the generic message and
    names the peer whose log to read.
    """
    code = _call(e, "code")
    details = _call(e, "details") or ""
    kind = None
    for key, value in _call(e, "trailing_metadata") or ():
        if key == ERROR_KIND_KEY:
            kind = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    cls = _KINDS.get(kind) if kind else None
    if cls is not None:
        return cls(details)
    if code is grpc.StatusCode.UNAVAILABLE and "Hostname Verification" in details:
        return errors.VerificationError(
            f"{peer} answered with a certificate that does not name that subject (identity pinning refused "
            "another subject's server at its address); check the address and who listens there"
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            why = "did not answer in time"
        else:
            why = f"could not be reached ({details})" if details else "could not be reached"
        return errors.NodeUnreachable(
            f"{peer} {why}; check its address, that its daemon is running, and that its "
            "certificate is from the same exchange as yours"
        )
    if kind == INTERNAL_KIND or code is grpc.StatusCode.INTERNAL:
        return Error(f"{peer}: {details or INTERNAL_MESSAGE}")
    if code is grpc.StatusCode.CANCELLED:
        return Error(f"the call to {peer} was cancelled")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.InvalidInput(
            f"a message to or from {peer} exceeds the size limit ({details}); large "
            "payloads must travel in chunks"
        )
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return errors.ConfigError(
            f"{peer} does not implement this call; it runs an incompatible fedtrust version"
        )
    fallback = _FALLBACK.get(code, Error)  # type: ignore[arg-type]
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return fallback(f"{peer} refused the call ({name}): {details}")


#: seconds past its deadline a call may run before the client cancels it itself: gRPC core was seen to miss the
#: deadline of a streaming call to a server that stopped just as the call started (grpcio 1.85; the call waited for
#: an answer no handler would send, for longer than the pytest timeout of 300 s)
LOCAL_GRACE_S = 5.0


class Calls:
    """What `calling(peer, timeout)` yields: it starts each call of the block with the block's `timeout` and bounds
    it by its own clock too (`cancel_late`), so a streaming call cannot outlive its deadline by more than
    `LOCAL_GRACE_S` even where gRPC's deadline misses. Every streaming call and every future goes through it
    (tests/unit/test_call_bounds.py checks the package for calls that do not)."""

    def __init__(self, peer: str, timeout: float | None, stack: ExitStack) -> None:
        self.peer, self.timeout, self._stack = peer, timeout, stack

    def stream(self, method: Callable[..., Any], request: Any) -> Any:
        """`method(request, timeout=…)` of a response-streaming RPC: its response iterator, bounded."""
        timeout = self._timeout()
        return self._bounded(method(request, timeout=timeout), timeout)

    def future(self, method: Any, request: Any) -> Any:
        """`method.future(request, timeout=…)` of a unary-response RPC: its future, bounded."""
        timeout = self._timeout()
        return self._bounded(method.future(request, timeout=timeout), timeout)

    def _timeout(self) -> float:
        if self.timeout is None:
            raise TypeError("calling(peer) has no timeout to bound a call with; use calling(peer, timeout)")
        return self.timeout

    def _bounded(self, call: Any, timeout: float) -> Any:
        self._stack.enter_context(cancel_late(call, timeout, self.peer))
        return call


@contextmanager
def calling(peer: str, timeout: float | None = None) -> Iterator[Calls]:
    """A client's calls to `peer`: a `grpc.RpcError` inside becomes the fedtrust error the peer sent
    (`error_from_rpc`), raised without the gRPC exception chained. With a `timeout`, the yielded `Calls` starts
    streaming calls and futures bounded by it (a call cancelled on its own clock: NodeUnreachable naming `peer`);
    a blocking unary call passes its own `timeout=` (gRPC ends those itself)."""
    try:
        with ExitStack() as stack:
            yield Calls(peer, timeout, stack)
    except grpc.RpcError as e:
        raise error_from_rpc(e, peer) from None


@contextmanager
def cancel_late(call: Any, timeout: float, peer: str) -> Iterator[None]:
    """Bound a call (response iterator or future) by its own clock too: cancelled locally `LOCAL_GRACE_S` past its
    `timeout` (what gRPC's deadline should have done), which wakes the waiting thread; NodeUnreachable then.
    Callers use it through `calling(peer, timeout)`."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        call.cancel()

    timer = WATCHDOG.arm(timeout + LOCAL_GRACE_S, fire)  # the process's one watchdog thread, not one per call
    try:
        yield
    except (grpc.RpcError, grpc.FutureCancelledError):
        if fired.is_set():
            raise errors.NodeUnreachable(
                f"{peer} did not answer in time ({timeout:g} s; the call was cancelled); check its address, that "
                "its daemon is running, and that its certificate is from the same exchange as yours"
            ) from None
        raise
    finally:
        WATCHDOG.disarm(timer)


def _call(e: Any, attr: str) -> Any:
    fn = getattr(e, attr, None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:
        return None
