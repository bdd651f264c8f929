"""Channels kept open between jobs (the coordinator's channels to its nodes).

A new mutual-TLS channel per node per call costs a TCP and TLS handshake
(≈15–25 ms on the development VM) on every job. `ChannelPool` keeps one
channel per (address, expected subject, own TLS material) and hands it out
again. Identity checks are unchanged: the channel is made by
`secure_channel`, which pins the peer's subject on every TLS handshake, and
gRPC re-runs that handshake whenever it reconnects; a pooled connection is
the same authenticated TLS session that the first call checked. A channel is
never shared across different own credentials or expected subjects (they are
part of the key), the pool is bounded, and `close` ends every channel.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

import grpc

from fedtrust.transport.server import secure_channel
from fedtrust.transport.tls import TlsMaterial

__all__ = ["ChannelPool", "channel_to"]


def _tls_key(tls: TlsMaterial) -> str:
    h = hashlib.sha256()
    for part in (tls.cert_pem, tls.key_pem, tls.ca_pem):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


class ChannelPool:
    def __init__(self, limit: int = 256) -> None:
        self._limit = limit
        self._channels: OrderedDict[tuple[str, str, str, str], grpc.Channel] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def get(self, target: str, tls: TlsMaterial, subject: tuple[str, str]) -> grpc.Channel | None:
        """The kept channel, made on first use; None once the pool is closed."""
        key = (target, subject[0], subject[1], _tls_key(tls))
        evicted: list[grpc.Channel] = []
        with self._lock:
            if self._closed:
                return None
            channel = self._channels.get(key)
            if channel is None:
                channel = secure_channel(target, tls, subject)
                self._channels[key] = channel
                while len(self._channels) > self._limit:
                    evicted.append(self._channels.popitem(last=False)[1])
            else:
                self._channels.move_to_end(key)
        for c in evicted:
            c.close()
        return channel

    def discard(self, target: str, tls: TlsMaterial, subject: tuple[str, str]) -> None:
        """Close the channel to `target` (e.g. after its peer failed the identity check)."""
        with self._lock:
            channel = self._channels.pop((target, subject[0], subject[1], _tls_key(tls)), None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
        for c in channels:
            c.close()


@contextmanager
def channel_to(pool: ChannelPool | None, target: str, tls: TlsMaterial, subject: tuple[str, str]) -> Iterator[grpc.Channel]:
    """The pooled channel (left open), or without a (still open) pool a fresh one closed on exit."""
    channel = pool.get(target, tls, subject) if pool is not None else None
    if channel is None:
        with secure_channel(target, tls, subject) as fresh:
            yield fresh
        return
    yield channel
