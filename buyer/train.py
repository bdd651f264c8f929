"""The buyer's side of federated training: check, sign, submit, follow, verify, acknowledge.

The training spec (job.toml) is checked against the contract here first for
fast, clear refusals (every node checks again). The buyer signs a job of kind
"train" naming all the contract's owners, follows the rounds, and receives
the model as safetensors with the receipt. Before it acknowledges anything it
verifies the receipt (every owner attested, the coordinator signed this
model's digest and the job's rounds), and that the model file holds exactly
the job's architecture, the signed spec and the public preprocessing, so
`fedtrust predict` will treat new rows as the nodes treated theirs. The
acknowledgement's result digest is the sha256 of the model file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedtrust.buyer.client import CoordinatorClient, OnProgress, TrainingOutcome
from fedtrust.buyer.jobdir import JobFiles, jobs_root
from fedtrust.buyer.query import check_agreed, load_contract, reopen, tls_of
from fedtrust.errors import VerificationError
from fedtrust.training.arrays import read_model
from fedtrust.training.checks import TRAINING
from fedtrust.training.policy import check_training
from fedtrust.training.preprocess import Preprocessor
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.canonical import sha256_hex, utc_now
from fedtrust.trust.contracts import Contract
from fedtrust.trust.credentials import Identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import TRAINING_TTL, JobSpec, sign_job
from fedtrust.trust.receipts import Acknowledgement, ReceiptBundle, RoundMetric, sign_acknowledgement
from fedtrust.trust.verify import VerifiedReceipt, verify_bundle

__all__ = ["TrainingResult", "check_spec", "submit_training", "fetch_model_again", "MODEL_FILE"]

MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class TrainingResult:
    job_id: str
    model: bytes  # the safetensors file
    model_digest: str
    metrics: tuple[RoundMetric, ...]
    receipt: ReceiptBundle  # with the buyer's acknowledgement
    verified: VerifiedReceipt


def check_spec(contract: Contract, spec: TrainingSpec) -> None:
    """The contract's [training] rules, before anything is signed or sent."""
    check_training(spec, contract.rules, contract.schema, contract.dataset, len(contract.owner_names))
    from fedtrust.training.models import expected_shapes  # registry, BatchNorm and size limits

    pre = Preprocessor.build(contract.schema, spec.features, spec.label)
    expected_shapes(spec, pre.width, pre.outputs)


def submit_training(identity: Identity, credentials_dir: Path, contract_path: Path, coordinator: str,
                    spec: TrainingSpec, on_round: OnProgress | None = None, timeout: float = 86400.0) -> TrainingResult:
    contract, contract_raw = load_contract(identity, contract_path)
    contract_env = Envelope.from_json(contract_raw)
    check_agreed(contract, contract_raw)
    check_spec(contract, spec)
    job = JobSpec.create(contract, contract_env.digest, spec, ttl=TRAINING_TTL)
    job_env = sign_job(job, identity.signer)
    files = JobFiles(jobs_root(credentials_dir) / job.job_id)
    files.root.mkdir(parents=True, exist_ok=False, mode=0o700)
    files.job.write_bytes(job_env.to_json())
    files.contract.write_bytes(contract_raw)
    files.meta.write_text(json.dumps({"job_id": job.job_id, "kind": "train", "coordinator": coordinator,
                                      "training": spec.to_dict(), "submitted_at": utc_now()}, indent=2))
    client = CoordinatorClient(coordinator, tls_of(identity), contract.coordinator.name, timeout)
    outcome = client.submit_training(job_env.to_json(), contract_raw, on_round)
    return _finish(identity, files, contract, outcome)


def fetch_model_again(identity: Identity, credentials_dir: Path, job_id: str,
                      coordinator: str | None = None) -> TrainingResult:
    job = reopen(identity, credentials_dir, job_id, coordinator)
    return _finish(identity, job.files, job.contract, job.client.fetch_model(job_id))


def check_model_file(model: bytes, job: JobSpec, contract: Contract) -> None:
    """The delivered file is the job's model: its spec, public preprocessing, architecture, finite weights."""
    from fedtrust.training.models import expected_shapes

    signed = job.payload_as(TrainingSpec, "the buyer's model check")
    arrays, spec, pre, job_id = read_model(model)
    if spec != signed.to_dict() or job_id != job.job_id:
        raise VerificationError("the model file names another training spec or job than the one the buyer signed")
    expected = Preprocessor.build(contract.schema, signed.features, signed.label)
    if pre != expected.to_dict():
        raise VerificationError("the model file's preprocessing differs from the contract's public schema")
    shapes = expected_shapes(signed, expected.width, expected.outputs)
    if {k: tuple(v.shape) for k, v in arrays.items()} != shapes:
        raise VerificationError("the model file's arrays do not match the job's architecture")
    if not all(v.dtype == np.float32 and np.isfinite(v).all() for v in arrays.values()):
        raise VerificationError("the model file holds non-float32 or non-finite weights")


def _finish(identity: Identity, files: JobFiles, contract: Contract, outcome: TrainingOutcome) -> TrainingResult:
    bundle = ReceiptBundle.from_json(outcome.receipt)
    if bundle.job.digest != Envelope.from_json(files.job.read_bytes()).digest:
        raise VerificationError("the coordinator returned a receipt for another job")
    verified = verify_bundle(bundle, identity.exchange_key, {TrainingSpec.kind: TRAINING}, aggregate=(outcome.model,))
    check_model_file(outcome.model, verified.job, contract)
    digest = sha256_hex(outcome.model)
    ack = sign_acknowledgement(Acknowledgement(job_digest=verified.job_digest, result_digest=digest,
                                               acknowledged_at=utc_now()), identity.signer)
    receipt = ReceiptBundle(bundle.contract, bundle.job, bundle.attestations, bundle.statement, ack)
    (files.root / MODEL_FILE).write_bytes(outcome.model)
    files.receipt.write_bytes(receipt.to_json())
    assert verified.statement.training is not None
    return TrainingResult(verified.job.job_id, outcome.model, digest, verified.statement.training.metrics, receipt,
                          verified)
