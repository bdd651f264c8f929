"""The buyer's client of the coordinator's `CoordinatorService` (protobuf edge)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from fedtrust.errors import ContextNeeded, InvalidInput, VerificationError
from fedtrust.progress import JobState, Progress
from fedtrust.transport.channels import ChannelPool, channel_to
from fedtrust.transport.chunks import unframe
from fedtrust.transport.limits import (
    MAX_CIPHERTEXT_BYTES,
    MAX_MODEL_BYTES,
    MAX_QUERY_CIPHERTEXT_BYTES,
    MAX_QUERY_CIPHERTEXTS,
    MAX_RELAYED_NODES,
)
from fedtrust.transport.serde import job_state_from_proto, progress_from_proto
from fedtrust.transport.status import calling
from fedtrust.transport.streams import read_parts, send_header_first
from fedtrust.transport.tls import TlsMaterial
from fedtrust.v1 import coordinator_pb2, coordinator_pb2_grpc, mpc_pb2, mpc_pb2_grpc, vertical_pb2, vertical_pb2_grpc

__all__ = ["CoordinatorClient", "JobOutcome", "TrainingOutcome", "JobState", "Progress", "OnProgress", "OnRelayed"]


@dataclass(frozen=True)
class JobOutcome:
    receipt: bytes
    #: what the coordinator relayed, as it arrived: (node, ciphertexts) in stream order; checked by the caller
    relayed: tuple[tuple[str, tuple[bytes, ...]], ...]


@dataclass(frozen=True)
class TrainingOutcome:
    receipt: bytes
    model: bytes


#: called with every progress message of a job (a query's stages, a training job's rounds)
OnProgress = Callable[[Progress], None]


def _collect_training(events: Iterator, on_progress: OnProgress | None, peer: str) -> TrainingOutcome:
    """Read a training job's stream (inside the caller's `calling(peer, timeout)`): progress, then the model."""
    for part, value, data in read_parts(events, "model_chunk", MAX_MODEL_BYTES, f"the model from {peer}"):
        if part == "progress":
            if data:
                raise InvalidInput(f"{peer} sent model chunks before a progress message")
            if on_progress:
                on_progress(progress_from_proto(value))
        elif part == "outcome":
            if value.model_size != len(data):
                raise InvalidInput("the coordinator's model size does not match its data")
            return TrainingOutcome(bytes(value.receipt), data)
    raise InvalidInput("the coordinator ended the stream without an outcome")


#: called with each node's relayed ciphertexts as they arrive (unchecked: `check_relayed` judges them later)
OnRelayed = Callable[[tuple[bytes, ...]], None]


def _collect(events: Iterator, on_progress: OnProgress | None, peer: str,
             max_nodes: int = MAX_RELAYED_NODES, on_relayed: OnRelayed | None = None) -> JobOutcome:
    """Read a query job's stream: progress, per node its ciphertext chunks then a RelayedRelease, the receipt.

    Read inside the caller's `calling(peer, timeout)`. Only sizes and counts are checked here (so a hostile
    coordinator cannot make the buyer hold unbounded data); what the ciphertexts are worth is
    checked against the nodes' attestations by `fedtrust.trust.verify.check_relayed`.
    """
    relayed: list[tuple[str, tuple[bytes, ...]]] = []
    what = "the ciphertexts the coordinator relayed for one node"
    for part, value, data in read_parts(events, "ciphertext_chunk", MAX_QUERY_CIPHERTEXT_BYTES, what):
        if part == "relayed":
            if len(relayed) >= max_nodes:
                raise VerificationError(f"the coordinator relayed outputs of more nodes than the job's {max_nodes} "
                                        "participants (a duplicated or extra node); refusing the result")
            if not value.ciphertext_sizes:
                raise InvalidInput("the coordinator relayed a node's release without ciphertexts")
            cts = unframe(value.ciphertext_sizes, data, what=what, limit=MAX_QUERY_CIPHERTEXT_BYTES,
                          limit_each=MAX_CIPHERTEXT_BYTES, max_count=MAX_QUERY_CIPHERTEXTS)
            relayed.append((value.node, tuple(cts)))
            if on_relayed is not None:
                on_relayed(relayed[-1][1])
        elif data:
            raise InvalidInput("the coordinator sent ciphertext chunks that no relayed release claims")
        elif part == "progress":
            if on_progress:
                on_progress(progress_from_proto(value))
        elif part == "outcome":
            return JobOutcome(bytes(value.receipt), tuple(relayed))
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

    @property
    def _peer(self) -> str:
        return f"coordinator {self.name} at {self.address}"

    def submit_query(self, job: bytes, contract: bytes, context: bytes, on_progress: OnProgress | None = None,
                     max_nodes: int = MAX_RELAYED_NODES, context_sent_before: bool = False,
                     on_relayed: OnRelayed | None = None) -> JobOutcome:
        """Submit a query job with the buyer's public HE context.

        With `context_sent_before` (an earlier job of this contract carried the
        same context), the job names the context by digest only; a coordinator
        that keeps no copy answers ContextNeeded before recording anything, and
        the job is sent again with the context. `on_relayed` sees each node's
        ciphertexts as they arrive (the buyer starts adding them).
        """
        def submit(ctx: bytes) -> JobOutcome:
            header = coordinator_pb2.SubmitHeader(job_envelope=job, contract_envelope=contract,
                                                  he_context_size=len(ctx))
            requests = send_header_first(coordinator_pb2.SubmitRequest, "header", header, "he_context_chunk", ctx)
            with self._channel() as ch, calling(self._peer, self.timeout) as calls:
                return _collect(calls.stream(self._stub(ch).SubmitQuery, requests), on_progress, self._peer,
                                max_nodes, on_relayed)

        if context_sent_before:
            try:
                return submit(b"")
            except ContextNeeded:
                pass
        return submit(context)

    def submit_vertical(self, job: bytes, contract: bytes, on_progress: OnProgress | None = None) -> JobOutcome:
        """A vertical job (PSI): progress, then the receipt; nothing else is relayed to the buyer."""
        with self._channel() as ch, calling(self._peer, self.timeout) as calls:
            return _collect(calls.stream(vertical_pb2_grpc.VerticalCoordinatorServiceStub(ch).SubmitVertical,
                                         vertical_pb2.VerticalSubmission(job_envelope=job, contract_envelope=contract)),
                            on_progress, self._peer, max_nodes=0)

    def submit_mpc(self, job: bytes, contract: bytes, on_progress: OnProgress | None = None) -> JobOutcome:
        """An MPC job: progress, then every owner's output shares sealed to the buyer, then the receipt."""
        with self._channel() as ch, calling(self._peer, self.timeout) as calls:
            return _collect(calls.stream(mpc_pb2_grpc.MpcCoordinatorServiceStub(ch).SubmitMpc,
                                         mpc_pb2.MpcSubmission(job_envelope=job, contract_envelope=contract)),
                            on_progress, self._peer)

    def submit_training(self, job: bytes, contract: bytes, on_progress: OnProgress | None = None) -> TrainingOutcome:
        with self._channel() as ch, calling(self._peer, self.timeout) as calls:
            return _collect_training(
                calls.stream(self._stub(ch).SubmitTraining,
                             coordinator_pb2.TrainingSubmission(job_envelope=job, contract_envelope=contract)),
                on_progress, self._peer)

    def fetch_model(self, job_id: str) -> TrainingOutcome:
        with self._channel() as ch, calling(self._peer, self.timeout) as calls:
            return _collect_training(calls.stream(self._stub(ch).FetchModel, coordinator_pb2.JobRef(job_id=job_id)),
                                     None, self._peer)

    def fetch_result(self, job_id: str, max_nodes: int = MAX_RELAYED_NODES) -> JobOutcome:
        with self._channel() as ch, calling(self._peer, self.timeout) as calls:
            return _collect(calls.stream(self._stub(ch).FetchResult, coordinator_pb2.JobRef(job_id=job_id)), None,
                            self._peer, max_nodes)

    def job_status(self, job_id: str) -> JobState:
        with self._channel() as ch, calling(self._peer):
            s = self._stub(ch).GetJob(coordinator_pb2.JobRef(job_id=job_id), timeout=60)
        return job_state_from_proto(s)

    def list_jobs(self, limit: int = 50) -> list[JobState]:
        """This buyer's jobs at the coordinator, newest first."""
        with self._channel() as ch, calling(self._peer):
            reply = self._stub(ch).ListJobs(coordinator_pb2.ListJobsRequest(limit=limit), timeout=60)
        return [job_state_from_proto(s) for s in reply.jobs]

    def cancel_job(self, job_id: str) -> JobState:
        """Ask the coordinator to stop a running job of this buyer."""
        with self._channel() as ch, calling(self._peer):
            s = self._stub(ch).CancelJob(coordinator_pb2.JobRef(job_id=job_id), timeout=60)
        return job_state_from_proto(s)
