"""`fedtrust coordinator serve`: the coordinator daemon bound to its config."""
from __future__ import annotations

import logging

import grpc

from fedtrust.config import CoordinatorConfig
from fedtrust.coordinator.coordinator_servicer import CoordinatorServicer
from fedtrust.coordinator.runtime import CoordinatorRuntime
from fedtrust.transport.server import create_server
from fedtrust.v1 import coordinator_pb2_grpc

log = logging.getLogger("fedtrust.coordinator")


class CoordinatorDaemon:
    def __init__(self, config: CoordinatorConfig, addresses: dict[str, str] | None = None) -> None:
        self.runtime = CoordinatorRuntime(config, addresses or dict(config.addresses))
        self.server: grpc.Server | None = None
        self.port: int | None = None
        self.servicer: CoordinatorServicer | None = None

    def start(self, listen: str | None = None) -> int:
        servicer = self.servicer = CoordinatorServicer(self.runtime)
        self.server, self.port = create_server(
            listen or self.runtime.config.listen,
            self.runtime.tls,
            lambda s: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, s),
            max_workers=self.runtime.config.max_workers,
        )
        log.info("coordinator %s listening on port %s", self.runtime.name, self.port)
        return self.port

    def stop(self, grace: float | None = 0) -> None:
        if self.servicer is not None:
            self.servicer.training.shutdown()  # running training workers die with the daemon
        if self.server is not None:
            self.server.stop(grace).wait()
            self.server = None

    def wait(self) -> None:
        assert self.server is not None
        self.server.wait_for_termination()
