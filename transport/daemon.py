"""A gRPC daemon as a unit: bind (mTLS), serve, stop, wait — shared by the node and the coordinator."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Callable

import grpc

from fedtrust.transport.exchange_client import RevocationRefresher
from fedtrust.transport.server import create_server
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.pki import certificate_not_after

log = logging.getLogger("fedtrust.daemon")


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
    """Subclasses say what they serve (`_register`) and what to release on stop (`_on_stop`)."""

    role = "daemon"
    #: fetches the exchange's revocation list while serving (set by subclasses whose config names an exchange)
    refresher: RevocationRefresher | None = None

    def __init__(self, name: str, listen: str, tls: TlsMaterial, max_workers: int) -> None:
        self.name, self.listen, self.tls, self.max_workers = name, listen, tls, max_workers
        self.server: grpc.Server | None = None
        self.port: int | None = None

    def _register(self) -> Callable[[grpc.Server], None]:
        raise NotImplementedError

    def _on_stop(self) -> None:
        pass

    def start(self, listen: str | None = None) -> int:
        """Bind and serve (already started); returns the bound port (useful with port 0)."""
        warn_if_expiring(self.tls.cert_pem, f"{self.role} {self.name}")
        if self.refresher is not None:
            self.refresher.start()
        self.server, self.port = create_server(listen or self.listen, self.tls, self._register(),
                                               max_workers=self.max_workers)
        log.info("%s %s listening on port %s", self.role, self.name, self.port)
        return self.port

    def stop(self, grace: float | None = 0) -> None:
        if self.refresher is not None:
            self.refresher.stop()
        self._on_stop()
        if self.server is not None:
            self.server.stop(grace).wait()
            self.server = None

    def wait(self) -> None:
        assert self.server is not None
        self.server.wait_for_termination()
