"""The coordinator's client of a node's training RPCs (protobuf edge); one channel per node per job."""
from __future__ import annotations

import grpc

from fedtrust.errors import InvalidInput
from fedtrust.transport.chunks import Assembler, split
from fedtrust.transport.server import secure_channel
from fedtrust.transport.status import error_from_rpc
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
        def requests():
            yield node_pb2.TrainRequest(header=node_pb2.TrainHeader(
                job_envelope=job, contract_envelope=contract, message_size=len(message),
                admissions=list(admissions)))
            for chunk in split(message):
                yield node_pb2.TrainRequest(message_chunk=chunk)

        asm = Assembler(None, expected, f"node {self.node}'s vector")
        release = None
        try:
            for reply in self._stub.TrainRound(requests(), timeout=self.timeout):
                part = reply.WhichOneof("part")
                if part == "vector_chunk":
                    asm.add(reply.vector_chunk)
                elif part == "release":
                    release = reply.release
        except grpc.RpcError as e:
            raise error_from_rpc(e, f"node {self.node}") from None
        data = asm.finish()
        if release is None or release.vector_size != len(data) or len(data) != expected:
            raise InvalidInput(f"node {self.node} sent a vector whose size does not match the job's model")
        return data, release.signature

    def forward(self, job: bytes, contract: bytes, phase: str, rnd: int, vectors: list[SignedVector]) -> str:
        """Forward every participant's signed vector of (phase, round); the global digest the node computed."""
        def requests():
            yield node_pb2.ForwardRequest(header=node_pb2.ForwardHeader(
                job_envelope=job, contract_envelope=contract, phase=phase, round=rnd,
                vectors=[node_pb2.SignedVector(node=v.node, job_digest=v.job_digest, phase=v.phase, round=v.round,
                                               signature=v.signature, vector_size=len(v.vector)) for v in vectors]))
            for v in vectors:
                for chunk in split(v.vector):
                    yield node_pb2.ForwardRequest(vector_chunk=chunk)

        try:
            return self._stub.ForwardRound(requests(), timeout=self.timeout).global_digest
        except grpc.RpcError as e:
            raise error_from_rpc(e, f"node {self.node}") from None

    def finish(self, job: bytes, contract: bytes) -> Envelope:
        try:
            reply = self._stub.FinishTraining(node_pb2.FinishRequest(job_envelope=job, contract_envelope=contract),
                                              timeout=self.timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e, f"node {self.node}") from None
        return Envelope.from_json(reply.attestation_envelope)
