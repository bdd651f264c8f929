"""An owner's side of an MPC job (kinds of `privacy.mpc.program`): admit, then one relayed session.

Order of one job at this node (the security argument, top to bottom):

1. `NodeRuntime.check_job`: contract (exchange, buyer and this owner signed it, so this owner agreed to its
   dealer), caller is the contract's coordinator, job signed by the buyer for exactly the contract's owners;
2. `admit` (`node.admit.mpc_rules`, each rule named): the contract names a dealer, this node runs a program of
   the job's kind, the program's own rules checks pass (`MpcProgram.admit`, e.g. the SQL against `[query]`,
   MIN/MAX refused under `[privacy]`), the job is new here, its cap and budget allow it — nothing spent;
3. `run` (with every owner's admission): the node reads its own inputs (`local_inputs`), debits the job durably
   (ε under `[privacy]`) BEFORE any frame leaves, then runs `compute` as its rank over sealed links to the other
   owners and the dealer (`SealedLink` from the certified X25519 keys; the relay sees ciphertext only);
4. if the contract was revoked, or the owner withdrew, while the session ran (`check_still_served`), nothing
   leaves; otherwise its output shares are sealed to the job's output key (the buyer's, in the buyer-signed job
   spec) and the node signs an attestation naming the digests of every frame it sent, every frame it received,
   and the sealed output; the coordinator relays the sealed output, never an opened one.

A session cannot be replayed (its randomness is gone): a job already debited here is refused, and stays counted.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from functools import partial
from typing import ClassVar, Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from fedtrust.errors import Error, InvalidInput, PolicyViolation
from fedtrust.node.admit import ACCOUNTANT, mpc_rules
from fedtrust.node.mpc_link import StreamLink
from fedtrust.node.runtime import CheckedJob, NodeRuntime
from fedtrust.node.vertical_store import VerticalStore
from fedtrust.privacy.mpc.program import (
    OUTPUT_STEP,
    Charge,
    MpcProgram,
    MpcProgramError,
    ProgramContext,
    encode_shares,
    program,
    run_party,
)
from fedtrust.privacy.mpc.sealed_link import SealedLink
from fedtrust.privacy.sealed import seal
from fedtrust.query.mpc_stats import MpcStatsJob
from fedtrust.trust.canonical import sha256_hex, utc_now
from fedtrust.trust.credentials import kx_public_key
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import Attestation, sign_attestation
from fedtrust.trust.vertical import JointJob
from fedtrust.trust.vertical_lr import VerticalLRSpec

__all__ = ["MpcRuntime", "NodeData", "party_names", "link_peers", "DEALER_STEP"]

log = logging.getLogger("fedtrust.node")

DEALER_STEP = "dealer"


def party_names(contract, job) -> list[str]:
    """Names on the sealed links: the owners in the job's order (ranks 0..n-1), then the dealer (rank n)."""
    return [*job.participants, f"{DEALER_STEP}:{contract.dealer.name}"]


def link_peers(contract, job) -> dict:
    """Every party's certified X25519 key, by its link name."""
    peers = {n: kx_public_key(contract.holding(n).credential) for n in job.participants}
    peers[f"{DEALER_STEP}:{contract.dealer.name}"] = kx_public_key(contract.dealer)
    return peers


class NodeData:
    """What a program reads at a node: its product (`held`: product, dataset) and its PSI alignments."""

    def __init__(self, held, alignments) -> None:
        self.held = held
        self._alignments = alignments

    def alignment(self, contract_digest: str, psi_job_id: str) -> list[int] | None:
        """This node's row ids of a finished PSI job under the contract, in the order both owners share."""
        return self._alignments.alignment(contract_digest, psi_job_id) if self._alignments else None


class MpcRuntime:
    """An owner's side of every MPC kind; `node.kinds` registers one subclass per kind (`MpcStatsRuntime` …)."""

    kind: ClassVar[str] = ""

    def __init__(self, node: NodeRuntime) -> None:
        self.node = node
        self.alignments = VerticalStore(node.config.state)
        #: jobs whose session runs here now: a second session of one job is refused even before the debit is
        #: visible (two sessions would release two independent noise draws for one debit)
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def context(self, checked: CheckedJob) -> ProgramContext:
        job = checked.job
        return ProgramContext(job.participants.index(self.node.name), len(job.participants), job.participants,
                              job, checked.contract, NodeData(checked.held, self.alignments))

    # -- admission ----------------------------------------------------------------------------------------------
    def admit(self, checked: CheckedJob) -> Charge:
        """Every check of an MPC job short of running it (`node.admit.mpc_rules`); spends nothing."""
        p = _registered(checked.job.kind)

        def charge() -> Charge:
            assert p is not None and p.admit is not None  # mpc_rules refused the job before otherwise
            return p.admit(self.context(checked))

        return self.node.decide(checked, partial(mpc_rules, program=p, charge=charge)).plan

    # -- the session -----------------------------------------------------------------------------------------
    def run(self, checked: CheckedJob, admissions: Sequence[bytes], link: StreamLink) -> tuple[Envelope, bytes]:
        """Run this node's part over `link`; returns (signed attestation, output shares sealed to the buyer)."""
        with self._lock:
            if checked.job_digest in self._running:
                raise PolicyViolation("this MPC job's session is already running at this node; a session cannot "
                                      "be repeated, submit a new job")
            self._running.add(checked.job_digest)
        try:
            return self._run(checked, admissions, link)
        finally:
            with self._lock:
                self._running.discard(checked.job_digest)

    def _run(self, checked: CheckedJob, admissions: Sequence[bytes], link: StreamLink) -> tuple[Envelope, bytes]:
        started = time.monotonic()
        charge = self.admit(checked)
        p = program(checked.job.kind)
        self.node.check_admissions(checked, admissions)
        contract, job = checked.contract, checked.job
        ctx = self.context(checked)
        inputs = p.local_inputs(ctx)  # this node's own data; an error here costs nothing
        if job.output_key is None:  # (the buyer's key is read before anything is spent)
            raise InvalidInput("the MPC job names no output key for the buyer; the buyer's client is broken")
        buyer_key = X25519PublicKey.from_public_bytes(base64.b64decode(job.output_key, validate=True))
        privacy = contract.rules.privacy
        debit = self.node.store.debit_job(
            node=self.node.name, contract_digest=checked.contract_digest, kind=charge.counts_as, job_id=job.job_id,
            nonce=job.nonce, job_digest=checked.job_digest, mechanism=charge.mechanism, epsilon=charge.epsilon,
            delta=charge.delta, epsilon_total=privacy.epsilon_total if privacy else None,
            delta_total=privacy.delta if privacy else None, max_jobs=charge.max_jobs)
        sealed_link = SealedLink(link, session=checked.job_digest, names=party_names(contract, job), rank=ctx.rank,
                                 own=self.node.kx_private, peers=link_peers(contract, job))
        try:
            shares = run_party(p, ctx, inputs, sealed_link)
        except (Error, MpcProgramError):
            raise
        except Exception as e:  # CrypTen's own errors: the rule, never a value
            log.exception("MPC job %s failed at this node", job.job_id)
            raise InvalidInput(f"the MPC computation failed at node {self.node.name} ({type(e).__name__})") from None
        # revoked or withdrawn while the session ran: the output never leaves (the debit, taken before the first
        # frame, stays: the session's randomness is spent)
        self.node.check_still_served(checked)
        sealed = seal(self.node.kx_private, buyer_key, job_digest=checked.job_digest, sender=self.node.name,
                      receiver="buyer", step=OUTPUT_STEP, plaintext=encode_shares(shares))
        sent, received = link.transcript()
        att = Attestation(
            node=self.node.name, job_digest=checked.job_digest, contract_digest=checked.contract_digest,
            product_digest=checked.held.product_digest, data_commitment=checked.held.product.commitment,
            code_digest=self.node.code_digest, outputs=(sent, received, sha256_hex(sealed)),
            epsilon=debit.epsilon, delta=debit.delta, chain=debit.chain, dp=privacy is not None,
            started_at=debit.created_at, released_at=utc_now(),
            accountant=None if privacy is None else ACCOUNTANT.name,
        )
        stored = self.node.store.attach_attestation(checked.contract_digest, job.job_id,
                                                    sign_attestation(att, self.node.identity.signer), [sealed])
        self.node.record_job(checked, "released", epsilon=debit.epsilon, duration_s=time.monotonic() - started)
        return stored.attestation, sealed



def _registered(kind: str) -> MpcProgram | None:
    """The MPC program registered for `kind` on this node, or None (`mpc_rules` refuses the job then)."""
    try:
        return program(kind)
    except MpcProgramError:
        return None


class MpcStatsRuntime(MpcRuntime):
    """MIN / MAX / MEDIAN / quantiles (`query.mpc_stats`)."""

    kind: ClassVar[str] = MpcStatsJob.kind


class JointRuntime(MpcRuntime):
    """Joint statistics over a PSI job's aligned rows (`query.joint_program`)."""

    kind: ClassVar[str] = JointJob.kind


class VerticalLRRuntime(MpcRuntime):
    """Vertical logistic regression (`training.vertical_lr_program`)."""

    kind: ClassVar[str] = VerticalLRSpec.kind
