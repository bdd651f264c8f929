"""The coordinator's client of a node's `NodeService` (protobuf edge)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import grpc

from fedtrust.errors import InvalidInput
from fedtrust.privacy.he import MAX_CIPHERTEXT_BYTES
from fedtrust.transport.channels import ChannelPool, channel_to
from fedtrust.transport.chunks import split
from fedtrust.transport.status import error_from_rpc
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.dsse import Envelope
from fedtrust.v1 import node_pb2, node_pb2_grpc

#: a query never needs more ciphertexts than this (16 × 8192 slots)
MAX_CIPHERTEXTS = 16


@dataclass(frozen=True)
class NodeRelease:
    node: str
    attestation: Envelope
    ciphertexts: tuple[bytes, ...]


def admit_on_node(node: str, address: str, tls: TlsMaterial, job_bytes: bytes, contract_bytes: bytes,
                  timeout: float, revocation_list: bytes = b"", channels: ChannelPool | None = None) -> bytes:
    """Phase one: the node's signed admission of the job (DSSE JSON); the node's refusal or NodeUnreachable."""
    with channel_to(channels, address, tls, ("node", node)) as channel:
        try:
            reply = node_pb2_grpc.NodeServiceStub(channel).AdmitJob(
                node_pb2.AdmitRequest(job_envelope=job_bytes, contract_envelope=contract_bytes,
                                      revocation_list=revocation_list), timeout=timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e, f"node {node}") from None
    return reply.admission_envelope


def run_query_on_node(node: str, address: str, tls: TlsMaterial, job_bytes: bytes, contract_bytes: bytes,
                      context: bytes, timeout: float, admissions: Sequence[bytes] = (),
                      channels: ChannelPool | None = None) -> NodeRelease:
    def requests():
        yield node_pb2.QueryRequest(header=node_pb2.QueryHeader(
            job_envelope=job_bytes, contract_envelope=contract_bytes, he_context_size=len(context),
            admissions=list(admissions)))
        for chunk in split(context):
            yield node_pb2.QueryRequest(he_context_chunk=chunk)

    with channel_to(channels, address, tls, ("node", node)) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        data = bytearray()
        release = None
        try:
            for reply in stub.RunQuery(requests(), timeout=timeout):
                part = reply.WhichOneof("part")
                if part == "ciphertext_chunk":
                    data += reply.ciphertext_chunk
                    if len(data) > MAX_CIPHERTEXTS * MAX_CIPHERTEXT_BYTES:
                        raise InvalidInput(f"node {node} sent more ciphertext bytes than any query needs")
                elif part == "release":
                    release = reply.release
        except grpc.RpcError as e:
            raise error_from_rpc(e, f"node {node}") from None
    if release is None:
        raise InvalidInput(f"node {node} ended its reply without a release")
    sizes = list(release.ciphertext_sizes)
    if len(sizes) > MAX_CIPHERTEXTS or sum(sizes) != len(data):
        raise InvalidInput(f"node {node} sent ciphertext sizes that do not match its data")
    cts, pos = [], 0
    for size in sizes:
        cts.append(bytes(data[pos:pos + size]))
        pos += size
    return NodeRelease(node, Envelope.from_json(release.attestation_envelope), tuple(cts))
