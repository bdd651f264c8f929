"""The coordinator's side of a federated training job: check, run the strategy loop in a worker, seal.

The strategy loop runs in a worker process per job (`fedtrust.training.
server_loop`; Flower's task identity is process-global). This module checks
the job like a query (contract, buyer's mTLS identity and signature,
participants) plus the training rules, persists it, starts the worker, turns
its reports into progress events (aggregate metrics only), and at the end
verifies every node's attestation against the digests of the vectors that
node actually sent and the final model and metrics it computed itself,
signs the statement (model digest, rounds, participants, per-round
aggregate metrics) and stores the model and receipt. Any failure —
a node that refuses, drops or times out, a worker that dies — fails the job
with the reason; there are no partial models.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Union

from fedtrust import errors
from fedtrust.coordinator.server_loop import JobArgs, run_job
from fedtrust.coordinator.store import JobRecord
from fedtrust.errors import Error, JobFailed
from fedtrust.isolate import preload, start_worker
from fedtrust.progress import Progress
from fedtrust.training.policy import check_training
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.canonical import sha256_hex, utc_now
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import (
    CoordinatorStatement,
    ReceiptBundle,
    RoundMetric,
    TrainingSummary,
    metrics_digest,
    sign_coordinator_statement,
    verify_attestation,
)

log = logging.getLogger("fedtrust.coordinator")

__all__ = ["TrainingJobs", "TrainingFinished"]

# the worker's fork server starts with Flower, torch and gRPC already imported, so a job starts in milliseconds
preload("fedtrust.coordinator.server_loop", "fedtrust.coordinator.grid", "fedtrust.coordinator.training_client",
        "fedtrust.training.models", "torch", "flwr.serverapp")

_KINDS = {cls.kind: cls for cls in (errors.InvalidInput, errors.ConfigError, errors.VerificationError,
                                    errors.PolicyViolation, errors.BudgetExhausted, errors.ReplayError,
                                    errors.NotFound, errors.NodeUnreachable, errors.JobFailed)}


@dataclass(frozen=True)
class TrainingFinished:
    receipt: bytes  # ReceiptBundle JSON, without the buyer's acknowledgement
    model: bytes  # safetensors


TrainingEvent = Union[Progress, TrainingFinished]


class TrainingJobs:
    kind: ClassVar[str] = TrainingSpec.kind
    #: seconds the worker may stay silent beyond the node timeout before the watchdog stops it (every step the
    #: worker waits on is a node call with the node timeout as its deadline, so a longer silence is a stuck worker)
    stall_margin_s: float = 30.0

    def __init__(self, runtime, worker: Callable = run_job) -> None:
        self.rt = runtime
        self._worker = worker  # the strategy loop's body (tests play a worker that stalls)
        self._workers: set = set()
        self._lock = threading.Lock()

    def resume(self, rec: JobRecord, job_bytes: bytes, contract_bytes: bytes) -> None:
        """Run an interrupted job again (in the caller's thread): the nodes answer the rounds they already
        released from their stored vectors (same global, same bytes, no second training or debit), so the job
        continues where it stopped. The buyer fetches the model with `fedtrust job result`."""
        log.warning("resuming training job %s after a coordinator restart", rec.job_id)
        try:
            for _ in self.run(("buyer", rec.buyer), job_bytes, contract_bytes, resume=True):
                pass
            log.warning("resumed training job %s succeeded", rec.job_id)
        except Error as e:
            log.warning("resumed training job %s failed: %s", rec.job_id, e)
            self.rt.store.fail(rec.job_id, f"could not resume after a coordinator restart: {e}")
        except Exception:  # never leave a job 'running' that nothing runs
            log.exception("resumed training job %s failed unexpectedly", rec.job_id)
            self.rt.store.fail(rec.job_id, "could not resume after a coordinator restart; submit it again")

    def shutdown(self) -> None:
        """Stop every running job's worker (the daemon is stopping; the jobs are failed at the next start)."""
        with self._lock:
            for proc in list(self._workers):
                proc.kill()

    # -- submit -------------------------------------------------------------
    def run(self, peer: tuple[str, str], job_bytes: bytes, contract_bytes: bytes,
            cancelled: Callable[[], bool] = lambda: False, resume: bool = False) -> Iterator[TrainingEvent]:
        contract, contract_env, job, job_env = self.rt.check(peer, job_bytes, contract_bytes)
        spec = job.payload_as(TrainingSpec, "SubmitTraining", "submit queries with SubmitQuery")
        check_training(spec, contract.rules, contract.schema, contract.dataset, len(job.participants))
        store = self.rt.store
        done = store.begin(job.job_id, job_env.digest, contract_env.digest, contract.buyer.name, job.participants,
                           kind="train", resume=resume)
        if done is not None:
            yield from self.replay(done)
            return
        store.keep_envelopes(job.job_id, job_bytes, contract_bytes)
        total = len(job.participants)
        with self.rt.failing(job.job_id, resumable=True,
                             disconnected="the buyer disconnected during the job; the training was stopped"):
            yield Progress("admitting", 0, total, f"asking {total} owners to admit the job", rounds=spec.rounds)
            store.heartbeat(job.job_id, "admitting", round=0, rounds=spec.rounds, answered=0)
            admissions = self.rt.admit_all(contract, contract_env.digest, job, job_env.digest, job_bytes,
                                           contract_bytes)
            self.rt.check_cancelled(job.job_id, "no owner trained and nobody was charged")
            args = JobArgs(
                job_id=job.job_id, job_digest=job_env.digest, job_bytes=job_bytes, contract_bytes=contract_bytes,
                spec=spec.to_dict(), schema=contract.schema.to_dict(), participants=job.participants,
                addresses={n: self.rt.address_of(contract, n) for n in job.participants},
                tls=(self.rt.tls.cert_pem, self.rt.tls.key_pem, self.rt.tls.ca_pem),
                node_timeout=self.rt.config.node_timeout_s,
                admissions=tuple(admissions),
            )
            outcome = None
            for item in self._watch(args, cancelled, job.job_id):
                if isinstance(item, Progress):
                    store.heartbeat(job.job_id, item.stage, round=item.round, rounds=item.rounds, answered=item.done)
                    if item.stage == "aggregated" and item.loss is not None and item.accuracy is not None:
                        store.record_round(job.job_id, item.round, item.phase, item.loss, item.accuracy)
                    yield item
                else:
                    outcome = item
            assert outcome is not None
            bundle = self._seal(contract, contract_env, job, job_env, outcome)
            store.succeed_training(job.job_id, bundle, outcome["model"])
        yield Progress("succeeded", total, total, "model and receipt ready", spec.rounds, spec.rounds)
        yield TrainingFinished(bundle, outcome["model"])

    def _watch(self, args: JobArgs, cancelled: Callable[[], bool],
               job_id: str = "") -> Iterator[Progress | dict]:
        proc, conn = start_worker(self._worker, args, name=f"fedtrust-train-{args.job_id[:12]}")
        with self._lock:
            self._workers.add(proc)
        limit = args.node_timeout + self.stall_margin_s
        heard = time.monotonic()
        owing: dict[str, tuple[str, float]] = {}  # node -> (the step it owes the worker an answer for, since when)
        try:
            while True:
                if cancelled():
                    raise JobFailed("the buyer disconnected; the training job was stopped")
                self.rt.check_cancelled(job_id, "the training was stopped (owners keep what they already spent)")
                now = time.monotonic()
                late = sorted(n for n, (_, since) in owing.items() if now - since > limit)
                if late or now - heard > limit:  # the watchdog: every call has the node timeout as its deadline
                    raise self._stalled(job_id, args.node_timeout, {n: owing[n][0] for n in late or owing})
                try:
                    ready = conn.poll(0.5)
                    msg = conn.recv() if ready else None
                except (EOFError, OSError):
                    raise JobFailed("the training worker process stopped without a result; see the coordinator's "
                                    "log") from None
                if msg is None:
                    if not proc.is_alive() and not conn.poll(0):
                        raise JobFailed("the training worker process crashed; see the coordinator's log")
                    continue
                heard = time.monotonic()
                if msg[0] == "waiting":
                    owing = {n: owing[n] if n in owing and owing[n][0] == step else (step, heard)
                             for n, step in dict(msg[1]).items()}
                elif msg[0] == "progress":
                    yield Progress.from_dict(msg[1])
                elif msg[0] == "done":
                    yield msg[1]
                    return
                else:
                    _, kind, text = msg
                    raise _KINDS.get(kind, JobFailed)(text)
        finally:
            proc.kill()
            proc.join(5)
            conn.close()
            with self._lock:
                self._workers.discard(proc)

    def _stalled(self, job_id: str, node_timeout: float, owing: dict[str, str]) -> JobFailed:
        """The watchdog's verdict on a worker silent past the node timeout plus the margin (it is killed next)."""
        log.warning("training job %s: the worker sent nothing for %g s (node timeout %g s + %g s), waiting on %s; "
                    "stopping it", job_id, node_timeout + self.stall_margin_s, node_timeout, self.stall_margin_s,
                    ", ".join(sorted(owing)) or "no node")
        why = (f"no answer within the node timeout ({node_timeout:g} s) and the training worker did not give up "
               f"within {self.stall_margin_s:g} s more; the coordinator stopped the worker and failed the job")
        if owing:
            node, step = sorted(owing.items())[0]
            return JobFailed(f"node {node} failed in {step}: {why}")
        return JobFailed(f"the training worker stalled: {why}; see the coordinator's log")

    def _seal(self, contract, contract_env: Envelope, job, job_env: Envelope, outcome: dict) -> bytes:
        spec = job.payload_as(TrainingSpec, "the training seal")
        metrics = tuple(RoundMetric.from_dict(m) for m in outcome["metrics"])
        attestations = []
        for node in job.participants:
            env = Envelope.from_json(outcome["attestations"][node])
            att = verify_attestation(env, contract, contract_digest=contract_env.digest, job_digest=job_env.digest)
            if att.node != node:
                raise JobFailed(f"node {node} sent an attestation that names another node")
            if tuple(att.outputs) != tuple(outcome["digests"][node]):
                raise JobFailed(f"node {node} sent an attestation that does not match the vectors it released")
            if att.model_digest != outcome["model_digest"] or att.metrics_digest != metrics_digest(metrics):
                raise JobFailed(f"node {node} attested another final model or other metrics than the coordinator "
                                "computed; the job failed")
            attestations.append(env)
        model_digest = sha256_hex(outcome["model"])
        if len(metrics) != spec.rounds:
            raise JobFailed("a round produced no aggregate; the job failed")
        statement = sign_coordinator_statement(
            CoordinatorStatement(
                job_digest=job_env.digest, contract_digest=contract_env.digest, aggregate_outputs=(model_digest,),
                attestations=tuple(a.digest for a in attestations), completed_at=utc_now(),
                training=TrainingSummary(model_digest, spec.rounds, tuple(job.participants), tuple(metrics)),
            ),
            self.rt.identity.signer,
        )
        return ReceiptBundle(contract_env, job_env, tuple(attestations), statement, None).to_json()

    # -- fetch again ----------------------------------------------------------
    def replay(self, rec: JobRecord) -> Iterator[TrainingEvent]:
        """A finished job's aggregate progress, model and receipt, from the store."""
        if rec.kind != self.kind or rec.state != "succeeded":
            raise errors.NotFound(f"job {rec.job_id} has no trained model (state: {rec.state}); see `fedtrust job status`")
        rounds = self.rt.store.rounds(rec.job_id)
        n = len(rec.participants)
        for m in rounds:
            yield Progress("aggregated", n, n, "", m.round, len(rounds), "train", m.train_loss, m.train_accuracy)
            if m.eval_loss is not None:
                yield Progress("aggregated", n, n, "", m.round, len(rounds), "evaluate", m.eval_loss, m.eval_accuracy)
        yield Progress("succeeded", n, n, "stored model and receipt", len(rounds), len(rounds))
        yield TrainingFinished(rec.receipt or b"", self.rt.store.model(rec.job_id))
