"""The node's side of a vertical PSI job (kind "psi"): admit, then three steps relayed by the coordinator.

Order of one job at this node (the security argument, top to bottom):

1. `NodeRuntime.check_job`: contract (exchange, buyer and this owner signed
   it), caller is the contract's coordinator, job signed by the buyer for
   exactly the contract's owners;
2. `admit`: the contract has `[vertical]` selling "psi" on the job's key, no
   `[privacy]` (an exact intersection size is not differentially private),
   this node's product declares the key `type = "key"`, the job is new (or
   this node's own unfinished session), the contract's `max_jobs` allows it —
   nothing spent;
3. step 1 (with every participant's admission): the job is debited durably,
   then this node's keys (`Dataset.join_keys`) are hashed, shuffled and
   blinded with a fresh scalar that lives in memory only, and sealed to the
   other owner (`privacy.sealed`: the coordinator sees only the size);
4. step 2: the other owner's sealed step-1 message opens only if it is the
   other owner's, for this job and step; at most `max_keys` points are
   blinded again and sealed back;
5. step 3: the other owner's answer gives this node its rows in the
   intersection; below `min_intersection` the job fails here and nothing
   more is released; otherwise the rows (in the common order) are kept in
   this node's private `VerticalStore` for later joint jobs, and the node
   signs an attestation naming the digests of the two messages it released
   and the intersection size.

A retried step gets the same answer (the session keeps its messages); a job
whose session is gone (the node restarted) is refused and stays counted.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Sequence

from fedtrust.errors import InvalidInput, PolicyViolation, VerificationError
from fedtrust.node.admit import psi_rules
from fedtrust.node.runtime import CheckedJob, NodeRuntime
from fedtrust.node.vertical_store import VerticalStore
from fedtrust.privacy.psi import PsiParty
from fedtrust.privacy.sealed import open_sealed, seal
from fedtrust.trust.canonical import sha256_hex, utc_now
from fedtrust.trust.credentials import kx_public_key
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import Attestation, sign_attestation
from fedtrust.trust.vertical import VerticalJob

__all__ = ["PsiRuntime", "PsiStepResult", "SESSION_TTL_S"]

#: an unfinished PSI session (its secret scalar) is dropped after this long
SESSION_TTL_S = 3600.0


@dataclass(frozen=True)
class PsiStepResult:
    sealed: bytes = b""  # steps 1 and 2: this node's sealed message to the other owner
    attestation: Envelope | None = None  # step 3


@dataclass
class _Session:
    party: PsiParty
    peer: str
    sealed1: bytes
    rows: list[int]
    started: float = field(default_factory=time.monotonic)
    received1: str | None = None  # digest of the peer's step-1 message answered
    sealed2: bytes = b""
    attestation: Envelope | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class PsiRuntime:
    kind: ClassVar[str] = VerticalJob.kind

    def __init__(self, node: NodeRuntime) -> None:
        self.node = node
        self.store = VerticalStore(node.config.state)
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    # -- admission ----------------------------------------------------------------------
    def admit(self, checked: CheckedJob, *, finished_ok: bool = False) -> None:
        """Every check of a PSI job short of running it (`node.admit.psi_rules`); spends nothing."""
        self.node.decide(checked, partial(psi_rules, finished_ok=finished_ok,
                                          session=self._session(checked) is not None))

    # -- steps --------------------------------------------------------------------------
    def step(self, checked: CheckedJob, step: int, sealed_in: bytes, admissions: Sequence[bytes]) -> PsiStepResult:
        self.admit(checked, finished_ok=step == 3)
        if step == 3:
            done = self.node.store.lookup(checked.contract_digest, checked.job.job_id, checked.job.nonce,
                                          checked.job_digest)
            if done is not None:  # a retried last step gets the attestation it was given
                return PsiStepResult(attestation=done.attestation)
        if step == 1:
            if sealed_in:
                raise InvalidInput("PSI step 1 takes no message; the relay sent one")
            return self._step1(checked, admissions)
        if step not in (2, 3):
            raise InvalidInput("PSI step must be 1, 2 or 3")
        session = self._session(checked)
        if session is None:
            raise InvalidInput(f"PSI step {step} arrived before step 1 at this node; the relay sent steps out of order")
        with session.lock:
            return self._step2(checked, session, sealed_in) if step == 2 else self._step3(checked, session, sealed_in)

    def _peer(self, checked: CheckedJob) -> str:
        others = [n for n in checked.job.participants if n != self.node.name]
        if len(others) != 1:
            raise PolicyViolation("a PSI job joins exactly two owners")
        return others[0]

    def _open(self, checked: CheckedJob, peer: str, step: str, sealed: bytes) -> bytes:
        return open_sealed(self.node.kx_private, kx_public_key(checked.contract.holding(peer).credential),
                           job_digest=checked.job_digest, sender=peer, receiver=self.node.name, step=step,
                           sealed=sealed)

    def _seal(self, checked: CheckedJob, peer: str, step: str, plaintext: bytes) -> bytes:
        return seal(self.node.kx_private, kx_public_key(checked.contract.holding(peer).credential),
                    job_digest=checked.job_digest, sender=self.node.name, receiver=peer, step=step,
                    plaintext=plaintext)

    def _session(self, checked: CheckedJob) -> _Session | None:
        with self._lock:
            now = time.monotonic()
            for k in [k for k, s in self._sessions.items() if now - s.started > SESSION_TTL_S]:
                del self._sessions[k]
            return self._sessions.get(checked.job_digest)

    def _step1(self, checked: CheckedJob, admissions: Sequence[bytes]) -> PsiStepResult:
        existing = self._session(checked)
        if existing is not None:
            return PsiStepResult(sealed=existing.sealed1)
        self.node.check_admissions(checked, admissions)
        job, rules = checked.job, checked.contract.rules.vertical
        assert rules is not None
        peer = self._peer(checked)
        row_ids, keys = checked.held.dataset.join_keys(rules.key)
        party = PsiParty(keys, checked.job_digest.encode(), max_keys=rules.max_keys)
        # durable before anything leaves: the job counts against max_jobs even if this node crashes now
        self.node.store.debit_job(node=self.node.name, contract_digest=checked.contract_digest, kind="psi",
                                  job_id=job.job_id, nonce=job.nonce, job_digest=checked.job_digest,
                                  mechanism="exact", max_jobs=rules.max_jobs)
        session = _Session(party, peer, self._seal(checked, peer, "psi-1", party.first_message()), row_ids)
        with self._lock:
            session = self._sessions.setdefault(checked.job_digest, session)
        return PsiStepResult(sealed=session.sealed1)

    def _step2(self, checked: CheckedJob, session: _Session, sealed_in: bytes) -> PsiStepResult:
        digest = sha256_hex(sealed_in)
        if session.received1 is not None:
            if session.received1 != digest:
                raise VerificationError("PSI step 2 arrived again with another message from the other owner; a node "
                                        "answers one set per job")
            return PsiStepResult(sealed=session.sealed2)
        points = self._open(checked, session.peer, "psi-1", sealed_in)
        answer = session.party.answer(points)
        session.sealed2 = self._seal(checked, session.peer, "psi-2", answer)
        session.received1 = digest
        return PsiStepResult(sealed=session.sealed2)

    def _step3(self, checked: CheckedJob, session: _Session, sealed_in: bytes) -> PsiStepResult:
        if session.attestation is not None:
            return PsiStepResult(attestation=session.attestation)
        if session.received1 is None:
            raise InvalidInput("PSI step 3 arrived before step 2 at this node; the relay sent steps out of order")
        result = session.party.finish(self._open(checked, session.peer, "psi-2", sealed_in))
        rules, job = checked.contract.rules.vertical, checked.job
        assert rules is not None
        if result.size < rules.min_intersection:
            with self._lock:
                self._sessions.pop(checked.job_digest, None)
            raise PolicyViolation(f"the intersection is smaller than the contract's min_intersection "
                                  f"({rules.min_intersection}); nothing more is released for this job")
        store = self.node.store
        debit = store.find_debit(checked.contract_digest, job.job_id, job.nonce, checked.job_digest)
        assert debit is not None  # step 1 debited
        self.store.save_alignment(checked.contract_digest, job.job_id, checked.job_digest, session.peer,
                                  [session.rows[i] for i in result.rows])
        att = Attestation(
            node=self.node.name, job_digest=checked.job_digest, contract_digest=checked.contract_digest,
            product_digest=checked.held.product_digest, data_commitment=checked.held.product.commitment,
            code_digest=self.node.code_digest, outputs=(sha256_hex(session.sealed1), sha256_hex(session.sealed2)),
            epsilon=debit.epsilon, delta=debit.delta, chain=debit.chain, dp=False, started_at=debit.created_at,
            released_at=utc_now(), intersection_size=result.size,
        )
        session.attestation = store.attach_attestation(checked.contract_digest, job.job_id,
                                                       sign_attestation(att, self.node.identity.signer)).attestation
        with self._lock:
            self._sessions.pop(checked.job_digest, None)  # the one-time secret is not needed any more
        self.node.record_job(checked, "attested", epsilon=debit.epsilon,
                             duration_s=time.monotonic() - session.started)
        return PsiStepResult(attestation=session.attestation)
