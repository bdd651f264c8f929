"""The buyer's side of a vertical PSI job: check, sign, submit, verify the receipt, acknowledge.

The buyer learns the intersection size and nothing else: no key, no row, no
blinded point reaches it (the owners' messages are sealed to each other). It
accepts the size only from a receipt in which both owners signed the same
size, for this job, at or above the contract's `min_intersection`, and the
coordinator signed over exactly those attestations (`trust.verify`); then it
writes the result and signs its acknowledgement.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fedtrust.buyer.client import CoordinatorClient, JobOutcome, OnProgress
from fedtrust.buyer.jobdir import JobFiles, jobs_root
from fedtrust.buyer.query import check_agreed, load_contract, reopen, tls_of
from fedtrust.errors import ConfigError, VerificationError
from fedtrust.trust.canonical import utc_now
from fedtrust.trust.contracts import Contract
from fedtrust.trust.credentials import Identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec, sign_job
from fedtrust.trust.psi_checks import PSI
from fedtrust.trust.receipts import Acknowledgement, ReceiptBundle, result_digest, sign_acknowledgement
from fedtrust.trust.verify import VerifiedReceipt, verify_bundle
from fedtrust.trust.vertical import VerticalJob, check_vertical_job

JOB_TTL = timedelta(hours=1)
COLUMNS = ["intersection_size"]


@dataclass(frozen=True)
class PsiOutcome:
    job_id: str
    intersection_size: int
    result: dict  # what result.json holds
    receipt: ReceiptBundle  # with the buyer's acknowledgement
    verified: VerifiedReceipt


def submit_psi(identity: Identity, credentials_dir: Path, contract_path: Path, coordinator: str,
               on_progress: OnProgress | None = None, timeout: float = 3600.0) -> PsiOutcome:
    contract, contract_raw = load_contract(identity, contract_path)
    check_agreed(contract, contract_raw)
    rules = contract.rules.vertical
    if rules is None:
        raise ConfigError("this contract sells no vertical jobs (its rules have no [vertical] table)")
    check_vertical_job(rules, "psi", VerticalJob(rules.key))  # fast, clear refusal before anything is sent
    contract_env = Envelope.from_json(contract_raw)
    job = JobSpec.create(contract, contract_env.digest, VerticalJob(rules.key), ttl=JOB_TTL)
    job_env = sign_job(job, identity.signer)
    files = JobFiles(jobs_root(credentials_dir) / job.job_id)
    files.create(b"", job_env.to_json(), contract_raw,
                 {"job_id": job.job_id, "coordinator": coordinator, "kind": "psi", "submitted_at": utc_now()})
    client = CoordinatorClient(coordinator, tls_of(identity), contract.coordinator.name, timeout)
    return finish(identity, files, contract, client.submit_vertical(job_env.to_json(), contract_raw, on_progress))


def fetch_psi_again(identity: Identity, credentials_dir: Path, job_id: str, coordinator: str | None = None) -> PsiOutcome:
    job = reopen(identity, credentials_dir, job_id, coordinator)
    return finish(identity, job.files, job.contract, job.client.fetch_result(job_id, max_nodes=0))


def finish(identity: Identity, files: JobFiles, contract: Contract, outcome: JobOutcome) -> PsiOutcome:
    if outcome.relayed:
        raise VerificationError("the coordinator relayed outputs for a PSI job; the buyer receives only the receipt")
    bundle = ReceiptBundle.from_json(outcome.receipt)
    if bundle.job.digest != Envelope.from_json(files.job.read_bytes()).digest:
        raise VerificationError("the coordinator returned a receipt for another job")
    verified = verify_bundle(bundle, identity.exchange_key, {VerticalJob.kind: PSI})
    if not isinstance(verified.job.payload, VerticalJob):
        raise VerificationError("the coordinator returned a receipt of another kind of job")
    payload = verified.job.payload
    size = verified.attestations[0].intersection_size
    assert size is not None  # verify_bundle checked every owner attested the same size
    result = {"columns": COLUMNS, "rows": [[size]], "job_id": verified.job.job_id, "kind": "psi",
              "key": payload.key, "salt": secrets.token_hex(16)}
    digest = result["result_digest"] = result_digest(result)
    ack = sign_acknowledgement(Acknowledgement(job_digest=verified.job_digest, result_digest=digest,
                                               acknowledged_at=utc_now()), identity.signer)
    receipt = ReceiptBundle(bundle.contract, bundle.job, bundle.attestations, bundle.statement, ack)
    files.result.write_text(json.dumps(result, indent=2))
    files.receipt.write_bytes(receipt.to_json())
    return PsiOutcome(verified.job.job_id, size, result, receipt, verified)
