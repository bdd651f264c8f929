"""Offline verification of a receipt bundle: what every party can check with public keys only.

Pure functions, no I/O (the python-tuf split): the buyer runs them on the
bundle it receives, the exchange runs them before it records a receipt and
adds the checks that need its store (replay, budget chain; see
`fedtrust.exchange.verify`). Each failed check raises `VerificationError`
(or `PolicyViolation` for a rule of the contract) naming the check.

What a valid bundle proves: the contract was issued by the exchange; the
buyer signed this job under it; every owner the job names released outputs
for exactly this job, product and data commitment, running the software whose
digest it names, and spent the privacy budget it states; for a query, the
coordinator relayed to the buyer exactly those releases (its statement names,
per participant, the attestation and the output digests that node signed, and
nothing else), so the buyer's `check_relayed` can tie every ciphertext it adds
to a node's signature; and, with an acknowledgement, the buyer received the
result with that digest (it signs only after adding the checked ciphertexts
itself). For a training job, every node attests the final model and the
per-round metrics it computed itself from all participants' signed vectors;
the statement's metrics and, given the model file, its weights must match
all of them, so the coordinator's word counts for nothing there.
What it cannot prove: that a node used exactly its committed data or added
its noise honestly — that rests on the node's software, named by digest.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Iterable, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedtrust.errors import InvalidInput, VerificationError
from fedtrust.privacy.accounting import ACCOUNTANTS
from fedtrust.trust.canonical import parse_time, sha256_hex
from fedtrust.trust.contracts import Contract, verify_contract
from fedtrust.trust.credentials import signing_public_key
from fedtrust.trust.dsse import verify_object
from fedtrust.trust.jobs import JOB_TYPE, JobSpec, verify_job
from fedtrust.trust.receipts import (
    Acknowledgement,
    Attestation,
    CoordinatorStatement,
    ReceiptBundle,
    fmt_eps,
    verify_acknowledgement,
    verify_attestation,
    verify_statement_of_coordinator,
)
from fedtrust.trust.rules import PrivacyRules


def _nothing(*_: object) -> None:
    return None


#: the kind-specific blocks a receipt may carry; a kind's check names the ones its receipts use
BLOCKS = ("relayed", "training", "intersection_size")


@dataclass(frozen=True)
class KindCheck:
    """How the buyer and the exchange verify one job kind's receipts, passed in by the caller (the way
    sigstore-python's verifier takes a policy), so trust imports nothing above it. Each kind's module defines one
    (`fedtrust.query.checks.QUERY`, `fedtrust.training.checks.TRAINING`, `fedtrust.trust.psi_checks.PSI`):

    - `rules(contract, job)` raises VerificationError when the job's payload breaks the contract's rules;
    - `receipt(contract, job, attestations, digests, statement)` checks the kind's own part of the coordinator's
      statement and of the attestations (every other check of the bundle is the same for every kind);
    - `spend(privacy, attestation)` checks the ε/δ a node states for one job of this kind under [privacy];
    - `blocks` names the kind-specific receipt blocks it uses (of `BLOCKS`): any other one is refused;
    - `model_digest` reads a delivered model file (kinds that deliver one).
    """

    rules: Callable[[Contract, JobSpec], None]
    receipt: Callable[[Contract, JobSpec, Sequence[Attestation], Sequence[str], CoordinatorStatement], None] = _nothing
    spend: Callable[[PrivacyRules, Attestation], None] = _nothing
    blocks: frozenset[str] = frozenset()
    model_digest: Callable[[bytes], str] | None = None


@dataclass(frozen=True)
class VerifiedReceipt:
    contract: Contract
    contract_digest: str
    job: JobSpec
    job_digest: str
    attestations: tuple[Attestation, ...]  # in the job's participant order
    attestation_digests: tuple[str, ...]
    statement: CoordinatorStatement
    acknowledgement: Acknowledgement | None

    @property
    def epsilon_spent(self) -> dict[str, str]:
        return {a.node: a.epsilon for a in self.attestations}

    @property
    def delta_spent(self) -> dict[str, str]:
        return {a.node: a.delta for a in self.attestations}


def verify_bundle(
    bundle: ReceiptBundle,
    exchange_key: Ed25519PublicKey,
    kinds: Mapping[str, KindCheck],
    *,
    aggregate: Sequence[bytes] | None = None,
    require_acknowledgement: bool = False,
) -> VerifiedReceipt:
    """Every check of the module docstring; `kinds` judges each job kind's payload against the contract's rules
    (the caller passes the kinds it settles: `fedtrust.query.checks.QUERY`, `fedtrust.training.checks.TRAINING`)."""
    contract = verify_contract(bundle.contract, exchange_key)
    contract_digest = bundle.contract.digest
    # the job is judged at the time it was signed: expiry and contract validity then, not now
    signed = verify_object(bundle.job, signing_public_key(contract.buyer), JOB_TYPE, JobSpec.from_dict, "job spec")
    job = verify_job(bundle.job, contract, contract_digest, now=parse_time(signed.created_at))
    job_digest = bundle.job.digest
    check = _check_rules(kinds, contract, job)

    by_node: dict[str, tuple[Attestation, str]] = {}
    for env in bundle.attestations:
        att = verify_attestation(env, contract)
        if att.node in by_node:
            raise VerificationError(f"two attestations from node {att.node}; a node attests a job once")
        by_node[att.node] = (att, env.digest)
    missing = [n for n in job.participants if n not in by_node]
    if missing:
        raise VerificationError(f"participant {missing[0]} of the job spec has not signed an attestation")
    extra = [n for n in by_node if n not in job.participants]
    if extra:
        raise VerificationError(f"attestation from {extra[0]}, who is not a participant of the job spec")
    atts = tuple(by_node[n][0] for n in job.participants)
    digests = tuple(by_node[n][1] for n in job.participants)
    for att in atts:
        holding = contract.holding(att.node)
        if att.job_digest != job_digest:
            raise VerificationError(f"attestation of node {att.node} is for another job")
        if att.contract_digest != contract_digest:
            raise VerificationError(f"attestation of node {att.node} is for another contract")
        if att.product_digest != holding.product_digest:
            raise VerificationError(f"attestation of node {att.node} names a product other than its holding in the contract")
        if att.data_commitment != holding.product.commitment:
            raise VerificationError(f"attestation of node {att.node} names a data commitment other than the listed one")
        _check_spend(contract, att, check)

    statement = verify_statement_of_coordinator(bundle.statement, contract)
    if statement.job_digest != job_digest or statement.contract_digest != contract_digest:
        raise VerificationError("the coordinator's statement is for another job or contract")
    if tuple(statement.attestations) != digests:
        raise VerificationError("the coordinator's statement does not cover exactly the bundle's attestations")
    if aggregate is not None and tuple(statement.aggregate_outputs) != tuple(sha256_hex(c) for c in aggregate):
        raise VerificationError("the aggregate received does not match the digest the coordinator signed")
    _check_blocks(job, check, statement, atts)
    check.receipt(contract, job, atts, digests, statement)
    if check.model_digest is not None and aggregate is not None:
        check_model_attested(aggregate[0] if aggregate else b"", atts, check)

    ack = None
    if bundle.acknowledgement is not None:
        ack = verify_acknowledgement(bundle.acknowledgement, contract)
        if ack.job_digest != job_digest:
            raise VerificationError("the buyer's acknowledgement is for another job")
    elif require_acknowledgement:
        raise VerificationError(
            "the receipt has no delivery acknowledgement from the buyer; `fedtrust query --receipt` writes one"
        )
    return VerifiedReceipt(contract, contract_digest, job, job_digest, atts, digests, statement, ack)


def _check_blocks(job: JobSpec, check: KindCheck, statement: CoordinatorStatement,
                  atts: Sequence[Attestation]) -> None:
    """A receipt carries only the kind-specific blocks its kind's check names."""
    if statement.relayed is not None and "relayed" not in check.blocks:
        raise VerificationError(f"the coordinator's statement lists relayed query outputs for a {job.kind} job")
    if statement.training is not None and "training" not in check.blocks:
        raise VerificationError(f"the coordinator's statement carries a training block for a {job.kind} job")
    if "intersection_size" not in check.blocks and any(a.intersection_size is not None for a in atts):
        raise VerificationError("an attestation states an intersection size for a job that is not a PSI")


def check_relayed(v: VerifiedReceipt, received: Iterable[tuple[str, Sequence[bytes]]]) -> list[list[bytes]]:
    """The relayed ciphertexts, per participant in the job's order, each checked against its node's attestation.

    `received` is what the coordinator sent: (node, ciphertexts) pairs. Every
    participant must appear exactly once, nobody else, and each node's
    ciphertexts must hash to exactly the outputs it signed, so whatever the
    buyer adds is the nodes' own releases for this job.
    """
    if v.job.kind != "query":
        raise VerificationError("relayed ciphertexts belong to query jobs only")
    got: dict[str, Sequence[bytes]] = {}
    for node, cts in received:
        if node not in v.job.participants:
            raise VerificationError(f"the coordinator relayed outputs from {node!r}, who is not a participant of the "
                                    "job; refusing the result")
        if node in got:
            raise VerificationError(f"the coordinator relayed outputs of node {node} twice; each participant "
                                    "contributes exactly once, refusing the result")
        got[node] = cts
    missing = [n for n in v.job.participants if n not in got]
    if missing:
        raise VerificationError(f"the coordinator relayed no outputs of participant {missing[0]}; a sum without it "
                                "is not the job's result, refusing it")
    for att in v.attestations:
        if tuple(sha256_hex(bytes(c)) for c in got[att.node]) != tuple(att.outputs):
            raise VerificationError(f"the ciphertexts relayed for node {att.node} do not match the outputs it signed "
                                    "in its attestation (forged, swapped or from another job); refusing the result")
    return [[bytes(c) for c in got[n]] for n in v.job.participants]


def check_model_attested(model: bytes, attestations: Sequence[Attestation], check: KindCheck) -> None:
    """The delivered model file's weights are the final model every node computed and attested."""
    if check.model_digest is None:
        raise VerificationError("this kind of job delivers no model file")
    try:
        digest = check.model_digest(model)
    except InvalidInput as e:
        raise VerificationError(f"the delivered model cannot be read ({e})") from None
    for att in attestations:
        if att.model_digest != digest:
            raise VerificationError(f"the delivered model is not the one node {att.node} computed and attested; "
                                    "refuse it (the coordinator altered or replaced the model)")


def _check_rules(kinds: Mapping[str, KindCheck], contract: Contract, job: JobSpec) -> KindCheck:
    check = kinds.get(job.kind)
    if check is None:
        raise VerificationError(f"this verifier checks {', '.join(sorted(kinds))} jobs, not a {job.kind} job; "
                                "verify the receipt where such jobs are settled")
    check.rules(contract, job)
    return check


def check_horizontal(contract: Contract) -> None:
    """Query and training jobs run under horizontal contracts only (for the kinds' rules checks)."""
    if contract.rules.vertical is not None:
        raise VerificationError("the contract is vertical; it sells no horizontal query or training job")


def _check_spend(contract: Contract, att: Attestation, check: KindCheck) -> None:
    """The stated spend is possible and is what the contract's [privacy] rules make a node spend on this job."""
    eps, delta, cumulative = Decimal(att.epsilon), Decimal(att.delta), Decimal(att.chain.cumulative_epsilon)
    cumulative_delta = None if att.chain.cumulative_delta is None else Decimal(att.chain.cumulative_delta)
    if eps < 0 or delta < 0 or cumulative < eps or (cumulative_delta is not None and cumulative_delta < delta):
        raise VerificationError(f"attestation of node {att.node} states an impossible privacy spend")
    if att.chain.seq < 1:
        raise VerificationError(f"attestation of node {att.node} has chain position {att.chain.seq}; positions start at 1")
    privacy = contract.rules.privacy
    if privacy is None:
        if att.dp or eps != 0:
            raise VerificationError(f"attestation of node {att.node} states a differential-privacy spend under a "
                                    "contract without [privacy]; the contract sells exact aggregates")
        return
    if not att.dp:
        raise VerificationError(f"attestation of node {att.node} says differential privacy was off, but the "
                                "contract's [privacy] rules require it for every job")
    if att.accountant is not None and att.accountant not in ACCOUNTANTS:
        raise VerificationError(f"attestation of node {att.node} names a privacy accountant this verifier does not "
                                f"know; known: {', '.join(sorted(ACCOUNTANTS))}")
    check.spend(privacy, att)
    if cumulative > privacy.epsilon_total:
        raise VerificationError(
            f"attestation of node {att.node} brings its cumulative ε to {att.chain.cumulative_epsilon}, over the "
            f"contract's total ε={fmt_eps(privacy.epsilon_total)} (a node overspent its budget)")
    if cumulative_delta is None and att.accountant is not None:
        raise VerificationError(
            f"attestation of node {att.node} names its accountant but not its cumulative δ; a node that composes "
            "δ states Σδ in its budget chain")
    if cumulative_delta is not None and cumulative_delta > privacy.delta:
        raise VerificationError(
            f"attestation of node {att.node} brings its cumulative δ to {att.chain.cumulative_delta}, over the "
            f"contract's total δ={fmt_eps(privacy.delta)} (a node overspent its budget; the contract's delta is a "
            "total over all its jobs)")
