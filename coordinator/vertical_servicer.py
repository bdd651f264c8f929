"""gRPC edge of the coordinator's vertical jobs (`VerticalCoordinatorService`); logic in `vertical_job.py`."""
from __future__ import annotations

from fedtrust.coordinator.coordinator_servicer import CoordinatorServicer, _events
from fedtrust.coordinator.vertical_job import VerticalJobs
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.status import guarded
from fedtrust.transport.streams import check_envelope_sizes
from fedtrust.v1 import vertical_pb2_grpc


class VerticalCoordinatorServicer(vertical_pb2_grpc.VerticalCoordinatorServiceServicer):
    def __init__(self, coordinator: CoordinatorServicer) -> None:
        self.jobs = coordinator.kinds.get(VerticalJobs)

    @guarded
    def SubmitVertical(self, request, context):
        peer = peer_identity(context)
        check_envelope_sizes(request)
        yield from _events(self.jobs.run(peer, request.job_envelope, request.contract_envelope))
