"""The coordinator's client of a node's training RPCs (protobuf edge); one channel per node per job."""
from __future__ import annotations

from fedtrust.errors import InvalidInput
from fedtrust.transport.serde import vectors_to_proto
from fedtrust.transport.server import secure_channel
from fedtrust.transport.status import calling, cancel_late
from fedtrust.transport.streams import read_chunks_then, send_header_first
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.vectors import SignedVector
from fedtrust.v1 import node_pb2, node_pb2_grpc

__all__ = ["NodeTrainingClient"]


class NodeTrainingClient:
    def __init__(self, node: str, address: str, tls: TlsMaterial, timeout: float) -> None:
        self.node = node
        self.timeout = timeout
        self._channel = secure_channel(address, tls, ("node", node))
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def train_round(self, job: bytes, contract: bytes, message: bytes, expected: int,
                    admissions: tuple[bytes, ...] = ()) -> tuple[bytes, bytes]:
        """Send one round's Flower message; (the node's masked vector of exactly `expected` bytes, its signature)."""
        header = node_pb2.TrainHeader(job_envelope=job, contract_envelope=contract, message_size=len(message),
                                      admissions=list(admissions))
        replies = self._stub.TrainRound(send_header_first(node_pb2.TrainRequest, "header", header, "message_chunk",
                                                          message), timeout=self.timeout)
        with calling(f"node {self.node}"), cancel_late(replies, self.timeout, f"node {self.node}"):
            release, data = read_chunks_then(replies, chunk_field="vector_chunk", last_field="release",
                                             limit=expected, what=f"node {self.node}'s vector")
        if release.vector_size != len(data) or len(data) != expected:
            raise InvalidInput(f"node {self.node} sent a vector whose size does not match the job's model")
        return data, release.signature

    def forward(self, job: bytes, contract: bytes, phase: str, rnd: int, vectors: list[SignedVector]) -> str:
        """Forward every participant's signed vector of (phase, round); the global digest the node computed."""
        claims, blobs = vectors_to_proto(vectors)
        header = node_pb2.ForwardHeader(job_envelope=job, contract_envelope=contract, phase=phase, round=rnd,
                                        vectors=claims)
        with calling(f"node {self.node}"):
            reply = self._stub.ForwardRound.future(send_header_first(node_pb2.ForwardRequest, "header", header,
                                                                     "vector_chunk", blobs), timeout=self.timeout)
            with cancel_late(reply, self.timeout, f"node {self.node}"):
                return reply.result().global_digest

    def finish(self, job: bytes, contract: bytes) -> Envelope:
        with calling(f"node {self.node}"):
            call = self._stub.FinishTraining.future(node_pb2.FinishRequest(job_envelope=job,
                                                                           contract_envelope=contract),
                                                    timeout=self.timeout)
            with cancel_late(call, self.timeout, f"node {self.node}"):
                reply = call.result()
        return Envelope.from_json(reply.attestation_envelope)
