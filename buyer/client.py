"""The buyer's client of the coordinator's `CoordinatorService` (protobuf edge)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import grpc

from fedtrust.errors import InvalidInput, VerificationError
from fedtrust.privacy.he import MAX_CIPHERTEXT_BYTES
from fedtrust.transport.channels import ChannelPool, channel_to
from fedtrust.transport.chunks import split
from fedtrust.transport.status import error_from_rpc
from fedtrust.transport.tls import TlsMaterial
from fedtrust.v1 import coordinator_pb2, coordinator_pb2_grpc, vertical_pb2, vertical_pb2_grpc

#: a query's vector never needs more ciphertexts than this per node (16 × 8192 slots)
MAX_CIPHERTEXTS_PER_NODE = 16
#: default cap on relayed participants when the caller does not know the job's (a receipt holds at most 1024)
MAX_RELAYED_NODES = 1024


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    done: int
    total: int
    message: str


@dataclass(frozen=True)
class JobOutcome:
    receipt: bytes
    #: what the coordinator relayed, as it arrived: (node, ciphertexts) in stream order; checked by the caller
    relayed: tuple[tuple[str, tuple[bytes, ...]], ...]


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str
    error: str
    contract_digest: str
    participants: tuple[str, ...]
    created_at: str
    updated_at: str
    kind: str = "query"
    stage: str = ""
    round: int = 0
    rounds: int = 0
    answered: int = 0
    heartbeat_at: str = ""

    @classmethod
    def from_proto(cls, s) -> "JobState":
        return cls(s.job_id, s.state, s.error, s.contract_digest, tuple(s.participants), s.created_at, s.updated_at,
                   s.kind or "query", s.stage, s.round, s.rounds, s.answered, s.heartbeat_at)


OnProgress = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class RoundEvent:
    """A training job's progress: aggregate metrics only (means over all participants)."""

    stage: str  # "started", "node-answered", "aggregated", "finishing", "succeeded"
    round: int
    rounds: int
    phase: str  # "train" or "evaluate"
    done: int
    total: int
    loss: float | None
    accuracy: float | None
    message: str


@dataclass(frozen=True)
class TrainingOutcome:
    receipt: bytes
    model: bytes


OnRound = Callable[[RoundEvent], None]
#: the largest model file a coordinator may send (10M float32 parameters plus metadata)
MAX_MODEL_BYTES = 48 * 1024 * 1024


def _collect_training(events: Iterator, on_round: OnRound | None, peer: str) -> TrainingOutcome:
    data = bytearray()
    try:
        for ev in events:
            part = ev.WhichOneof("part")
            if part == "progress":
                if on_round:
                    p = ev.progress
                    on_round(RoundEvent(p.stage, p.round, p.rounds, p.phase, p.done, p.total,
                                        p.loss if p.has_metrics else None, p.accuracy if p.has_metrics else None,
                                        p.message))
            elif part == "model_chunk":
                data += ev.model_chunk
                if len(data) > MAX_MODEL_BYTES:
                    raise InvalidInput("the coordinator sent a model larger than any training job produces")
            elif part == "outcome":
                if ev.outcome.model_size != len(data):
                    raise InvalidInput("the coordinator's model size does not match its data")
                return TrainingOutcome(bytes(ev.outcome.receipt), bytes(data))
    except grpc.RpcError as e:
        raise error_from_rpc(e, peer) from None
    raise InvalidInput("the coordinator ended the stream without an outcome")


def _collect(events: Iterator, on_progress: OnProgress | None, peer: str,
             max_nodes: int = MAX_RELAYED_NODES) -> JobOutcome:
    """Read a query job's stream: progress, per node its ciphertext chunks then a RelayedRelease, the receipt.

    Only sizes and counts are checked here (so a hostile coordinator cannot
    make the buyer hold unbounded data); what the ciphertexts are worth is
    checked against the nodes' attestations by `fedtrust.trust.verify.check_relayed`.
    """
    data = bytearray()
    relayed: list[tuple[str, tuple[bytes, ...]]] = []
    try:
        for ev in events:
            part = ev.WhichOneof("part")
            if part == "progress":
                if on_progress:
                    p = ev.progress
                    on_progress(ProgressEvent(p.stage, p.done, p.total, p.message))
            elif part == "ciphertext_chunk":
                data += ev.ciphertext_chunk
                if len(data) > MAX_CIPHERTEXTS_PER_NODE * MAX_CIPHERTEXT_BYTES:
                    raise InvalidInput("the coordinator relayed more ciphertext bytes for one node than any query needs")
            elif part == "relayed":
                sizes = list(ev.relayed.ciphertext_sizes)
                if len(relayed) >= max_nodes:
                    raise VerificationError(f"the coordinator relayed outputs of more nodes than the job's {max_nodes} "
                                            "participants (a duplicated or extra node); refusing the result")
                if not sizes or len(sizes) > MAX_CIPHERTEXTS_PER_NODE or sum(sizes) != len(data):
                    raise InvalidInput("the coordinator's relayed ciphertext sizes do not match its data")
                cts, pos = [], 0
                for s in sizes:
                    cts.append(bytes(data[pos:pos + s]))
                    pos += s
                relayed.append((ev.relayed.node, tuple(cts)))
                data = bytearray()
            elif part == "outcome":
                if data:
                    raise InvalidInput("the coordinator sent ciphertext chunks that no relayed release claims")
                return JobOutcome(bytes(ev.outcome.receipt), tuple(relayed))
    except grpc.RpcError as e:
        raise error_from_rpc(e, peer) from None
    raise InvalidInput("the coordinator ended the stream without an outcome")


#: the buyer's channels to coordinators, per (address, subject, own credentials); see transport.channels
_CHANNELS = ChannelPool(limit=16)


class CoordinatorClient:
    """Calls one coordinator, `name` (from the contract): a server with another subject's certificate is refused."""

    def __init__(self, address: str, tls: TlsMaterial, name: str, timeout: float = 600.0) -> None:
        self.address = address
        self.tls = tls
        self.name = name
        self.timeout = timeout

    def _channel(self):
        # kept open across this process's jobs; the coordinator's subject is pinned on every handshake
        return channel_to(_CHANNELS, self.address, self.tls, ("coordinator", self.name))

    def _stub(self, channel):
        return coordinator_pb2_grpc.CoordinatorServiceStub(channel)

    def submit_query(self, job: bytes, contract: bytes, context: bytes, on_progress: OnProgress | None = None,
                     max_nodes: int = MAX_RELAYED_NODES) -> JobOutcome:
        def requests():
            yield coordinator_pb2.SubmitRequest(header=coordinator_pb2.SubmitHeader(
                job_envelope=job, contract_envelope=contract, he_context_size=len(context)))
            for chunk in split(context):
                yield coordinator_pb2.SubmitRequest(he_context_chunk=chunk)

        with self._channel() as ch:
            return _collect(self._stub(ch).SubmitQuery(requests(), timeout=self.timeout), on_progress,
                            f"coordinator {self.name} at {self.address}", max_nodes)

    def submit_vertical(self, job: bytes, contract: bytes, on_progress: OnProgress | None = None) -> JobOutcome:
        """A vertical job (PSI): progress, then the receipt; nothing else is relayed to the buyer."""
        with self._channel() as ch:
            outcome = _collect(vertical_pb2_grpc.VerticalCoordinatorServiceStub(ch).SubmitVertical(
                vertical_pb2.VerticalSubmission(job_envelope=job, contract_envelope=contract), timeout=self.timeout),
                on_progress, f"coordinator {self.name} at {self.address}", max_nodes=0)
        return outcome

    def submit_training(self, job: bytes, contract: bytes, on_round: OnRound | None = None) -> TrainingOutcome:
        with self._channel() as ch:
            return _collect_training(
                self._stub(ch).SubmitTraining(coordinator_pb2.TrainingSubmission(job_envelope=job,
                                                                                  contract_envelope=contract),
                                              timeout=self.timeout),
                on_round, f"coordinator {self.name} at {self.address}")

    def fetch_model(self, job_id: str) -> TrainingOutcome:
        with self._channel() as ch:
            return _collect_training(self._stub(ch).FetchModel(coordinator_pb2.JobRef(job_id=job_id),
                                                               timeout=self.timeout),
                                     None, f"coordinator {self.name} at {self.address}")

    def fetch_result(self, job_id: str, max_nodes: int = MAX_RELAYED_NODES) -> JobOutcome:
        with self._channel() as ch:
            return _collect(self._stub(ch).FetchResult(coordinator_pb2.JobRef(job_id=job_id), timeout=self.timeout),
                            None, f"coordinator {self.name} at {self.address}", max_nodes)

    def job_status(self, job_id: str) -> JobState:
        with self._channel() as ch:
            try:
                s = self._stub(ch).GetJob(coordinator_pb2.JobRef(job_id=job_id), timeout=60)
            except grpc.RpcError as e:
                raise error_from_rpc(e, f"coordinator {self.name} at {self.address}") from None
        return JobState.from_proto(s)

    def list_jobs(self, limit: int = 50) -> list[JobState]:
        """This buyer's jobs at the coordinator, newest first."""
        with self._channel() as ch:
            try:
                reply = self._stub(ch).ListJobs(coordinator_pb2.ListJobsRequest(limit=limit), timeout=60)
            except grpc.RpcError as e:
                raise error_from_rpc(e, f"coordinator {self.name} at {self.address}") from None
        return [JobState.from_proto(s) for s in reply.jobs]

    def cancel_job(self, job_id: str) -> JobState:
        """Ask the coordinator to stop a running job of this buyer."""
        with self._channel() as ch:
            try:
                s = self._stub(ch).CancelJob(coordinator_pb2.JobRef(job_id=job_id), timeout=60)
            except grpc.RpcError as e:
                raise error_from_rpc(e, f"coordinator {self.name} at {self.address}") from None
        return JobState.from_proto(s)
