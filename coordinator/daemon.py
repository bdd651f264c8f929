"""`fedtrust coordinator serve`: the coordinator daemon bound to its config."""
from __future__ import annotations

from fedtrust.config import CoordinatorConfig
from fedtrust.coordinator.coordinator_servicer import CoordinatorServicer
from fedtrust.coordinator.runtime import CoordinatorRuntime
from fedtrust.metrics import DaemonMetrics
from fedtrust.transport.daemon import GrpcDaemon
from fedtrust.coordinator.vertical_servicer import VerticalCoordinatorServicer
from fedtrust.transport.exchange_client import refresher_for
from fedtrust.v1 import coordinator_pb2_grpc, vertical_pb2_grpc


class CoordinatorDaemon(GrpcDaemon):
    role = "coordinator"
    callers = {"fedtrust.v1.CoordinatorService": frozenset({"buyer"}),
               "fedtrust.v1.VerticalCoordinatorService": frozenset({"buyer"})}

    def __init__(self, config: CoordinatorConfig, addresses: dict[str, str] | None = None) -> None:
        self.runtime = CoordinatorRuntime(config, addresses or dict(config.addresses))
        self.servicer: CoordinatorServicer | None = None
        super().__init__(config.name, config.listen, self.runtime.tls, config.server, DaemonMetrics("coordinator"))
        self.refresher = refresher_for(config.exchange_url, config.refresh_s, self.runtime.identity,
                                       self.runtime.revocations)

    def _register(self):
        servicer = self.servicer = CoordinatorServicer(self.runtime, self.metrics)
        vertical = VerticalCoordinatorServicer(self.runtime)

        def register(s):
            coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, s)
            vertical_pb2_grpc.add_VerticalCoordinatorServiceServicer_to_server(vertical, s)

        return register

    def _on_stop(self) -> None:
        self.runtime.channels.close()
        if self.servicer is not None:
            self.servicer.training.shutdown()  # running training workers die with the daemon
