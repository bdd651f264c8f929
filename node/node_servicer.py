"""gRPC edge of the node: stream parsing, limits, identity; logic is in `runtime.py`.

Every failure is audited by the rule it broke (never a value) and mapped to a
status code by `fedtrust.transport.status`; a malformed message can fail its
own call but never the daemon.
"""
from __future__ import annotations

import logging
import time

from fedtrust.errors import ContextNeeded, Error
from fedtrust.metrics import DaemonMetrics
from fedtrust.node.kinds import NodeKinds
from fedtrust.node.query_runtime import QueryRuntime
from fedtrust.node.runtime import NodeRuntime
from fedtrust.node.training_runtime import MAX_ROUND_MESSAGE_BYTES, TrainingRuntime
from fedtrust.transport.limits import MAX_CONTEXT_BYTES
from fedtrust.transport.peer import peer_identity
from fedtrust.transport.serde import vectors_from_proto
from fedtrust.transport.status import guarded
from fedtrust.transport.streams import (
    check_envelope_sizes,
    deadline_of,
    read_header,
    read_header_first,
    read_payload,
    send_chunks_then,
)
from fedtrust.trust.vectors import check_participant_set
from fedtrust.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger("fedtrust.node")

def read_train_header(requests, deadline: float | None = None):
    """TrainRound's stream: the header, then the round's Flower message within its declared size."""
    return read_header_first(requests, size="message_size", chunk_field="message_chunk",
                             limit=MAX_ROUND_MESSAGE_BYTES, what="the round's Flower message", deadline=deadline)


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, runtime: NodeRuntime, kinds: NodeKinds | None = None,
                 metrics: DaemonMetrics | None = None) -> None:
        self.runtime = runtime
        #: one handler per job kind (`node/kinds.py`), shared with the VerticalNodeService
        self.kinds = kinds or NodeKinds(runtime)
        self.metrics = metrics or DaemonMetrics("node")

    @property
    def training(self) -> TrainingRuntime:
        return self.kinds.get(TrainingRuntime)

    def _audited(self, peer, check, run, describe, event: str = "released"):
        """check() -> (checked job, payload), run(checked, payload) -> release; audit the release or the refusal."""
        who = f"{peer[0]}/{peer[1]}"
        checked = None
        start = time.monotonic()
        try:
            checked, payload = check()
            release = run(checked, payload)
        except ContextNeeded:  # not a refusal: the coordinator resends the job with the buyer's context
            raise
        except Error as e:
            self.metrics.refused(checked.job.kind if checked else "unknown", e.kind)
            job_id = checked.job.job_id if checked else None
            self.runtime.store.audit("refused", f"{e.kind}: {e}", peer=who, job_id=job_id,
                                     contract_digest=checked.contract_digest if checked else None)
            if checked is not None:  # (check_job logs its own refusals)
                self.runtime.record_job(checked, "refused", detail=f"{e.kind}: {e}")
            raise
        self.runtime.store.audit(event, describe(release), contract_digest=checked.contract_digest,
                                 job_id=checked.job.job_id, peer=who)
        self.metrics.jobs.labels(checked.job.kind, event).inc()
        if event == "released":
            self.metrics.duration.labels(checked.job.kind).observe(time.monotonic() - start)
        return release

    @guarded
    def AdmitJob(self, request, context):
        """Phase one: every check, nothing spent; a signed, short-lived admission."""
        peer = peer_identity(context)

        def check():
            check_envelope_sizes(request)
            if request.revocation_list:  # the coordinator's newest list: adopted only if signed and newer
                try:
                    self.runtime.revocations.offer(request.revocation_list)
                except Error as e:
                    log.warning("ignored a revocation list forwarded by %s/%s: %s", peer[0], peer[1], e)
            checked = self.runtime.check_job(peer, request.job_envelope, request.contract_envelope)
            return checked, None

        def admit(checked, _):
            self.kinds.admit(checked)  # the job kind's handler, by the signed job's kind
            return self.runtime.sign_admission(checked)

        admission = self._audited(peer, check, admit, lambda _: "admitted", event="admitted")
        return node_pb2.AdmitReply(admission_envelope=admission.to_json())

    @guarded
    def RunQuery(self, request_iterator, context):
        peer = peer_identity(context)

        def check():
            # he_context_size 0: the job names the context by digest only (see QueryRuntime.job_context)
            header, he_context = read_header_first(request_iterator, size="he_context_size",
                                                   chunk_field="he_context_chunk", limit=MAX_CONTEXT_BYTES,
                                                   what="HE context", deadline=deadline_of(context))
            checked = self.runtime.check_job(peer, header.job_envelope, header.contract_envelope)
            return checked, (he_context, list(header.admissions))

        query = self.kinds.get(QueryRuntime)
        release = self._audited(peer, check, lambda c, p: query.run_query(c, *p), lambda r: f"seq {r.seq}")
        yield from send_chunks_then(node_pb2.QueryReply, "ciphertext_chunk", release.outputs, "release",
                                    node_pb2.Release(attestation_envelope=release.attestation.to_json(),
                                                     ciphertext_sizes=[len(c) for c in release.outputs]))

    @guarded
    def TrainRound(self, request_iterator, context):
        peer = peer_identity(context)

        def check():
            header, message = read_train_header(request_iterator, deadline_of(context))
            checked = self.training.check(peer, header.job_envelope, header.contract_envelope)
            return checked, (message, list(header.admissions))

        release = self._audited(peer, check, lambda c, p: self.training.train_round(c, *p),
                                lambda r: f"{r.phase} round {r.round}")
        yield from send_chunks_then(node_pb2.TrainReply, "vector_chunk", release.vector, "release",
                                    node_pb2.RoundRelease(phase=release.phase, round=release.round,
                                                          global_digest=release.global_digest,
                                                          vector_size=len(release.vector),
                                                          signature=release.signature))

    @guarded
    def ForwardRound(self, request_iterator, context):
        peer = peer_identity(context)
        who = f"{peer[0]}/{peer[1]}"
        checked = None
        try:
            header = read_header(request_iterator)
            checked = self.training.check(peer, header.job_envelope, header.contract_envelope)
            limit = self.training.forward_limit(checked)
            check_participant_set([v.node for v in header.vectors], checked.job.participants, header.phase,
                                  header.round)
            data = read_payload(request_iterator, sum(v.vector_size for v in header.vectors),
                                chunk_field="vector_chunk", limit=limit, what="the forwarded vectors",
                                deadline=deadline_of(context), view=True)  # vectors are views of it, not copies
            items = vectors_from_proto(header.vectors, data)
            digest = self.training.forward(checked, header.phase, header.round, items)
        except Error as e:
            self.runtime.store.audit("refused", f"{e.kind}: {e}", peer=who, job_id=checked.job.job_id if checked else None,
                                     contract_digest=checked.contract_digest if checked else None)
            log.info("refused forwarded vectors: %s", e)
            raise
        self.runtime.store.audit("added", f"{header.phase} round {header.round} of every participant",
                                 contract_digest=checked.contract_digest, job_id=checked.job.job_id, peer=who)
        return node_pb2.ForwardReply(global_digest=digest)

    @guarded
    def FinishTraining(self, request, context):
        peer = peer_identity(context)
        check_envelope_sizes(request)
        checked = self.runtime.check_job(peer, request.job_envelope, request.contract_envelope)
        attestation = self.training.finish(checked)
        self.training.record_finished(checked)
        self.runtime.store.audit("attested", "training job", contract_digest=checked.contract_digest,
                                 job_id=checked.job.job_id, peer=f"{peer[0]}/{peer[1]}")
        return node_pb2.FinishReply(attestation_envelope=attestation.to_json())
