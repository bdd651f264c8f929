"""The coordinator's client of a node's training RPCs (protobuf edge); one channel per node per job.

The vectors forwarded in a phase go to every node: `ForwardFrames` serializes
each vector's chunk messages once, and every node's ForwardRound stream sends
those same bytes (a header of its own first), instead of copying and
serializing model-sized vectors once per node.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

from fedtrust.errors import InvalidInput
from fedtrust.transport.chunks import split
from fedtrust.transport.serde import vectors_to_proto
from fedtrust.transport.server import secure_channel
from fedtrust.transport.status import calling
from fedtrust.transport.streams import read_chunks_then, send_header_first
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.vectors import SignedVector
from fedtrust.v1 import node_pb2, node_pb2_grpc

__all__ = ["NodeTrainingClient", "ForwardFrames"]

FORWARD_METHOD = "/fedtrust.v1.NodeService/ForwardRound"


class ForwardFrames:
    """Each forwarded vector's serialized `ForwardRequest(vector_chunk=…)` messages, made once for every node.

    Keyed by the vector object itself (kept alive here, so its id is not reused); `clear()` between phases.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: dict[int, tuple[bytes, list[bytes]]] = {}

    def of(self, vector: bytes) -> list[bytes]:
        with self._lock:  # one thread serializes a vector; the others wait for its frames
            hit = self._frames.get(id(vector))
            if hit is None or hit[0] is not vector:
                hit = (vector, [node_pb2.ForwardRequest(vector_chunk=c).SerializeToString() for c in split(vector)])
                self._frames[id(vector)] = hit
            return hit[1]

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()


class NodeTrainingClient:
    def __init__(self, node: str, address: str, tls: TlsMaterial, timeout: float) -> None:
        self.node = node
        self.timeout = timeout
        self._channel = secure_channel(address, tls, ("node", node))
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)
        #: ForwardRound with requests that are already serialized (`ForwardFrames`); replies parsed as the stub does
        self._forward = self._channel.stream_unary(FORWARD_METHOD, request_serializer=None,
                                                   response_deserializer=node_pb2.ForwardReply.FromString)

    def close(self) -> None:
        self._channel.close()

    def train_round(self, job: bytes, contract: bytes, message: bytes, expected: int,
                    admissions: tuple[bytes, ...] = ()) -> tuple[bytes, bytes]:
        """Send one round's Flower message; (the node's masked vector of exactly `expected` bytes, its signature)."""
        header = node_pb2.TrainHeader(job_envelope=job, contract_envelope=contract, message_size=len(message),
                                      admissions=list(admissions))
        with calling(f"node {self.node}", self.timeout) as calls:
            replies = calls.stream(self._stub.TrainRound, send_header_first(node_pb2.TrainRequest, "header", header,
                                                                            "message_chunk", message))
            release, data = read_chunks_then(replies, chunk_field="vector_chunk", last_field="release",
                                             limit=expected, what=f"node {self.node}'s vector")
        if release.vector_size != len(data) or len(data) != expected:
            raise InvalidInput(f"node {self.node} sent a vector whose size does not match the job's model")
        return data, release.signature

    def forward(self, job: bytes, contract: bytes, phase: str, rnd: int, vectors: list[SignedVector],
                frames: ForwardFrames | None = None) -> str:
        """Forward every participant's signed vector of (phase, round); the global digest the node computed.

        With `frames`, the vectors' chunk messages serialized once for all nodes (see `ForwardFrames`).
        """
        claims, blobs = vectors_to_proto(vectors)
        header = node_pb2.ForwardHeader(job_envelope=job, contract_envelope=contract, phase=phase, round=rnd,
                                        vectors=claims)
        shared = frames or ForwardFrames()

        def requests() -> Iterator[bytes]:  # the same bytes as send_header_first's messages, serialized
            yield node_pb2.ForwardRequest(header=header).SerializeToString()
            for blob in blobs:
                yield from shared.of(blob)

        with calling(f"node {self.node}", self.timeout) as calls:
            return calls.future(self._forward, requests()).result().global_digest

    def finish(self, job: bytes, contract: bytes) -> Envelope:
        with calling(f"node {self.node}", self.timeout) as calls:
            reply = calls.future(self._stub.FinishTraining,
                                 node_pb2.FinishRequest(job_envelope=job, contract_envelope=contract)).result()
        return Envelope.from_json(reply.attestation_envelope)
