"""`fedtrust node serve`: a node daemon bound to its config, started and stopped as a unit."""
from __future__ import annotations

from fedtrust.config import NodeConfig
from fedtrust.metrics import DaemonMetrics
from fedtrust.node.kinds import NodeKinds
from fedtrust.node.mpc_servicer import NodeMpcServicer
from fedtrust.node.node_servicer import NodeServicer
from fedtrust.node.runtime import NodeRuntime
from fedtrust.node.training_runtime import TrainingRuntime
from fedtrust.node.vertical_runtime import PsiRuntime
from fedtrust.node.vertical_servicer import VerticalNodeServicer
from fedtrust.transport.daemon import GrpcDaemon
from fedtrust.transport.exchange_client import refresher_for
from fedtrust.transport.tls import TlsMaterial
from fedtrust.v1 import mpc_pb2_grpc, node_pb2_grpc, vertical_pb2_grpc


class NodeDaemon(GrpcDaemon):
    role = "node"
    callers = {"fedtrust.v1.NodeService": frozenset({"coordinator"}),
               "fedtrust.v1.VerticalNodeService": frozenset({"coordinator"}),
               "fedtrust.v1.MpcService": frozenset({"coordinator"})}

    def __init__(self, config: NodeConfig) -> None:
        self.runtime = NodeRuntime(config)
        self.kinds = NodeKinds(self.runtime)  # the training handler checks the approved ClientApps' digests
        self.training = self.kinds.get(TrainingRuntime)
        self.psi = self.kinds.get(PsiRuntime)
        ident = self.runtime.identity
        super().__init__(config.name, config.listen, TlsMaterial(ident.tls_cert_pem, ident.tls_key_pem, ident.ca_pem),
                         config.server, DaemonMetrics("node", budgets=self._budgets))
        self.refresher = refresher_for(config.exchange_url, config.refresh_s, ident, self.runtime.revocations)

    def _budgets(self):
        for b in self.runtime.store.budgets(last=0):
            left = b.remaining_epsilon
            yield b.contract_digest, float(b.spent_epsilon), None if left is None else float(left), b.queries

    def _ready(self) -> bool:
        """Datasets loaded and the ledger open and readable."""
        return bool(self.runtime.datasets) and self.runtime.store.readable()

    def _register(self):
        servicer = NodeServicer(self.runtime, self.kinds, self.metrics)
        vertical = VerticalNodeServicer(servicer, self.psi)
        mpc = NodeMpcServicer(servicer, self.runtime.config.mpc_idle_s)

        def register(s):
            node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, s)
            vertical_pb2_grpc.add_VerticalNodeServiceServicer_to_server(vertical, s)
            mpc_pb2_grpc.add_MpcServiceServicer_to_server(mpc, s)

        return register
