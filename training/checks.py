"""How the buyer and the exchange verify a training job's receipt (`TRAINING`, a `fedtrust.trust.verify.KindCheck`):
the signed training spec against the contract's rules, the statement's model, rounds and metrics against what every
node attested, the ε/δ bound, and the digest of a delivered model file (`verify_bundle` takes it as a parameter:
trust imports nothing above it)."""
from __future__ import annotations

from decimal import Decimal
from typing import Sequence

from fedtrust.errors import InvalidInput, PolicyViolation, VerificationError
from fedtrust.training.policy import check_training
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.contracts import Contract
from fedtrust.trust.jobs import JobSpec
from fedtrust.trust.receipts import Attestation, CoordinatorStatement, metrics_digest
from fedtrust.trust.rules import PrivacyRules
from fedtrust.trust.verify import KindCheck, check_horizontal

__all__ = ["TRAINING", "check_training_job", "check_training_receipt", "check_training_spend", "model_file_digest"]


def check_training_job(contract: Contract, job: JobSpec) -> None:
    """The job's training spec fits the contract's [training] rules; VerificationError naming the rule otherwise."""
    check_horizontal(contract)
    spec = job.payload_as(TrainingSpec, "the training verifier")
    try:
        check_training(spec, contract.rules, contract.schema, contract.dataset, len(job.participants))
    except (PolicyViolation, InvalidInput) as e:
        raise VerificationError(f"the job's training spec breaks the contract's rules: {e}") from None


def check_training_receipt(contract: Contract, job: JobSpec, attestations: Sequence[Attestation],
                           digests: Sequence[str], statement: CoordinatorStatement) -> None:
    """A training job's statement names its model, rounds, participants and one metrics entry per round,
    and every node attested the same final model and exactly the statement's metrics."""
    spec = job.payload_as(TrainingSpec, "the training verifier")
    t = statement.training
    if t is None:
        raise VerificationError("the coordinator's statement for a training job has no training block")
    if tuple(statement.aggregate_outputs) != (t.model_digest,):
        raise VerificationError("the coordinator's statement names a model digest other than its aggregate output")
    if t.rounds != spec.rounds or [m.round for m in t.metrics] != list(range(1, t.rounds + 1)):
        raise VerificationError("the coordinator's statement does not report exactly the job's rounds")
    if tuple(t.participants) != tuple(job.participants):
        raise VerificationError("the coordinator's statement names other participants than the job")
    metrics = metrics_digest(t.metrics)
    for att in attestations:
        if att.model_digest is None or att.metrics_digest is None:
            raise VerificationError(f"attestation of node {att.node} names no final model; nodes of this version "
                                    "attest the model and metrics they computed themselves")
        if att.metrics_digest != metrics:
            raise VerificationError(f"the coordinator's statement reports other round metrics than node {att.node} "
                                    "computed and attested")
        if att.model_digest != attestations[0].model_digest:
            raise VerificationError(f"nodes {attestations[0].node} and {att.node} attested different final models")


def check_training_spend(privacy: PrivacyRules, att: Attestation) -> None:
    """Under [privacy] a DP-SGD job spends at most the contract's training ε and δ."""
    eps, delta = Decimal(att.epsilon), Decimal(att.delta)
    if (privacy.training_epsilon is None or eps > privacy.training_epsilon
            or delta > (privacy.training_delta or privacy.delta)):
        raise VerificationError(f"attestation of node {att.node} states a training spend (ε={att.epsilon}, "
                                f"δ={att.delta}) the contract's [privacy] rules do not allow")


def model_file_digest(model: bytes) -> str:
    """`arrays_digest` of a model file's weights (InvalidInput when it cannot be read)."""
    from fedtrust.training.arrays import arrays_digest, read_model  # local: no numpy/safetensors at import time

    return arrays_digest(read_model(model)[0])


TRAINING = KindCheck(check_training_job, receipt=check_training_receipt, spend=check_training_spend,
                     blocks=frozenset({"training"}), model_digest=model_file_digest)
