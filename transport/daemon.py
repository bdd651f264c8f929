"""A gRPC daemon as a unit: bind (mTLS), guard, report health and metrics, drain on stop.

Shared by the node and the coordinator. Every call passes `PeerGuard` first
(caller role from the TLS identity, a per-identity cap on open calls, deadlines
on streamed requests). The standard `grpc.health.v1.Health` service answers
SERVING once the daemon is ready (the node: datasets loaded and ledger open)
and NOT_SERVING while it drains. `stop(grace)` drains: it refuses new calls,
gives the calls in flight `grace` seconds to finish (those that do not are
cancelled and fail cleanly: ledgers are transactional), then releases what the
subclass holds. It may be called from several threads or twice (a second
SIGTERM while the first stop runs): only the first call stops, the others
wait for it.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedtrust.config import ServerSettings
from fedtrust.metrics import DaemonMetrics
from fedtrust.transport.exchange_client import RevocationRefresher
from fedtrust.transport.guard import PeerGuard
from fedtrust.transport.server import create_server
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.pki import certificate_not_after

log = logging.getLogger("fedtrust.daemon")

HEALTH_SERVICE = "grpc.health.v1.Health"

#: daemons warn this long before their certificate expires
EXPIRY_WARNING = timedelta(days=30)


def warn_if_expiring(cert_pem: bytes, who: str, now: datetime | None = None) -> bool:
    """Log a warning when the certificate expires within 30 days (or has expired); True when it warned."""
    not_after = certificate_not_after(cert_pem)
    left = not_after - (now or datetime.now(timezone.utc))
    if left > EXPIRY_WARNING:
        return False
    if left.total_seconds() <= 0:
        log.warning("%s: its certificate expired at %s; renew it (`fedtrust keygen`, then `fedtrust exchange renew`)",
                    who, not_after.isoformat())
    else:
        log.warning("%s: its certificate expires at %s, in %d days; renew it (`fedtrust keygen`, then "
                    "`fedtrust exchange renew`)", who, not_after.isoformat(), left.days)
    return True


class GrpcDaemon:
    """Subclasses say what they serve (`_register`, `callers`), when they are ready (`_ready`) and what to
    release on stop (`_on_stop`)."""

    role = "daemon"
    #: service name -> the caller roles it accepts (checked from the TLS identity before any request is read)
    callers: dict[str, frozenset[str]] = {}
    #: fetches the exchange's revocation list while serving (set by subclasses whose config names an exchange)
    refresher: RevocationRefresher | None = None

    def __init__(self, name: str, listen: str, tls: TlsMaterial, settings: ServerSettings | None = None,
                 metrics: DaemonMetrics | None = None) -> None:
        self.name, self.listen, self.tls = name, listen, tls
        self.settings = settings or ServerSettings()
        self.metrics = metrics or DaemonMetrics(self.role)
        self.server: grpc.Server | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.guard = PeerGuard(self.callers, self.settings.max_calls_per_peer, self.settings.stream_idle_s)
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()
        self._stopping = False

    @property
    def max_workers(self) -> int:
        return self.settings.max_workers

    def _register(self) -> Callable[[grpc.Server], None]:
        raise NotImplementedError

    def _ready(self) -> bool:
        return True

    def _on_stop(self) -> None:
        pass

    def _before_drain(self) -> None:
        pass

    def _set_health(self, status) -> None:
        for service in ("", *self.callers):
            self.health.set(service, status)

    def start(self, listen: str | None = None, metrics_listen: str | None = None) -> int:
        """Bind and serve (already started); returns the bound port (useful with port 0).

        `metrics_listen` overrides the config's (tests pass 127.0.0.1:0)."""
        warn_if_expiring(self.tls.cert_pem, f"{self.role} {self.name}")
        if self.refresher is not None:
            self.refresher.start()
        register = self._register()

        def register_all(server: grpc.Server) -> None:
            register(server)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)

        with self._stop_lock:
            self._stopping = False
            self._stopped.clear()
            self.guard.closed = False
        self.server, self.port = create_server(listen or self.listen, self.tls, register_all,
                                               max_workers=self.settings.max_workers, interceptors=[self.guard])
        ready = self._ready()
        self._set_health(health_pb2.HealthCheckResponse.SERVING if ready
                         else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.metrics.ready.set(1 if ready else 0)
        where = metrics_listen or self.settings.metrics_listen
        if where:
            try:
                self.metrics_port = self.metrics.serve(where)
            except BaseException:
                self.server.stop(None)
                raise
            log.info("%s %s serves metrics on port %s", self.role, self.name, self.metrics_port)
        log.info("%s %s listening on port %s", self.role, self.name, self.port)
        return self.port

    def stop(self, grace: float | None = 0) -> None:
        """Drain and stop; safe to call twice or from several threads (later calls wait for the first)."""
        with self._stop_lock:
            first = not self._stopping
            self._stopping = True
        if not first:
            self._stopped.wait()
            return
        try:
            self._before_drain()
            if self.refresher is not None:
                self.refresher.stop()
            if self.server is not None:
                log.warning("%s %s stopping: no new calls; calls in flight have %s s to finish",
                            self.role, self.name, grace)
                self.guard.closed = True
                self.health.enter_graceful_shutdown()
                self.metrics.ready.set(0)
                self.server.stop(grace).wait()
                self.server = None
            self._on_stop()
            self.metrics.close()
            log.warning("%s %s stopped", self.role, self.name)
        finally:
            self._stopped.set()

    def wait(self) -> None:
        assert self.server is not None
        self.server.wait_for_termination()
