"""The coordinator's core: check a submitted job, run the admission phase, reach the nodes.

Each job kind's handler (registered in `coordinator/kinds.py`: `query_job.py`,
`training_job.py`, `vertical_job.py`) runs its jobs on top of this core.

The coordinator is a relay, not a source of truth. It holds no secret key and
computes no aggregate: it sends each job to exactly the participants the
buyer signed, in two phases: every participant first *admits* the job (all
its checks, nothing spent, a short-lived signed admission); only when all
have admitted does it send *run*, with every admission attached, so a job
that one owner refuses or that cannot reach one owner costs nobody anything
and the buyer's error names the job and the owner. It checks each node's
attestation against the ciphertexts that node sent (so a faulty node fails
the job early, with its name), and relays every participant's ciphertexts with the receipt to the buyer, whose client
checks them against the nodes' signatures, adds them and decrypts. Its
signed statement names exactly what it relayed (per node: the attestation
digest and the output digests). If any participant fails or times out the
job fails (no partial results) with the reason.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, Sequence, Union

from fedtrust.config import CoordinatorConfig, check_private_files
from fedtrust.coordinator.node_client import admit_on_node
from fedtrust.coordinator.store import JobRecord, JobStore, Relayed
from fedtrust.errors import (
    ConfigError,
    Error,
    JobFailed,
    NodeUnreachable,
    NotFound,
    PolicyViolation,
    VerificationError,
)
from fedtrust.progress import Progress
from fedtrust.transport.channels import ChannelPool
from fedtrust.transport.tls import TlsMaterial
from fedtrust.trust.admission import verify_admissions
from fedtrust.trust.canonical import utc_now
from fedtrust.trust.contracts import Contract, contract_envelope, require_signatures, verify_contract
from fedtrust.trust.credentials import KX_KEY, SIGNING_KEY, TLS_KEY, load_identity_as
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec, verify_job
from fedtrust.trust.receipts import CoordinatorStatement, ReceiptBundle, RelayedOutputs, sign_coordinator_statement
from fedtrust.trust.revocation import RevocationHolder

log = logging.getLogger("fedtrust.coordinator")


@dataclass(frozen=True)
class Finished:
    receipt: bytes  # ReceiptBundle JSON, without the buyer's acknowledgement
    relayed: tuple[Relayed, ...]  # every participant's ciphertexts, in the job's participant order
    #: returns once the job's result is on disk (raises if storing it failed): the servicer streams `relayed`
    #: meanwhile and sends the receipt only after it; None when it was stored before the event
    stored: Callable[[], object] | None = None


Event = Union[Progress, Finished]


#: what the store records for a job that failed on anything but a fedtrust error (the exception stays in the log)
INTERNAL_FAILURE = "internal error at the coordinator; see its log"

#: admission is a few signature checks at each node: an owner slower than this is treated as unreachable
ADMIT_TIMEOUT_S = 30.0
#: at most this many node calls at once (started as needed; a call beyond it waits for a free thread)
NODE_CALL_THREADS = 256


class NotAdmitted(JobFailed):
    """Not every owner admitted the job: it was not run and nobody was charged (same wire kind as JobFailed)."""


def admission_failure(job_id: str, failures: dict[str, Error]) -> NotAdmitted:
    """The buyer's error for a job that not every owner admitted: the job id and each owner, in actionable words."""
    unreachable = sorted(n for n, e in failures.items() if isinstance(e, NodeUnreachable))
    refusals: dict[tuple[str, str], list[str]] = {}
    for node, e in sorted(failures.items()):
        if not isinstance(e, NodeUnreachable):
            refusals.setdefault((e.kind, str(e)), []).append(node)

    def owners(names: list[str]) -> str:
        return ("owner " if len(names) == 1 else "owners ") + ", ".join(names)

    parts = [f"{owners(nodes)} refused the job ({kind}): {text}" for (kind, text), nodes in refusals.items()]
    if unreachable:
        verb = "is" if len(unreachable) == 1 else "are"
        parts.append(f"{owners(unreachable)} {verb} unreachable; contact them or retry later")
    return NotAdmitted(f"job {job_id} was not run and nobody was charged: " + "; ".join(parts))


class CoordinatorRuntime:
    def __init__(self, config: CoordinatorConfig, addresses: dict[str, str] | None = None) -> None:
        self.config = config
        check_private_files(config.credentials / f for f in (TLS_KEY, SIGNING_KEY, KX_KEY))
        self.identity = load_identity_as(config.credentials, "coordinator", config.name)
        self.name = config.name
        self.skew = timedelta(seconds=config.server.clock_skew_s)
        self.tls = TlsMaterial(self.identity.tls_cert_pem, self.identity.tls_key_pem, self.identity.ca_pem)
        #: operator overrides of the addresses in contracts (NAT, DNS, tests on port 0)
        self.addresses = dict(addresses or {})
        self.store = JobStore(config.state)
        #: one kept mTLS channel per node (the subject is pinned on every handshake; see transport.channels)
        self.channels = ChannelPool()
        #: threads that call nodes (a job's admission and run phases), kept across jobs instead of started per job
        self.calls = ThreadPoolExecutor(max_workers=NODE_CALL_THREADS, thread_name_prefix="node-call")
        #: the newest revocation list this coordinator holds; forwarded to nodes with every job
        self.revocations = RevocationHolder(config.state, self.identity.exchange_key)
        #: training jobs a previous process left running; the daemon resumes them once it serves
        self.resumable = self.store.take_resumable()
        interrupted = self.store.fail_interrupted()
        if interrupted:
            log.warning("marked %d interrupted job(s) failed", interrupted)
        #: set when the daemon starts draining: a training job cut by the shutdown is kept to resume, not failed
        self.stopping = False
        #: running jobs their buyer asked to stop (`fedtrust job cancel`)
        self._cancelled: set[str] = set()
        self._cancel_lock = threading.Lock()

    # -- following and cancelling jobs ------------------------------------------
    def own_job(self, peer: tuple[str, str], job_id: str) -> JobRecord:
        rec = self.store.get(job_id)
        if peer != ("buyer", rec.buyer):
            raise VerificationError(f"caller fedtrust://{peer[0]}/{peer[1]} is not the buyer of this job")
        return rec

    def cancel(self, peer: tuple[str, str], job_id: str) -> JobRecord:
        """Ask a running job of this buyer to stop; it fails with "cancelled by the buyer" at its next step."""
        rec = self.own_job(peer, job_id)
        if rec.state != "running":
            raise NotFound(f"job {job_id} is not running (state: {rec.state}); there is nothing to cancel")
        with self._cancel_lock:
            self._cancelled.add(job_id)
        log.info("job %s: cancel requested by its buyer", job_id)
        return rec

    def cancelled(self, job_id: str) -> bool:
        with self._cancel_lock:
            return job_id in self._cancelled

    def check_cancelled(self, job_id: str, consequence: str) -> None:
        if self.cancelled(job_id):
            raise JobFailed(f"job {job_id} was cancelled by the buyer; {consequence}")

    def forget_cancel(self, job_id: str) -> None:
        with self._cancel_lock:
            self._cancelled.discard(job_id)

    @contextmanager
    def failing(self, job_id: str, *, disconnected: str | None = None, resumable: bool = False) -> Iterator[None]:
        """Run a job's steps: if they raise, the job is failed in the store before the error goes on.

        A fedtrust `Error` is recorded with its own one-line message; anything else (a bug) as
        `INTERNAL_FAILURE`. A buyer who disconnects (GeneratorExit) is recorded as `disconnected` where the
        kind names it, as an internal failure otherwise. A `resumable` job cut by the coordinator's shutdown
        stays running (`JobStore.interrupt`), to resume at the next start. The buyer's cancel request, if any,
        is forgotten when the job ends either way.
        """
        try:
            yield
        except BaseException as e:
            if resumable and self.stopping and isinstance(e, (Error, GeneratorExit)):
                self.store.interrupt(job_id)
            elif isinstance(e, Error):
                self.store.fail(job_id, str(e))
            elif isinstance(e, GeneratorExit) and disconnected is not None:
                self.store.fail(job_id, disconnected)
            else:
                if not isinstance(e, GeneratorExit):
                    log.exception("job %s failed", job_id)
                self.store.fail(job_id, INTERNAL_FAILURE)
            raise
        finally:
            self.forget_cancel(job_id)

    def receipt(self, contract_env: Envelope, job_env: Envelope, attestations: Sequence[Envelope],
                relayed: tuple[RelayedOutputs, ...] | None = None) -> bytes:
        """The receipt bundle of a job whose result this coordinator relayed (no aggregate of its own): the
        nodes' attestations, in participant order, and its signed statement naming them and what it relayed."""
        statement = sign_coordinator_statement(
            CoordinatorStatement(job_digest=job_env.digest, contract_digest=contract_env.digest,
                                 aggregate_outputs=(), attestations=tuple(a.digest for a in attestations),
                                 completed_at=utc_now(), relayed=relayed),
            self.identity.signer)
        return ReceiptBundle(contract_env, job_env, tuple(attestations), statement, None).to_json()

    def check(self, peer: tuple[str, str], job_bytes: bytes, contract_bytes: bytes) -> tuple[Contract, Envelope, JobSpec, Envelope]:
        contract_env = contract_envelope(contract_bytes)
        contract = verify_contract(contract_env, self.identity.exchange_key)
        if contract.coordinator.name != self.name:
            raise PolicyViolation(
                f"the contract names coordinator {contract.coordinator.name!r}, not this one ({self.name!r}); "
                "submit the job to the contract's coordinator"
            )
        if peer != ("buyer", contract.buyer.name):
            raise VerificationError(
                f"caller fedtrust://{peer[0]}/{peer[1]} is not the contract's buyer fedtrust://buyer/{contract.buyer.name}"
            )
        require_signatures(contract_env, contract, [("buyer", contract.buyer.name)])
        self.revocations.check(contract_env.digest, contract)
        job_env = Envelope.from_json(job_bytes)
        job = verify_job(job_env, contract, contract_env.digest, skew=self.skew)
        return contract, contract_env, job, job_env

    def address_of(self, contract: Contract, node: str) -> str:
        addr = self.addresses.get(node) or contract.holding(node).credential.address
        if not addr:
            raise ConfigError(f"no address for node {node}: its credential has none and COORD.toml [addresses] names none")
        return addr

    def admit_all(self, contract: Contract, contract_digest: str, job: JobSpec, job_digest: str, job_bytes: bytes,
                  contract_bytes: bytes) -> list[bytes]:
        """Phase one: every participant admits the job (nothing spent) or the job fails naming who did not.

        The node calls are retried by gRPC with backoff while a node is unavailable (`transport.limits`).
        """
        timeout = min(self.config.node_timeout_s, ADMIT_TIMEOUT_S)

        def ask(node: str) -> bytes:
            return admit_on_node(node, self.address_of(contract, node), self.tls, job_bytes, contract_bytes, timeout,
                                 self.revocations.newest_bytes(), channels=self.channels)

        admissions: dict[str, bytes] = {}
        failures: dict[str, Error] = {}
        futures = {node: self.calls.submit(ask, node) for node in job.participants}
        for node, fut in futures.items():
            try:
                admissions[node] = fut.result()
            except Error as e:
                failures[node] = e
            except Exception:  # never let a thread's bug pass silently
                log.exception("asking node %s to admit job %s failed", node, job.job_id)
                failures[node] = JobFailed(f"internal error at the coordinator while asking node {node}")
        if not failures:
            try:
                verify_admissions([Envelope.from_json(a) for a in admissions.values()], contract,
                                  contract_digest=contract_digest, job_digest=job_digest,
                                  participants=job.participants)
            except Error as e:
                raise NotAdmitted(f"job {job.job_id} was not run and nobody was charged: an owner sent an invalid "
                                f"admission ({e})") from None
            return [admissions[n] for n in job.participants]
        raise admission_failure(job.job_id, failures)
