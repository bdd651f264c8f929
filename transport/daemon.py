"""A gRPC daemon as a unit: bind (mTLS), serve, stop, wait — shared by the node and the coordinator."""
from __future__ import annotations

import logging
from typing import Callable

import grpc

from fedtrust.transport.server import create_server
from fedtrust.transport.tls import TlsMaterial

log = logging.getLogger("fedtrust.daemon")


class GrpcDaemon:
    """Subclasses say what they serve (`_register`) and what to release on stop (`_on_stop`)."""

    role = "daemon"

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
        self.server, self.port = create_server(listen or self.listen, self.tls, self._register(),
                                               max_workers=self.max_workers)
        log.info("%s %s listening on port %s", self.role, self.name, self.port)
        return self.port

    def stop(self, grace: float | None = 0) -> None:
        self._on_stop()
        if self.server is not None:
            self.server.stop(grace).wait()
            self.server = None

    def wait(self) -> None:
        assert self.server is not None
        self.server.wait_for_termination()
