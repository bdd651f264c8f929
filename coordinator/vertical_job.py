"""The coordinator's side of a vertical PSI job: admit, then relay three steps between the two owners.

The coordinator is a relay here too. The owners' messages are sealed to each
other (`privacy.sealed`), so it sees their sizes and nothing else; it cannot
alter, swap or replay one (the receiver's open fails). It checks each owner's
attestation (signed by that owner, for this job, naming the digests of exactly
the two messages it relayed from that owner) and that both owners attest the
same intersection size, then signs a statement over the attestations. It keeps
no message: its store holds the receipt only. If an owner refuses (e.g. the
intersection is below the contract's `min_intersection`) or fails, the job
fails with its reason and nothing more is relayed.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, ClassVar, Iterator

from fedtrust.coordinator.runtime import CoordinatorRuntime, Event, Finished
from fedtrust.coordinator.vertical_client import psi_step_on_node
from fedtrust.errors import Error, InvalidInput, JobFailed
from fedtrust.progress import Progress
from fedtrust.trust.canonical import sha256_hex
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import verify_attestation
from fedtrust.trust.vertical import VerticalJob

log = logging.getLogger("fedtrust.coordinator")


class VerticalJobs:
    kind: ClassVar[str] = VerticalJob.kind

    def __init__(self, runtime: CoordinatorRuntime) -> None:
        self.runtime = runtime

    def run(self, peer: tuple[str, str], job_bytes: bytes, contract_bytes: bytes) -> Iterator[Event]:
        rt = self.runtime
        contract, contract_env, job, job_env = rt.check(peer, job_bytes, contract_bytes)
        job.payload_as(VerticalJob, "SubmitVertical", "submit it with its own call")
        if contract.rules.vertical is None:
            raise InvalidInput("this contract sells no vertical jobs (its rules have no [vertical] table)")
        done = rt.store.begin(job.job_id, job_env.digest, contract_env.digest, contract.buyer.name, job.participants,
                              kind=self.kind)
        total = len(job.participants)
        if done is not None:
            yield Progress("succeeded", total, total, "job already finished; returning the stored receipt")
            yield Finished(done.receipt or b"", ())
            return
        with rt.failing(job.job_id):
            yield Progress("admitting", 0, total, f"asking {total} owners to admit the job")
            admissions = rt.admit_all(contract, contract_env.digest, job, job_env.digest, job_bytes, contract_bytes)
            a, b = job.participants

            def step(n: int, inputs: dict[str, bytes]) -> dict[str, tuple[bytes, Envelope | None]]:
                def ask(node: str):
                    return psi_step_on_node(node, rt.address_of(contract, node), rt.tls, job_bytes, contract_bytes,
                                            admissions, n, inputs.get(node, b""), rt.config.node_timeout_s)
                return _both(job.participants, ask, f"PSI step {n}")

            yield Progress("dispatched", 0, total, "both owners admitted the job; PSI step 1 (blinded keys)")
            first = step(1, {})
            yield Progress("relaying", 1, 3, "PSI step 2: each owner blinds the other's keys again")
            second = step(2, {a: first[b][0], b: first[a][0]})
            yield Progress("relaying", 2, 3, "PSI step 3: each owner finds its rows in the intersection")
            third = step(3, {a: second[b][0], b: second[a][0]})
            envs = []
            for node in job.participants:
                env = third[node][1]
                if env is None:
                    raise JobFailed(f"node {node} answered PSI step 3 without its attestation")
                att = verify_attestation(env, contract)
                sent = (sha256_hex(first[node][0]), sha256_hex(second[node][0]))
                if att.node != node or att.job_digest != job_env.digest or att.contract_digest != contract_env.digest:
                    raise JobFailed(f"node {node} sent an attestation for another node, job or contract")
                if tuple(att.outputs) != sent or att.intersection_size is None:
                    raise JobFailed(f"node {node} sent an attestation that does not name the messages it released")
                envs.append((env, att))
            if envs[0][1].intersection_size != envs[1][1].intersection_size:
                raise JobFailed("the owners found intersections of different sizes; the job failed")
            bundle = rt.receipt(contract_env, job_env, tuple(e for e, _ in envs))
            rt.store.succeed(job.job_id, bundle, ())
        yield Progress("attested", total, total, "both owners attested the intersection; receipt signed")
        yield Finished(bundle, ())


def _both(nodes: tuple[str, ...], ask: Callable[[str], tuple], what: str) -> dict[str, tuple]:
    """Call both owners at once; the first failure fails the job, naming the owner."""
    out: dict[str, tuple] = {}
    with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="psi") as pool:
        futures = {n: pool.submit(ask, n) for n in nodes}
        for node, fut in futures.items():
            try:
                out[node] = fut.result()
            except Error as e:
                raise JobFailed(f"node {node} failed at {what}, so the job failed: {e}") from None
            except Exception:
                log.exception("%s at node %s failed", what, node)
                raise JobFailed(f"internal error at the coordinator during {what} with node {node}") from None
    return out
