"""The coordinator's client of a node's `VerticalNodeService` (protobuf edge)."""
from __future__ import annotations

from typing import Sequence

from fedtrust.errors import InvalidInput
from fedtrust.transport.limits import MAX_SEALED_BYTES
from fedtrust.transport.server import secure_channel
from fedtrust.transport.status import calling
from fedtrust.transport.streams import read_chunks_then, send_header_first
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.dsse import Envelope
from fedtrust.v1 import vertical_pb2, vertical_pb2_grpc


def psi_step_on_node(node: str, address: str, tls: TlsMaterial, job_bytes: bytes, contract_bytes: bytes,
                     admissions: Sequence[bytes], step: int, sealed: bytes,
                     timeout: float) -> tuple[bytes, Envelope | None]:
    """One PSI step at `node`: (its sealed message, or b"" at step 3; its attestation at step 3)."""
    header = vertical_pb2.PsiHeader(job_envelope=job_bytes, contract_envelope=contract_bytes,
                                    admissions=list(admissions), step=step, sealed_size=len(sealed))
    requests = send_header_first(vertical_pb2.PsiRequest, "header", header, "sealed_chunk", sealed)
    with secure_channel(address, tls, ("node", node)) as channel, calling(f"node {node}", timeout) as calls:
        outcome, data = read_chunks_then(
            calls.stream(vertical_pb2_grpc.VerticalNodeServiceStub(channel).PsiStep, requests),
            chunk_field="sealed_chunk", last_field="outcome", size_field="sealed_size", limit=MAX_SEALED_BYTES,
            what=f"node {node}'s sealed PSI message")
    if step == 3:
        if data or not outcome.attestation_envelope:
            raise InvalidInput(f"node {node} answered PSI step 3 without its attestation")
        return b"", Envelope.from_json(outcome.attestation_envelope)
    if not data:
        raise InvalidInput(f"node {node} answered PSI step {step} without its sealed message")
    return data, None
