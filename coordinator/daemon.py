"""`fedtrust coordinator serve`: the coordinator daemon bound to its config."""
from __future__ import annotations

import threading

from fedtrust.config import CoordinatorConfig
from fedtrust.coordinator.coordinator_servicer import CoordinatorServicer
from fedtrust.coordinator.mpc_servicer import MpcCoordinatorServicer
from fedtrust.coordinator.runtime import CoordinatorRuntime
from fedtrust.coordinator.vertical_servicer import VerticalCoordinatorServicer
from fedtrust.metrics import DaemonMetrics
from fedtrust.transport.daemon import GrpcDaemon
from fedtrust.transport.exchange_client import refresher_for
from fedtrust.v1 import coordinator_pb2_grpc, mpc_pb2_grpc, vertical_pb2_grpc


class CoordinatorDaemon(GrpcDaemon):
    role = "coordinator"
    callers = {"fedtrust.v1.CoordinatorService": frozenset({"buyer"}),
               "fedtrust.v1.VerticalCoordinatorService": frozenset({"buyer"}),
               "fedtrust.v1.MpcCoordinatorService": frozenset({"buyer"})}

    def __init__(self, config: CoordinatorConfig, addresses: dict[str, str] | None = None) -> None:
        self.runtime = CoordinatorRuntime(config, addresses or dict(config.addresses))
        self.servicer: CoordinatorServicer | None = None
        super().__init__(config.name, config.listen, self.runtime.tls, config.server, DaemonMetrics("coordinator"))
        self.refresher = refresher_for(config.exchange_url, config.refresh_s, self.runtime.identity,
                                       self.runtime.revocations)

    def _register(self):
        servicer = self.servicer = CoordinatorServicer(self.runtime, self.metrics)
        vertical = VerticalCoordinatorServicer(servicer)
        mpc = MpcCoordinatorServicer(servicer)

        def register(s):
            coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, s)
            vertical_pb2_grpc.add_VerticalCoordinatorServiceServicer_to_server(vertical, s)
            mpc_pb2_grpc.add_MpcCoordinatorServiceServicer_to_server(mpc, s)

        return register

    def start(self, listen: str | None = None, metrics_listen: str | None = None) -> int:
        port = super().start(listen, metrics_listen)
        assert self.servicer is not None  # (registered by start)
        for rec, job_bytes, contract_bytes in self.runtime.resumable:  # training jobs a restart interrupted
            threading.Thread(target=self.servicer.training.resume, args=(rec, job_bytes, contract_bytes),
                             name=f"resume-{rec.job_id[:12]}", daemon=True).start()
        self.runtime.resumable = []
        return port

    def _before_drain(self) -> None:
        self.runtime.stopping = True  # running training jobs are kept to resume, not failed

    def _on_stop(self) -> None:
        self.runtime.channels.close()
        self.runtime.calls.shutdown(wait=False, cancel_futures=True)
        if self.servicer is not None:
            self.servicer.training.shutdown()  # running training workers die with the daemon
