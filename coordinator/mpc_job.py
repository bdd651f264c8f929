"""The coordinator's side of an MPC job: admit, then relay one session's sealed frames, check, sign.

The coordinator is a relay here too. Every owner and the contract's dealer hold one bidirectional stream to it;
each frame a party sends names its receiver's rank, and the coordinator forwards (sender rank, sealed bytes) to
that receiver — nothing else. The frames are sealed between the two parties (`privacy.mpc.sealed_link`), so it
can read, alter, reorder, replay or redirect none of them without the receiver refusing the session. Per party it
caps the size of a frame and the bytes of a session, and a session in which nothing moves for `idle_s` fails
(COORD.toml `mpc_max_frame_mib`, `mpc_max_session_gib`, `mpc_idle_s`).

Order: every owner admits the job (nothing spent on a refusal); the dealer's stream opens first and the owners'
only once the dealer has passed its own checks (its first frames are the owners' seeds), so a dealer that
refuses costs the owners nothing; then the owners' streams, each starting with every admission. A party that
fails or ends its stream early fails the job with its reason, and every other stream is cancelled. At the end
each owner sends its output shares sealed to the buyer's key in the job spec and its attestation, which must name
the digests of exactly the frames the coordinator relayed from it and to it, and of that sealed output. The
coordinator signs a statement over the attestations and relays the sealed outputs to the buyer; it never holds an
opened output.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

from fedtrust.coordinator.runtime import CoordinatorRuntime, Event, Finished
from fedtrust.coordinator.store import Relayed
from fedtrust.errors import ConfigError, Error, InvalidInput, JobFailed, PolicyViolation
from fedtrust.progress import Progress
from fedtrust.query.mpc_stats import MpcStatsJob
from fedtrust.transport.server import secure_channel
from fedtrust.transport.status import calling
from fedtrust.trust.canonical import sha256_hex
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import (
    RelayedOutputs,
    verify_attestation,
)
from fedtrust.trust.vertical import JointJob
from fedtrust.trust.vertical_lr import VerticalLRSpec
from fedtrust.v1 import mpc_pb2, mpc_pb2_grpc

__all__ = ["MpcJobs"]

log = logging.getLogger("fedtrust.coordinator")

#: the largest sealed output an owner may return
MAX_OUTPUT_BYTES = 64 * 1024 * 1024


@dataclass
class _Party:
    rank: int
    name: str  # node name, or the dealer's
    role: str  # "node" | "dealer"
    address: str
    inbox: queue.Queue = field(default_factory=queue.Queue)  # (sender rank, frame) to forward; None ends the stream
    sent: Any = field(default_factory=hashlib.sha256)  # digest of the frames it sent, in stream order
    received: Any = field(default_factory=hashlib.sha256)
    sent_bytes: int = 0
    attestation: bytes = b""
    sealed: bytes = b""
    done: bool = False
    call: Any = None  # the gRPC streaming call (cancel() it to end the session)


class _Session:
    """One relayed session between the owners (ranks 0..n-1) and the dealer (rank n)."""

    def __init__(self, rt: CoordinatorRuntime, parties: list[_Party], header: mpc_pb2.MpcHeader, timeout: float,
                 idle_s: float, max_frame: int, max_bytes: int) -> None:
        self.rt, self.parties, self.header = rt, parties, header
        self.timeout, self.idle_s, self.max_frame, self.max_bytes = timeout, idle_s, max_frame, max_bytes
        for p in parties:
            p.sent, p.received = hashlib.sha256(), hashlib.sha256()
        self.error: Error | None = None
        self.failed = threading.Event()
        self.last_moved = time.monotonic()
        self.dealer_ready = threading.Event()
        #: set when a party's stream ends or the session fails (the relay then looks again at once)
        self.changed = threading.Event()
        self._lock = threading.Lock()

    def fail(self, error: Error) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
        self.failed.set()
        self.changed.set()
        for p in self.parties:
            p.inbox.put(None)
            if p.call is not None:
                p.call.cancel()

    def _requests(self, p: _Party) -> Iterator[mpc_pb2.MpcIn]:
        yield mpc_pb2.MpcIn(header=self.header)
        while True:
            item = p.inbox.get()
            if item is None:
                return
            src, frame = item
            p.received.update(_entry(src, frame))
            yield mpc_pb2.MpcIn(frame=mpc_pb2.MpcFrame(peer=src, sealed=frame))

    def _serve(self, p: _Party) -> None:
        n_all = len(self.parties)
        try:
            with secure_channel(p.address, self.rt.tls, (p.role, p.name)) as channel, \
                    calling(f"{p.role} {p.name}", self.timeout) as calls:
                p.call = calls.stream(mpc_pb2_grpc.MpcServiceStub(channel).Session, self._requests(p))
                if self.failed.is_set():
                    p.call.cancel()
                for out in p.call:
                    part = out.WhichOneof("part")
                    if part == "frame":
                        dst, frame = out.frame.peer, out.frame.sealed
                        if dst >= n_all or dst == p.rank:
                            raise InvalidInput(f"{p.role} {p.name} addressed a frame to rank {dst}, no other party "
                                               "of this session")
                        if len(frame) > self.max_frame:
                            raise InvalidInput(f"{p.role} {p.name} sent an MPC frame of {len(frame)} bytes, over the "
                                               f"relay's limit of {self.max_frame}")
                        p.sent_bytes += len(frame)
                        if p.sent_bytes > self.max_bytes:
                            raise InvalidInput(f"{p.role} {p.name} sent more than {self.max_bytes} bytes in one MPC "
                                               "session, over the relay's limit")
                        p.sent.update(_entry(dst, frame))
                        self.last_moved = time.monotonic()
                        if p.role == "dealer":
                            self.dealer_ready.set()
                        self.parties[dst].inbox.put((p.rank, frame))
                    elif part == "result":
                        if len(out.result.sealed_output) > MAX_OUTPUT_BYTES:
                            raise InvalidInput(f"{p.role} {p.name} returned an output over the relay's limit")
                        p.attestation, p.sealed = out.result.attestation_envelope, out.result.sealed_output
                        p.done = True
            if not p.done:
                raise InvalidInput(f"{p.role} {p.name} ended its MPC stream without a result")
            p.inbox.put(None)  # its session is over: end the request stream
        except Error as e:
            if not self.failed.is_set():  # a stream the failed session cancelled adds nothing
                self.fail(JobFailed(f"{p.role} {p.name} failed, so the MPC job failed: {e}"))
        except Exception:
            log.exception("relaying the MPC session of %s %s failed", p.role, p.name)
            self.fail(JobFailed(f"internal error at the coordinator while relaying for {p.role} {p.name}"))
        finally:
            if p.role == "dealer":
                self.dealer_ready.set()
            self.changed.set()

    def run(self) -> None:
        dealer = self.parties[-1]
        threads = [threading.Thread(target=self._serve, args=(dealer,), name=f"mpc-relay-{dealer.name}",
                                    daemon=True)]
        threads[0].start()
        # the owners' streams open only once the dealer passed its checks (it sent the seeds) or failed
        while not self.dealer_ready.wait(0.5):
            if time.monotonic() - self.last_moved > self.idle_s:
                self.fail(JobFailed(f"the dealer {dealer.name} sent nothing for {self.idle_s:g} s; the MPC job "
                                    "failed before any owner ran it"))
        if self.failed.is_set():
            raise self.error  # type: ignore[misc]
        for p in self.parties[:-1]:
            t = threading.Thread(target=self._serve, args=(p,), name=f"mpc-relay-{p.name}", daemon=True)
            t.start()
            threads.append(t)
        while True:
            alive = [t for t in threads if t.is_alive()]
            if not alive or self.failed.is_set():
                break
            if self.changed.wait(0.5):  # a stream ended: look again at once
                self.changed.clear()
                for t in alive:
                    t.join(0.02)
                continue
            if time.monotonic() - self.last_moved > self.idle_s and not all(p.done for p in self.parties[:-1]):
                self.fail(JobFailed(f"no MPC frame moved for {self.idle_s:g} s; the session timed out"))
                break
        for t in threads:
            t.join(5)
        if self.error is not None:
            raise self.error


def _entry(peer: int, frame: bytes) -> bytes:
    """One frame in a transcript digest, as the parties compute it (`node.mpc_link.transcript_entry`)."""
    return struct.pack(">I", peer) + hashlib.sha256(frame).digest()


class MpcJobs:
    """The relay of every MPC kind; `coordinator.kinds` registers one subclass per kind (`MpcStatsJobs` …)."""

    kind: ClassVar[str] = ""

    def __init__(self, runtime: CoordinatorRuntime, *, served: set[str] | None = None) -> None:
        self.runtime = runtime
        self.served = served if served is not None else {self.kind}
        cfg = runtime.config  # the relay's caps and idle limit: COORD.toml settings
        self.idle_s, self.max_frame, self.max_bytes = cfg.mpc_idle_s, cfg.mpc_max_frame_bytes, cfg.mpc_max_session_bytes

    def _dealer_address(self, contract) -> str:
        d = contract.dealer
        addr = self.runtime.addresses.get(d.name) or d.address
        if not addr:
            raise ConfigError(f"no address for dealer {d.name}: its credential has none and COORD.toml [addresses] "
                              "names none")
        return addr

    def run(self, peer: tuple[str, str], job_bytes: bytes, contract_bytes: bytes) -> Iterator[Event]:
        rt = self.runtime
        contract, contract_env, job, job_env = rt.check(peer, job_bytes, contract_bytes)
        if not job.is_mpc:
            raise InvalidInput(f"job kind {job.kind!r} sent to SubmitMpc; submit it with its own call")
        if job.kind not in self.served:
            raise PolicyViolation(f"this coordinator does not run {job.kind} jobs")
        if contract.dealer is None:
            raise PolicyViolation("this contract names no MPC dealer, so it sells no MPC jobs; ask the exchange for "
                                  "a contract with a dealer (`fedtrust exchange contract --dealer`)")
        done = rt.store.begin(job.job_id, job_env.digest, contract_env.digest, contract.buyer.name, job.participants,
                              kind=job.kind)
        total = len(job.participants)
        if done is not None:
            yield Progress("succeeded", total, total, "job already finished; returning the stored result")
            yield Finished(done.receipt or b"", rt.store.relayed(job.job_id))
            return
        with rt.failing(job.job_id):
            yield Progress("admitting", 0, total, f"asking {total} owners to admit the job")
            admissions = rt.admit_all(contract, contract_env.digest, job, job_env.digest, job_bytes, contract_bytes)
            yield Progress("dispatched", 0, total, "every owner admitted the job; the MPC session runs (the dealer "
                                                   "first)")
            parties = [_Party(r, n, "node", rt.address_of(contract, n)) for r, n in enumerate(job.participants)]
            parties.append(_Party(total, contract.dealer.name, "dealer", self._dealer_address(contract)))
            header = mpc_pb2.MpcHeader(job_envelope=job_bytes, contract_envelope=contract_bytes, admissions=admissions)
            _Session(rt, parties, header, rt.config.node_timeout_s, self.idle_s, self.max_frame,
                     self.max_bytes).run()
            envs, relayed = [], []
            for p in parties[:-1]:
                env = Envelope.from_json(p.attestation)
                att = verify_attestation(env, contract)
                if att.node != p.name or att.job_digest != job_env.digest or att.contract_digest != contract_env.digest:
                    raise JobFailed(f"node {p.name} sent an attestation for another node, job or contract")
                if tuple(att.outputs) != (p.sent.hexdigest(), p.received.hexdigest(), sha256_hex(p.sealed)):
                    raise JobFailed(f"node {p.name} sent an attestation that does not name the frames relayed from "
                                    "and to it and the output it returned")
                envs.append((env, att))
                relayed.append(Relayed(p.name, (p.sealed,)))
            bundle = rt.receipt(contract_env, job_env, tuple(e for e, _ in envs),
                                tuple(RelayedOutputs(a.node, e.digest, tuple(a.outputs)) for e, a in envs))
            rt.store.succeed(job.job_id, bundle, tuple(relayed))
        yield Progress("relayed", total, total, "every owner's sealed output shares relayed; receipt signed")
        yield Finished(bundle, tuple(relayed))


class MpcStatsJobs(MpcJobs):
    """MIN / MAX / MEDIAN / quantiles (`query.mpc_stats`)."""

    kind: ClassVar[str] = MpcStatsJob.kind


class JointJobs(MpcJobs):
    """Joint statistics over a PSI job's aligned rows (`query.joint_program`)."""

    kind: ClassVar[str] = JointJob.kind


class VerticalLRJobs(MpcJobs):
    """Vertical logistic regression (`training.vertical_lr_program`)."""

    kind: ClassVar[str] = VerticalLRSpec.kind
