"""Admission control in front of every servicer: who may call, how many calls at once, how long to wait.

A daemon serves its RPCs from a bounded thread pool, and a streaming call
holds one thread from the moment it opens. Without a guard, any certificate
from the same exchange (another buyer, a node) could open a few dozen idle
streams and freeze the daemon. `PeerGuard` (a gRPC server interceptor) runs
before a handler reads any request message:

1. the caller's fedtrust identity comes from the TLS auth context (its
   certificate's URI SAN), and its role must be one the service accepts
   (NodeService: coordinators; CoordinatorService: buyers; the health service:
   any identity of the exchange) — otherwise UNAUTHENTICATED at once;
2. each identity may hold at most `max_calls_per_peer` calls open at once; one
   more is refused with RESOURCE_EXHAUSTED, so no single certificate can hold
   more than that many threads;
3. a client-streaming call must deliver its first message (the header) and
   every later chunk within `stream_idle_s`, or the call is cancelled and its
   thread freed.

The pool is sized well above the per-peer cap (`max_workers`, default 64) and
the server refuses calls beyond `maximum_concurrent_rpcs` instead of queueing
them without bound.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import grpc

from fedtrust.errors import Error, InvalidInput, Overloaded, VerificationError
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.status import abort
from fedtrust.transport.watchdog import WATCHDOG as _WATCHDOG

log = logging.getLogger("fedtrust.transport")

__all__ = ["PeerGuard", "DeadlineIterator"]




class DeadlineIterator:
    """A request iterator whose every `next()` must return within its deadline, or the call is cancelled."""

    def __init__(self, it: Iterator, context: grpc.ServicerContext, idle_s: float) -> None:
        self._it, self._context, self._idle_s = it, context, idle_s
        self._count = 0
        self.expired = False

    def __iter__(self) -> DeadlineIterator:
        return self

    def _expire(self) -> None:
        self.expired = True
        self._context.cancel()

    def __next__(self) -> Any:
        timer = _WATCHDOG.arm(self._idle_s, self._expire)
        try:
            item = next(self._it)
        except grpc.RpcError:
            if self.expired:
                what = "the stream's header" if self._count == 0 else "the next chunk"
                raise InvalidInput(f"the caller did not send {what} within {self._idle_s:g} s; the call was "
                                   "cancelled") from None
            raise
        finally:
            _WATCHDOG.disarm(timer)
        self._count += 1
        return item


class _Slots:
    """Per-identity counters of open calls."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def take(self, peer: tuple[str, str]) -> bool:
        with self._lock:
            n = self._open.get(peer, 0)
            if n >= self.limit:
                return False
            self._open[peer] = n + 1
            return True

    def give(self, peer: tuple[str, str]) -> None:
        with self._lock:
            n = self._open.get(peer, 1) - 1
            if n:
                self._open[peer] = n
            else:
                self._open.pop(peer, None)


class PeerGuard(grpc.ServerInterceptor):
    """`roles`: service name ("fedtrust.v1.NodeService") -> the caller roles it accepts; services not listed
    accept any fedtrust identity (the health service)."""

    def __init__(self, roles: Mapping[str, frozenset[str]], max_calls_per_peer: int, stream_idle_s: float) -> None:
        self.roles = dict(roles)
        self.slots = _Slots(max_calls_per_peer)
        self.idle_s = stream_idle_s
        #: refuse new calls (the daemon is draining)
        self.closed = False

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method  # "/package.Service/Method"
        service = method.split("/")[1] if method.count("/") >= 2 else ""
        roles = self.roles.get(service)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap(handler.stream_stream, roles, service, True, True),
                handler.request_deserializer, handler.response_serializer)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(handler.stream_unary, roles, service, True, False),
                handler.request_deserializer, handler.response_serializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap(handler.unary_stream, roles, service, False, True),
                handler.request_deserializer, handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, roles, service, False, False),
            handler.request_deserializer, handler.response_serializer)

    def _admit(self, context, roles, service) -> tuple[str, str]:
        """Identity and role checks and a slot, before the handler reads anything; aborts the call otherwise."""
        try:
            if self.closed:
                raise Overloaded("the daemon is stopping and takes no new calls; retry in a moment")
            peer = peer_identity(context)
            if roles is not None and peer[0] not in roles:
                raise VerificationError(
                    f"caller fedtrust://{peer[0]}/{peer[1]} may not call {service}; only "
                    f"{' and '.join(sorted(roles))} identities may"
                )
            if not self.slots.take(peer):
                log.warning("refused a call from fedtrust://%s/%s: %d calls already open", *peer, self.slots.limit)
                raise Overloaded(
                    f"fedtrust://{peer[0]}/{peer[1]} already has {self.slots.limit} calls open at this daemon; "
                    "wait for them to finish"
                )
        except Error as e:
            abort(context, e)
        return peer

    def _wrap(self, behavior, roles, service, request_streaming: bool, response_streaming: bool):
        guard = self

        if response_streaming:
            def stream_behavior(request, context):
                peer = guard._admit(context, roles, service)
                try:
                    if request_streaming:
                        request = DeadlineIterator(request, context, guard.idle_s)
                    yield from behavior(request, context)
                finally:
                    guard.slots.give(peer)
            return stream_behavior

        def unary_behavior(request, context):
            peer = guard._admit(context, roles, service)
            try:
                if request_streaming:
                    request = DeadlineIterator(request, context, guard.idle_s)
                return behavior(request, context)
            finally:
                guard.slots.give(peer)
        return unary_behavior
