"""The coordinator's side of a query job (kind "query"): admit, fan out, check, relay, sign.

The coordinator relays: every participant first admits the job
(`CoordinatorRuntime.admit_all`); then each computes and encrypts its part
under the buyer's key and attests it. The coordinator checks each node's
attestation against the ciphertexts that node sent (a faulty node fails the
job early, with its name), relays every participant's ciphertexts with the
receipt, and signs a statement naming exactly what it relayed; the buyer's
client checks them against the nodes' signatures, adds and decrypts.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from typing import ClassVar, Iterator

from fedtrust.coordinator.node_client import NodeRelease, run_query_on_node
from fedtrust.coordinator.runtime import CoordinatorRuntime, Event, Finished
from fedtrust.coordinator.store import Relayed
from fedtrust.errors import ContextNeeded, Error, InvalidInput, JobFailed
from fedtrust.privacy.context_cache import ContextCache
from fedtrust.progress import Progress
from fedtrust.query.payload import QueryPayload
from fedtrust.trust.canonical import sha256_hex
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import (
    RelayedOutputs,
    verify_attestation,
)

log = logging.getLogger("fedtrust.coordinator")

__all__ = ["QueryJobs"]

#: how many (node, contract, context digest) deliveries the coordinator remembers
DELIVERED_LIMIT = 4096


class QueryJobs:
    kind: ClassVar[str] = QueryPayload.kind

    def __init__(self, runtime: CoordinatorRuntime) -> None:
        self.rt = runtime
        #: buyers' public HE contexts per (contract, context digest): a buyer sends its context once per contract
        self.contexts = ContextCache()
        #: (node, contract, context digest) whose context a node has received: later jobs name it by digest only
        self._delivered: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._delivered_lock = threading.Lock()

    def run(self, peer: tuple[str, str], job_bytes: bytes, contract_bytes: bytes, context: bytes) -> Iterator[Event]:
        rt = self.rt
        contract, contract_env, job, job_env = rt.check(peer, job_bytes, contract_bytes)
        payload = job.payload_as(QueryPayload, "SubmitQuery", "submit training jobs with SubmitTraining")
        payload.he.check_supported()
        context = self.job_context(contract_env.digest, payload, context)
        done = rt.store.begin(job.job_id, job_env.digest, contract_env.digest, contract.buyer.name, job.participants)
        total = len(job.participants)
        if done is not None:
            yield Progress("succeeded", total, total, "job already finished; returning the stored result")
            yield Finished(done.receipt or b"", rt.store.relayed(job.job_id))
            return
        with rt.failing(job.job_id):
            rt.store.heartbeat(job.job_id, "admitting", answered=0)
            yield Progress("admitting", 0, total, f"asking {total} owners to admit the job")
            admissions = rt.admit_all(contract, contract_env.digest, job, job_env.digest, job_bytes, contract_bytes)
            rt.check_cancelled(job.job_id, "no owner ran it and nobody was charged")
            rt.store.heartbeat(job.job_id, "dispatched", answered=0)
            yield Progress("dispatched", 0, total, f"all {total} owners admitted the job; sent to them")
            releases: dict[str, NodeRelease] = {}
            for event in self._fan_out(contract, contract_env.digest, job, payload, job_bytes, contract_bytes, context,
                                       releases, admissions):
                rt.store.heartbeat(job.job_id, event.stage, answered=event.done)
                yield event
            checked = [self._check_release(contract, contract_env.digest, job_env.digest, releases[n])
                       for n in job.participants]
            attestations = [env for env, _ in checked]
            relayed = tuple(Relayed(n, releases[n].ciphertexts) for n in job.participants)
            bundle = rt.receipt(contract_env, job_env, attestations,
                                tuple(RelayedOutputs(r.node, env.digest, outputs)
                                      for r, (env, outputs) in zip(relayed, checked)))

        def store() -> None:
            with rt.failing(job.job_id):
                rt.store.succeed(job.job_id, bundle, relayed)
            # kept once a job of the contract succeeded with it: the buyer's next jobs name it by digest only
            self.contexts.keep(contract_env.digest, payload.he.context_digest, context)

        # the result is stored (fsynced) while the ciphertexts stream to the buyer; the receipt waits for it
        stored = rt.calls.submit(store)
        yield Progress("relayed", total, total, "every node's ciphertexts relayed; receipt signed")
        yield Finished(bundle, relayed, stored.result)

    def job_context(self, contract_digest: str, payload: QueryPayload, context: bytes) -> bytes:
        """The buyer's context: the one sent (kept for the contract's next jobs), else the kept copy, else
        ContextNeeded (before anything is recorded: the buyer resends the job with its context)."""
        if context:
            if sha256_hex(context) != payload.he.context_digest:
                raise InvalidInput("HE context does not match the digest in the signed job spec; resend the buyer's "
                                   "context")
            return context
        kept = self.contexts.get(contract_digest, payload.he.context_digest)
        if kept is None:
            raise ContextNeeded("the coordinator keeps no copy of the HE context this job names; resend the job "
                                "with the buyer's context")
        return kept

    def _node_holds(self, key: tuple[str, str, str]) -> bool:
        with self._delivered_lock:
            return key in self._delivered

    def _delivered_to(self, key: tuple[str, str, str]) -> None:
        with self._delivered_lock:
            self._delivered[key] = None
            self._delivered.move_to_end(key)
            while len(self._delivered) > DELIVERED_LIMIT:
                self._delivered.popitem(last=False)

    def _run_on_node(self, contract, contract_digest: str, payload: QueryPayload, node: str, job_bytes: bytes,
                     contract_bytes: bytes, context: bytes, admissions: list[bytes]) -> NodeRelease:
        """RunQuery at one node, naming the context by digest only where the node received it before; a node
        that answers ContextNeeded (restarted, or its copy expired) gets the job again with the context."""
        key = (node, contract_digest, payload.he.context_digest)
        rt = self.rt

        def run(ctx: bytes) -> NodeRelease:
            return run_query_on_node(node, rt.address_of(contract, node), rt.tls, job_bytes, contract_bytes, ctx,
                                     rt.config.node_timeout_s, admissions, channels=rt.channels)

        rel = None
        if self._node_holds(key):
            try:
                rel = run(b"")
            except ContextNeeded:
                log.info("node %s keeps no copy of the buyer's context; resending it", node)
        if rel is None:
            rel = run(context)
        self._delivered_to(key)
        return rel

    def _fan_out(self, contract, contract_digest, job, payload, job_bytes, contract_bytes, context, releases,
                 admissions) -> Iterator[Progress]:
        results: queue.Queue = queue.Queue()

        def ask(node: str) -> None:
            try:
                rel = self._run_on_node(contract, contract_digest, payload, node, job_bytes, contract_bytes, context,
                                        admissions)
                results.put((node, rel, None))
            except Error as e:
                results.put((node, None, e))
            except Exception:  # never let a thread die silently
                log.exception("asking node %s failed", node)
                results.put((node, None, JobFailed(f"internal error while asking node {node}")))

        futures = []
        try:
            for node in job.participants:
                futures.append(self.rt.calls.submit(ask, node))
            for _ in job.participants:
                while True:
                    try:
                        node, rel, err = results.get(timeout=0.5)
                        break
                    except queue.Empty:
                        self.rt.check_cancelled(job.job_id, "owners that had already released their part were "
                                                             "charged for it")
                if err is not None:
                    raise JobFailed(f"node {node} failed, so the job failed (no partial aggregates): {err}")
                releases[node] = rel
                yield Progress("node-released", len(releases), len(job.participants), f"{node} released")
        finally:
            for f in futures:  # those not started yet; running calls end by themselves
                f.cancel()

    def _check_release(self, contract, contract_digest: str, job_digest: str,
                       rel: NodeRelease) -> tuple[Envelope, tuple[str, ...]]:
        """The node's attestation and the digests of the ciphertexts it sent (which its attestation names)."""
        att = verify_attestation(rel.attestation, contract)
        problems = []
        if att.node != rel.node:
            problems.append("names another node")
        if att.job_digest != job_digest or att.contract_digest != contract_digest:
            problems.append("is for another job or contract")
        outputs = tuple(sha256_hex(c) for c in rel.ciphertexts)
        if tuple(att.outputs) != outputs:
            problems.append("does not match the ciphertexts it sent")
        if problems:
            raise JobFailed(f"node {rel.node} sent an attestation that {' and '.join(problems)}")
        return rel.attestation, outputs
