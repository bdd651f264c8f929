"""gRPC edge of the coordinator: stream parsing, limits, identity; logic in `runtime.py`."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from fedtrust.coordinator.kinds import CoordinatorKinds
from fedtrust.coordinator.query_job import QueryJobs
from fedtrust.coordinator.runtime import CoordinatorRuntime, Finished, NotAdmitted
from fedtrust.coordinator.training_job import TrainingFinished, TrainingJobs
from fedtrust.errors import Error, JobFailed, NodeUnreachable, NotFound
from fedtrust.metrics import DaemonMetrics
from fedtrust.progress import Progress
from fedtrust.transport.limits import MAX_CONTEXT_BYTES
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.serde import job_state_to_proto, progress_to_proto
from fedtrust.transport.status import guarded
from fedtrust.transport.streams import check_envelope_sizes, deadline_of, read_header_first, send_chunks_then
from fedtrust.v1 import coordinator_pb2, coordinator_pb2_grpc


def _events(events):
    """A query or vertical job's events as `JobEvent`s: progress, per node its ciphertexts then its release,
    the receipt."""
    for ev in events:
        if isinstance(ev, Progress):
            yield coordinator_pb2.JobEvent(progress=progress_to_proto(ev))
        elif isinstance(ev, Finished):
            for rel in ev.relayed:
                yield from send_chunks_then(coordinator_pb2.JobEvent, "ciphertext_chunk", rel.ciphertexts, "relayed",
                                            coordinator_pb2.RelayedRelease(
                                                node=rel.node, ciphertext_sizes=[len(c) for c in rel.ciphertexts]))
            if ev.stored is not None:
                ev.stored()  # the receipt leaves only once the job's result is on disk
            yield coordinator_pb2.JobEvent(outcome=coordinator_pb2.Outcome(receipt=ev.receipt))


def _training_events(events):
    """A training job's events as `TrainingEvent`s: progress per round, the model, the receipt."""
    for ev in events:
        if isinstance(ev, Progress):
            yield coordinator_pb2.TrainingEvent(progress=progress_to_proto(ev))
        elif isinstance(ev, TrainingFinished):
            yield from send_chunks_then(coordinator_pb2.TrainingEvent, "model_chunk", ev.model, "outcome",
                                        coordinator_pb2.TrainingOutcome(receipt=ev.receipt, model_size=len(ev.model)))


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(self, runtime: CoordinatorRuntime, metrics: DaemonMetrics | None = None,
                 kinds: CoordinatorKinds | None = None) -> None:
        self.runtime = runtime
        #: one handler per job kind (`coordinator/kinds.py`), shared with the VerticalCoordinatorService
        self.kinds = kinds or CoordinatorKinds(runtime)
        self.metrics = metrics or DaemonMetrics("coordinator")

    @property
    def training(self) -> TrainingJobs:
        return self.kinds.get(TrainingJobs)

    def _measured(self, kind: str, events, *, rounds: bool = False):
        """Count the job in flight (and its round, for kinds that run in `rounds`), its duration and outcome."""
        m = self.metrics
        start = time.monotonic()
        m.in_flight.labels(kind).inc()
        if rounds:
            m.rounds_in_flight.inc()  # a running training job has exactly one round in flight
        outcome = "failed"
        counted = False

        def count() -> None:
            nonlocal counted
            counted = True
            m.in_flight.labels(kind).dec()
            if rounds:
                m.rounds_in_flight.dec()
            m.duration.labels(kind).observe(time.monotonic() - start)
            m.jobs.labels(kind, outcome).inc()

        def succeeded() -> None:
            nonlocal outcome
            outcome = "succeeded"
            count()  # before the last event leaves: the buyer may ask /metrics as soon as it has it

        def stored_then_succeeded(stored: Callable[[], object]) -> Callable[[], object]:
            def wait() -> object:
                done = stored()  # raises if the result could not be stored: the job failed, the metric says so
                succeeded()
                return done
            return wait

        try:
            for ev in events:
                if isinstance(ev, Finished) and ev.stored is not None:
                    # the result is still being stored while the ciphertexts stream: it succeeded once it is on disk
                    ev = replace(ev, stored=stored_then_succeeded(ev.stored))
                elif isinstance(ev, (Finished, TrainingFinished)):
                    succeeded()
                yield ev
        except NotAdmitted:
            outcome = "not-admitted"
            raise
        except Error as e:
            if not isinstance(e, (JobFailed, NodeUnreachable)):
                outcome = "refused"
                m.refusals.labels(e.kind).inc()
            raise
        finally:
            if not counted:
                count()

    @guarded
    def SubmitTraining(self, request, context):
        peer = peer_identity(context)
        check_envelope_sizes(request)
        training = self.training
        yield from _training_events(self._measured(training.kind, training.run(
            peer, request.job_envelope, request.contract_envelope, cancelled=lambda: not context.is_active()),
            rounds=True))

    @guarded
    def FetchModel(self, request, context):
        yield from _training_events(self.training.replay(self._own_job(request, context)))

    @guarded
    def SubmitQuery(self, request_iterator, context):
        peer = peer_identity(context)
        header, ctx = read_header_first(request_iterator, size="he_context_size", chunk_field="he_context_chunk",
                                        limit=MAX_CONTEXT_BYTES, what="HE context", deadline=deadline_of(context))
        query = self.kinds.get(QueryJobs)
        yield from _events(self._measured(query.kind, query.run(peer, header.job_envelope, header.contract_envelope,
                                                                ctx)))

    def _own_job(self, request, context):
        return self.runtime.own_job(peer_identity(context), request.job_id)

    @guarded
    def GetJob(self, request, context):
        return job_state_to_proto(self._own_job(request, context))

    @guarded
    def ListJobs(self, request, context):
        peer = peer_identity(context)
        limit = min(request.limit or 50, 1000)
        return coordinator_pb2.JobList(jobs=[job_state_to_proto(r) for r in self.runtime.store.jobs_of(peer[1], limit)]
                                       if peer[0] == "buyer" else [])

    @guarded
    def CancelJob(self, request, context):
        return job_state_to_proto(self.runtime.cancel(peer_identity(context), request.job_id))

    @guarded
    def FetchResult(self, request, context):
        rec = self._own_job(request, context)
        if rec.state != "succeeded":
            raise NotFound(f"job {rec.job_id} has no result (state: {rec.state}); see `fedtrust job status`")
        n = len(rec.participants)
        yield from _events([Progress("succeeded", n, n, "stored result"),
                            Finished(rec.receipt or b"", self.runtime.store.relayed(rec.job_id))])
