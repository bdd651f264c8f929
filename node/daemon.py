"""`fedtrust node serve`: a node daemon bound to its config, started and stopped as a unit."""
from __future__ import annotations

import logging

import grpc

from fedtrust.config import NodeConfig
from fedtrust.node.node_servicer import NodeServicer
from fedtrust.node.runtime import NodeRuntime
from fedtrust.node.training_runtime import TrainingRuntime
from fedtrust.transport.server import create_server
from fedtrust.transport.tls import TlsMaterial
from fedtrust.v1 import node_pb2_grpc

log = logging.getLogger("fedtrust.node")


class NodeDaemon:
    def __init__(self, config: NodeConfig) -> None:
        self.runtime = NodeRuntime(config)
        self.training = TrainingRuntime(self.runtime, config)  # checks the approved ClientApps' digests
        ident = self.runtime.identity
        self.tls = TlsMaterial(ident.tls_cert_pem, ident.tls_key_pem, ident.ca_pem)
        self.server: grpc.Server | None = None
        self.port: int | None = None

    def start(self, listen: str | None = None) -> int:
        servicer = NodeServicer(self.runtime, self.training)
        self.server, self.port = create_server(
            listen or self.runtime.config.listen,
            self.tls,
            lambda s: node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, s),
            max_workers=self.runtime.config.max_workers,
        )
        log.info("node %s listening on port %s", self.runtime.name, self.port)
        return self.port

    def stop(self, grace: float | None = 0) -> None:
        if self.server is not None:
            self.server.stop(grace).wait()
            self.server = None

    def wait(self) -> None:
        assert self.server is not None
        self.server.wait_for_termination()
