"""gRPC edge of the node's vertical jobs (`VerticalNodeService`); logic in `vertical_runtime.py`."""
from __future__ import annotations

from fedtrust.node.node_servicer import NodeServicer
from fedtrust.node.vertical_runtime import PsiRuntime
from fedtrust.transport.limits import MAX_SEALED_BYTES
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.status import guarded
from fedtrust.transport.streams import deadline_of, read_header_first, send_chunks_then
from fedtrust.v1 import vertical_pb2, vertical_pb2_grpc


def read_psi_request(requests, deadline: float | None = None):
    return read_header_first(requests, size="sealed_size", chunk_field="sealed_chunk", limit=MAX_SEALED_BYTES,
                             what="the other owner's sealed PSI message", deadline=deadline)


class VerticalNodeServicer(vertical_pb2_grpc.VerticalNodeServiceServicer):
    def __init__(self, node_servicer: NodeServicer, psi: PsiRuntime) -> None:
        self.node = node_servicer  # for its audit wrapper and runtime
        self.psi = psi

    @guarded
    def PsiStep(self, request_iterator, context):
        peer = peer_identity(context)

        def check():
            header, sealed = read_psi_request(request_iterator, deadline_of(context))
            checked = self.node.runtime.check_job(peer, header.job_envelope, header.contract_envelope)
            return checked, (header.step, sealed, list(header.admissions))

        result = self.node._audited(peer, check, lambda c, p: self.psi.step(c, *p),
                                    lambda r: "psi attestation" if r.attestation else "psi message",
                                    event="released")
        yield from send_chunks_then(vertical_pb2.PsiReply, "sealed_chunk", result.sealed, "outcome",
                                    vertical_pb2.PsiOutcome(sealed_size=len(result.sealed),
                                                            attestation_envelope=result.attestation.to_json()
                                                            if result.attestation else b""))
