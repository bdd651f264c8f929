"""gRPC edge of the coordinator: stream parsing, limits, identity; logic in `runtime.py`."""
from __future__ import annotations

import time

from fedtrust.coordinator.runtime import CoordinatorRuntime, Finished, NotAdmitted, Progress
from fedtrust.coordinator.training_job import TrainingFinished, TrainingJobs, TrainingProgress
from fedtrust.errors import Error, JobFailed, NodeUnreachable, NotFound
from fedtrust.metrics import DaemonMetrics
from fedtrust.privacy.he import MAX_CONTEXT_BYTES
from fedtrust.transport.chunks import split
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.status import guarded
from fedtrust.transport.streams import check_envelope_sizes, read_header_and_payload
from fedtrust.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc


def _events(events):
    for ev in events:
        if isinstance(ev, Progress):
            yield coordinator_pb2.JobEvent(progress=common_pb2.Progress(
                stage=ev.stage, done=ev.done, total=ev.total, message=ev.message))
        elif isinstance(ev, Finished):
            for rel in ev.relayed:
                for ct in rel.ciphertexts:
                    for chunk in split(ct):
                        yield coordinator_pb2.JobEvent(ciphertext_chunk=chunk)
                yield coordinator_pb2.JobEvent(relayed=coordinator_pb2.RelayedRelease(
                    node=rel.node, ciphertext_sizes=[len(c) for c in rel.ciphertexts]))
            yield coordinator_pb2.JobEvent(outcome=coordinator_pb2.Outcome(receipt=ev.receipt))


def _training_events(events):
    for ev in events:
        if isinstance(ev, TrainingProgress):
            has = ev.loss is not None and ev.accuracy is not None
            yield coordinator_pb2.TrainingEvent(progress=coordinator_pb2.RoundProgress(
                stage=ev.stage, round=ev.round, rounds=ev.rounds, phase=ev.phase, done=ev.done, total=ev.total,
                has_metrics=has, loss=ev.loss if has else 0.0, accuracy=ev.accuracy if has else 0.0,
                message=ev.message))
        elif isinstance(ev, TrainingFinished):
            for chunk in split(ev.model):
                yield coordinator_pb2.TrainingEvent(model_chunk=chunk)
            yield coordinator_pb2.TrainingEvent(outcome=coordinator_pb2.TrainingOutcome(
                receipt=ev.receipt, model_size=len(ev.model)))


def _status(rec) -> coordinator_pb2.JobStatus:
    return coordinator_pb2.JobStatus(
        job_id=rec.job_id, state=rec.state, error=rec.error, contract_digest=rec.contract_digest,
        participants=list(rec.participants), created_at=rec.created_at, updated_at=rec.updated_at, kind=rec.kind,
        stage=rec.stage, round=rec.round, rounds=rec.rounds, answered=rec.answered, heartbeat_at=rec.heartbeat_at)


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(self, runtime: CoordinatorRuntime, metrics: DaemonMetrics | None = None) -> None:
        self.runtime = runtime
        self.training = TrainingJobs(runtime)
        self.metrics = metrics or DaemonMetrics("coordinator")

    def _measured(self, kind: str, events):
        """Count the job in flight (and its round, for training), its duration and outcome."""
        m = self.metrics
        start = time.monotonic()
        m.in_flight.labels(kind).inc()
        if kind == "train":
            m.rounds_in_flight.inc()  # a running training job has exactly one round in flight
        outcome = "failed"
        counted = False

        def count() -> None:
            nonlocal counted
            counted = True
            m.in_flight.labels(kind).dec()
            if kind == "train":
                m.rounds_in_flight.dec()
            m.duration.labels(kind).observe(time.monotonic() - start)
            m.jobs.labels(kind, outcome).inc()

        try:
            for ev in events:
                if isinstance(ev, (Finished, TrainingFinished)):
                    outcome = "succeeded"
                    count()  # before the last event leaves: the buyer may ask /metrics as soon as it has it
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
        yield from _training_events(self._measured("train", self.training.run(
            peer, request.job_envelope, request.contract_envelope, cancelled=lambda: not context.is_active())))

    @guarded
    def FetchModel(self, request, context):
        yield from _training_events(self.training.replay(self._own_job(request, context)))

    @guarded
    def SubmitQuery(self, request_iterator, context):
        peer = peer_identity(context)
        header, ctx = read_header_and_payload(request_iterator, "header", "he_context_size", "he_context_chunk",
                                              MAX_CONTEXT_BYTES, "HE context")
        yield from _events(self._measured("query", self.runtime.run_query(peer, header.job_envelope,
                                                                          header.contract_envelope, ctx)))

    def _own_job(self, request, context):
        return self.runtime.own_job(peer_identity(context), request.job_id)

    @guarded
    def GetJob(self, request, context):
        return _status(self._own_job(request, context))

    @guarded
    def ListJobs(self, request, context):
        peer = peer_identity(context)
        limit = min(request.limit or 50, 1000)
        return coordinator_pb2.JobList(jobs=[_status(r) for r in self.runtime.store.jobs_of(peer[1], limit)]
                                       if peer[0] == "buyer" else [])

    @guarded
    def CancelJob(self, request, context):
        return _status(self.runtime.cancel(peer_identity(context), request.job_id))

    @guarded
    def FetchResult(self, request, context):
        rec = self._own_job(request, context)
        if rec.state != "succeeded":
            raise NotFound(f"job {rec.job_id} has no result (state: {rec.state}); see `fedtrust job status`")
        n = len(rec.participants)
        yield from _events([Progress("succeeded", n, n, "stored result"),
                            Finished(rec.receipt or b"", self.runtime.store.relayed(rec.job_id))])
