"""gRPC edge of the coordinator's MPC jobs (`MpcCoordinatorService`); logic in `mpc_job.py`."""
from __future__ import annotations

from fedtrust.coordinator.coordinator_servicer import CoordinatorServicer, _events
from fedtrust.coordinator.mpc_job import MpcJobs
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.status import guarded
from fedtrust.transport.streams import check_envelope_sizes
from fedtrust.v1 import mpc_pb2_grpc


class MpcCoordinatorServicer(mpc_pb2_grpc.MpcCoordinatorServiceServicer):
    def __init__(self, coordinator: CoordinatorServicer) -> None:
        #: every MPC kind's handler relays the same way (the kind's program runs at the owners)
        self.jobs = MpcJobs(coordinator.runtime, served={k for k, h in coordinator.kinds.by_kind.items()
                                                         if isinstance(h, MpcJobs)})

    @guarded
    def SubmitMpc(self, request, context):
        peer = peer_identity(context)
        check_envelope_sizes(request)
        yield from _events(self.jobs.run(peer, request.job_envelope, request.contract_envelope))
