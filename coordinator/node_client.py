"""The coordinator's client of a node's `NodeService` (protobuf edge)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from fedtrust.transport.channels import ChannelPool, channel_to
from fedtrust.transport.chunks import unframe
from fedtrust.transport.limits import MAX_CIPHERTEXT_BYTES, MAX_QUERY_CIPHERTEXT_BYTES, MAX_QUERY_CIPHERTEXTS
from fedtrust.transport.status import calling
from fedtrust.transport.streams import read_chunks_then, send_header_first
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.dsse import Envelope
from fedtrust.v1 import node_pb2, node_pb2_grpc


@dataclass(frozen=True)
class NodeRelease:
    node: str
    attestation: Envelope
    ciphertexts: tuple[bytes, ...]


def admit_on_node(node: str, address: str, tls: TlsMaterial, job_bytes: bytes, contract_bytes: bytes,
                  timeout: float, revocation_list: bytes = b"", channels: ChannelPool | None = None) -> bytes:
    """Phase one: the node's signed admission of the job (DSSE JSON); the node's refusal or NodeUnreachable."""
    with channel_to(channels, address, tls, ("node", node)) as channel, calling(f"node {node}"):
        reply = node_pb2_grpc.NodeServiceStub(channel).AdmitJob(
            node_pb2.AdmitRequest(job_envelope=job_bytes, contract_envelope=contract_bytes,
                                  revocation_list=revocation_list), timeout=timeout)
    return reply.admission_envelope


def run_query_on_node(node: str, address: str, tls: TlsMaterial, job_bytes: bytes, contract_bytes: bytes,
                      context: bytes, timeout: float, admissions: Sequence[bytes] = (),
                      channels: ChannelPool | None = None) -> NodeRelease:
    header = node_pb2.QueryHeader(job_envelope=job_bytes, contract_envelope=contract_bytes,
                                  he_context_size=len(context), admissions=list(admissions))
    requests = send_header_first(node_pb2.QueryRequest, "header", header, "he_context_chunk", context)
    what = f"node {node}'s ciphertexts"
    with channel_to(channels, address, tls, ("node", node)) as channel, calling(f"node {node}", timeout) as calls:
        release, data = read_chunks_then(calls.stream(node_pb2_grpc.NodeServiceStub(channel).RunQuery, requests),
                                         chunk_field="ciphertext_chunk", last_field="release",
                                         limit=MAX_QUERY_CIPHERTEXT_BYTES, what=what)
    cts = unframe(release.ciphertext_sizes, data, what=what, limit=MAX_QUERY_CIPHERTEXT_BYTES,
                  limit_each=MAX_CIPHERTEXT_BYTES, max_count=MAX_QUERY_CIPHERTEXTS)
    return NodeRelease(node, Envelope.from_json(release.attestation_envelope), tuple(cts))
