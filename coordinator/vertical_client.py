"""The coordinator's client of a node's `VerticalNodeService` (protobuf edge)."""
from __future__ import annotations

from typing import Sequence

import grpc

from fedtrust.errors import InvalidInput
from fedtrust.transport.chunks import Assembler, split
from fedtrust.transport.server import secure_channel
from fedtrust.transport.status import error_from_rpc
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.dsse import Envelope
from fedtrust.v1 import vertical_pb2, vertical_pb2_grpc

#: largest sealed PSI message relayed (as the node's limit)
MAX_SEALED_BYTES = 64 * 1024 * 1024 + 64


def psi_step_on_node(node: str, address: str, tls: TlsMaterial, job_bytes: bytes, contract_bytes: bytes,
                     admissions: Sequence[bytes], step: int, sealed: bytes,
                     timeout: float) -> tuple[bytes, Envelope | None]:
    """One PSI step at `node`: (its sealed message, or b"" at step 3; its attestation at step 3)."""
    def requests():
        yield vertical_pb2.PsiRequest(header=vertical_pb2.PsiHeader(
            job_envelope=job_bytes, contract_envelope=contract_bytes, admissions=list(admissions), step=step,
            sealed_size=len(sealed)))
        for chunk in split(sealed):
            yield vertical_pb2.PsiRequest(sealed_chunk=chunk)

    asm = Assembler(None, MAX_SEALED_BYTES, f"node {node}'s sealed PSI message")
    outcome = None
    with secure_channel(address, tls, ("node", node)) as channel:
        try:
            for reply in vertical_pb2_grpc.VerticalNodeServiceStub(channel).PsiStep(requests(), timeout=timeout):
                part = reply.WhichOneof("part")
                if part == "sealed_chunk":
                    asm.add(reply.sealed_chunk)
                elif part == "outcome":
                    outcome = reply.outcome
        except grpc.RpcError as e:
            raise error_from_rpc(e, f"node {node}") from None
    if outcome is None:
        raise InvalidInput(f"node {node} ended its PSI reply without an outcome")
    data = asm.finish()  # expected=None: only the limit applied while it arrived; the size is checked here
    if outcome.sealed_size != len(data):
        raise InvalidInput(f"node {node} sent a sealed PSI message whose size does not match its outcome")
    if step == 3:
        if data or not outcome.attestation_envelope:
            raise InvalidInput(f"node {node} answered PSI step 3 without its attestation")
        return b"", Envelope.from_json(outcome.attestation_envelope)
    if not data:
        raise InvalidInput(f"node {node} answered PSI step {step} without its sealed message")
    return data, None
