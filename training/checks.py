"""The training kind's checks for receipt verification: the signed training spec against the contract's rules,
and the digest of a delivered model file (`fedtrust.trust.verify.verify_bundle` takes them as a parameter:
trust imports nothing above it)."""
from __future__ import annotations

from fedtrust.errors import InvalidInput, PolicyViolation, VerificationError
from fedtrust.training.policy import check_training
from fedtrust.trust.contracts import Contract
from fedtrust.trust.jobs import JobSpec
from fedtrust.trust.verify import KindCheck, check_horizontal

__all__ = ["TRAINING", "check_training_job", "model_file_digest"]


def check_training_job(contract: Contract, job: JobSpec) -> None:
    """The job's training spec fits the contract's [training] rules; VerificationError naming the rule otherwise."""
    check_horizontal(contract)
    if job.training is None:
        raise VerificationError("the job is a training job without a training spec")
    try:
        check_training(job.training, contract.rules, contract.schema, contract.dataset, len(job.participants))
    except (PolicyViolation, InvalidInput) as e:
        raise VerificationError(f"the job's training spec breaks the contract's rules: {e}") from None


def model_file_digest(model: bytes) -> str:
    """`arrays_digest` of a model file's weights (InvalidInput when it cannot be read)."""
    from fedtrust.training.arrays import arrays_digest, read_model  # local: no numpy/safetensors at import time

    return arrays_digest(read_model(model)[0])


TRAINING = KindCheck(check_training_job, model_file_digest)
