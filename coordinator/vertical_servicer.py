"""gRPC edge of the coordinator's vertical jobs (`VerticalCoordinatorService`); logic in `vertical_job.py`."""
from __future__ import annotations

from fedtrust.coordinator.coordinator_servicer import MAX_ENVELOPE_BYTES, _events
from fedtrust.coordinator.runtime import CoordinatorRuntime
from fedtrust.coordinator.vertical_job import VerticalJobs
from fedtrust.errors import InvalidInput
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.status import guarded
from fedtrust.v1 import vertical_pb2_grpc


class VerticalCoordinatorServicer(vertical_pb2_grpc.VerticalCoordinatorServiceServicer):
    def __init__(self, runtime: CoordinatorRuntime) -> None:
        self.jobs = VerticalJobs(runtime)

    @guarded
    def SubmitVertical(self, request, context):
        peer = peer_identity(context)
        if len(request.job_envelope) > MAX_ENVELOPE_BYTES or len(request.contract_envelope) > MAX_ENVELOPE_BYTES:
            raise InvalidInput(f"job spec or contract exceeds {MAX_ENVELOPE_BYTES} bytes")
        yield from _events(self.jobs.run(peer, request.job_envelope, request.contract_envelope))
