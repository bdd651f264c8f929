"""gRPC edge of the node's vertical jobs (`VerticalNodeService`); logic in `vertical_runtime.py`."""
from __future__ import annotations

from fedtrust.errors import InvalidInput
from fedtrust.node.node_servicer import NodeServicer
from fedtrust.node.vertical_runtime import PsiRuntime
from fedtrust.transport.chunks import Assembler, split
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.status import guarded
from fedtrust.transport.streams import check_envelope_sizes
from fedtrust.v1 import vertical_pb2, vertical_pb2_grpc

#: largest sealed PSI message (2 million keys of 32 bytes, plus the seal); the contract's max_keys is checked after
MAX_SEALED_BYTES = 64 * 1024 * 1024 + 64


def read_psi_request(requests):
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidInput("the stream must start with a header message")
    header = first.header
    check_envelope_sizes(header)
    asm = Assembler(header.sealed_size, MAX_SEALED_BYTES, "the other owner's sealed PSI message")
    for msg in requests:
        if msg.WhichOneof("part") != "sealed_chunk":
            raise InvalidInput("only sealed_chunk messages may follow the header")
        asm.add(msg.sealed_chunk)
    return header, asm.finish()


class VerticalNodeServicer(vertical_pb2_grpc.VerticalNodeServiceServicer):
    def __init__(self, node_servicer: NodeServicer, psi: PsiRuntime) -> None:
        self.node = node_servicer  # for its audit wrapper and runtime
        self.psi = psi

    @guarded
    def PsiStep(self, request_iterator, context):
        peer = peer_identity(context)

        def check():
            header, sealed = read_psi_request(request_iterator)
            checked = self.node.runtime.check_job(peer, header.job_envelope, header.contract_envelope)
            return checked, (header.step, sealed, list(header.admissions))

        result = self.node._audited(peer, check, lambda c, p: self.psi.step(c, *p),
                                    lambda r: "psi attestation" if r.attestation else "psi message",
                                    event="released")
        for chunk in split(result.sealed):
            yield vertical_pb2.PsiReply(sealed_chunk=chunk)
        yield vertical_pb2.PsiReply(outcome=vertical_pb2.PsiOutcome(
            sealed_size=len(result.sealed),
            attestation_envelope=result.attestation.to_json() if result.attestation else b""))
