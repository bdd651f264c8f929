"""Job specs: what the buyer asks under a contract, signed by the buyer.

A job spec fixes the contract, the coordinator and the participants (all the
contract's owners), so a coordinator can neither invent jobs nor choose which
nodes take part. Nodes key their release ledger on (contract, job id, nonce).

The job kind is a seam. A `JobSpec` carries the fields every job has plus one
*payload*: a frozen dataclass of its kind (`JobPayload`), parsed by the parser
registered under the kind's name (`register_payload`). trust/ knows no kind
above it: the query payload lives in `fedtrust.query.payload`, the training
spec in `fedtrust.training.spec`, the PSI payload in `fedtrust.trust.vertical`;
each registers itself when imported, and every role imports the kinds it
serves through its own registry (`node/kinds.py`, `coordinator/kinds.py`,
`buyer/kinds.py`, `exchange/verify.py`). The signed JSON is what it was
before the seam: the kind's keys sit beside the common ones ("sql" and "he"
for a query, "training" for a train job, "vertical" for a PSI), so the job
type stays `JobSpec/v1`. A new kind adds one key named for itself.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

from fedtrust.errors import InvalidInput, PolicyViolation, VerificationError
from fedtrust.trust.canonical import Fields, format_time, is_sha256_hex, parse_time
from fedtrust.trust.clock import check_not_expired
from fedtrust.trust.contracts import Contract
from fedtrust.trust.credentials import signing_public_key
from fedtrust.trust.dsse import Envelope, Signer, verify_object
from fedtrust.trust.kinds import JOB_ID, MAX_SQL_CHARS, JobPayload, job_kinds, payload_parser, register_payload

__all__ = [
    "JOB_TYPE", "MAX_SQL_CHARS", "DEFAULT_TTL", "TRAINING_TTL", "JobPayload", "JobSpec", "job_kinds",
    "JOB_RULES", "check_job_fits", "new_job_id", "new_nonce", "register_payload", "sign_job", "verify_job", "verify_job_signature",
]

JOB_TYPE = "https://fedtrust.dev/JobSpec/v1"
#: a training job runs many rounds: the buyer's signature stays valid this long by default
TRAINING_TTL = timedelta(hours=24)
DEFAULT_TTL = timedelta(hours=1)
_NONCE = re.compile(r"[0-9a-f]{64}")


def new_job_id() -> str:
    return secrets.token_hex(16)


def new_nonce() -> str:
    return secrets.token_hex(32)


P = TypeVar("P", bound=JobPayload)


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    contract_digest: str
    job_id: str
    nonce: str
    coordinator: str
    participants: tuple[str, ...]
    dataset: str
    payload: JobPayload
    created_at: str
    expires_at: str

    @property
    def kind(self) -> str:
        return self.payload.kind

    @property
    def is_mpc(self) -> bool:
        """An MPC job (`privacy.mpc.program`): its payload names the buyer's per-job `output_key`."""
        return hasattr(self.payload, "output_key")

    @property
    def output_key(self) -> str | None:
        """MPC jobs: the base64 raw X25519 key the buyer made for this job; owners seal their output shares to it."""
        return getattr(self.payload, "output_key", None)

    def payload_as(self, cls: type[P], where: str, fix: str = "use the endpoint for that kind") -> P:
        """The payload as kind `cls`; InvalidInput naming the endpoint when the job is of another kind."""
        if not isinstance(self.payload, cls):
            raise InvalidInput(f"job kind {self.kind!r} sent to {where}; {fix}")
        return self.payload

    @classmethod
    def create(cls, contract: Contract, contract_digest: str, payload: JobPayload, *,
               ttl: timedelta | None = None) -> JobSpec:
        """A fresh job for every owner of `contract`, expiring after `ttl` (default: the kind's)."""
        now = datetime.now(timezone.utc)
        return cls(
            contract_digest=contract_digest, job_id=new_job_id(), nonce=new_nonce(),
            coordinator=contract.coordinator.name, participants=contract.owner_names, dataset=contract.dataset,
            payload=payload, created_at=format_time(now), expires_at=format_time(now + (ttl or payload.ttl)),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "contract_digest": self.contract_digest,
            "job_id": self.job_id,
            "nonce": self.nonce,
            "kind": self.kind,
            "coordinator": self.coordinator,
            "participants": list(self.participants),
            "dataset": self.dataset,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }
        fields = self.payload.to_fields()
        if set(d) & set(fields):
            raise InvalidInput(f"job spec: the {self.kind} payload reuses a common key; name its keys for the kind")
        return {**d, **fields}

    @classmethod
    def from_dict(cls, d: object) -> JobSpec:
        f = Fields(d, "job spec")
        kind = f.text("kind")
        parse = payload_parser(kind)
        if parse is None:
            raise InvalidInput(f"job spec: kind must be one of {', '.join(job_kinds())}")
        job = cls(
            contract_digest=f.digest("contract_digest"),
            job_id=f.text("job_id"),
            nonce=f.text("nonce"),
            coordinator=f.text("coordinator"),
            participants=f.texts("participants"),
            dataset=f.text("dataset"),
            payload=parse(f),
            created_at=f.time("created_at"),
            expires_at=f.time("expires_at"),
        )
        job.check_form()
        return job

    def check_form(self) -> None:
        """Field formats; InvalidInput naming the field."""
        if not is_sha256_hex(self.contract_digest):
            raise InvalidInput("job spec: contract_digest must be a lowercase sha256 hex digest")
        if not JOB_ID.fullmatch(self.job_id):
            raise InvalidInput("job spec: job_id must be 1-64 characters A-Z a-z 0-9 . _ -")
        if not _NONCE.fullmatch(self.nonce):
            raise InvalidInput("job spec: nonce must be 32 random bytes in lowercase hex")
        if payload_parser(self.kind) is None:
            raise InvalidInput(f"job spec: kind must be one of {', '.join(job_kinds())}")
        self.payload.check_payload(self.dataset)
        if parse_time(self.created_at) > parse_time(self.expires_at):
            raise InvalidInput("job spec: expires_at is before created_at")


def sign_job(job: JobSpec, buyer_signer: Signer) -> Envelope:
    job.check_form()
    return buyer_signer.sign_statement(JOB_TYPE, job.to_dict(), [("contract", job.contract_digest)])


def verify_job(envelope: Envelope, contract: Contract, contract_digest: str, *, now: datetime | None = None,
               skew: timedelta | None = None) -> JobSpec:
    """Buyer's signature, then the job must fit this contract at `now` (default: the current time).

    VerificationError when the job is not the buyer's or is for another
    contract; PolicyViolation when it asks for what the contract forbids or
    has expired. The caller passes the digest of the contract envelope it
    verified. A daemon passes its clock `skew` tolerance: validity is then
    widened by it, and an expiry names both clocks.
    """
    job = verify_job_signature(envelope, contract)
    check_job_fits(job, contract, contract_digest, now or datetime.now(timezone.utc), skew)
    return job


def verify_job_signature(envelope: Envelope, contract: Contract) -> JobSpec:
    """The job spec in `envelope`, signed by the contract's buyer (VerificationError otherwise); nothing else checked."""
    return verify_object(envelope, signing_public_key(contract.buyer), JOB_TYPE, JobSpec.from_dict, "job spec")


def _names_contract(job: JobSpec, contract: Contract, contract_digest: str, when: datetime,
                    skew: timedelta | None) -> None:
    if job.contract_digest != contract_digest:
        raise VerificationError("job spec names another contract; send the contract the buyer signed the job for")


def _unexpired(job: JobSpec, contract: Contract, contract_digest: str, when: datetime,
               skew: timedelta | None) -> None:
    if skew is not None:
        check_not_expired(job.expires_at, "the job spec", "the buyer must submit a new job", now=when, skew=skew)
    elif when >= parse_time(job.expires_at):
        raise PolicyViolation(f"job spec expired at {job.expires_at}; the buyer must submit a new job")


def _in_contract_window(job: JobSpec, contract: Contract, contract_digest: str, when: datetime,
                        skew: timedelta | None) -> None:
    contract.check_valid_at(when, skew)


def _its_coordinator(job: JobSpec, contract: Contract, contract_digest: str, when: datetime,
                     skew: timedelta | None) -> None:
    if job.coordinator != contract.coordinator.name:
        raise PolicyViolation(
            f"job names coordinator {job.coordinator} but the contract names {contract.coordinator.name}; "
            "send the job through the contract's coordinator"
        )


def _its_owners(job: JobSpec, contract: Contract, contract_digest: str, when: datetime,
                skew: timedelta | None) -> None:
    if job.participants != contract.owner_names:
        raise PolicyViolation(
            f"participants must be exactly the contract's owners: {', '.join(contract.owner_names)} (sorted)"
        )


def _its_dataset(job: JobSpec, contract: Contract, contract_digest: str, when: datetime,
                 skew: timedelta | None) -> None:
    if job.dataset != contract.dataset:
        raise PolicyViolation(f"job asks for dataset {job.dataset} but the contract sells {contract.dataset}")


#: the rules a signed job must meet under its contract, by name, in order (the node's `admit` names them)
JOB_RULES: tuple[tuple[str, Callable[[JobSpec, Contract, str, datetime, timedelta | None], None]], ...] = (
    ("job-contract", _names_contract),
    ("job-expired", _unexpired),
    ("contract-window", _in_contract_window),
    ("job-coordinator", _its_coordinator),
    ("job-participants", _its_owners),
    ("job-dataset", _its_dataset),
)


def check_job_fits(job: JobSpec, contract: Contract, contract_digest: str, when: datetime,
                   skew: timedelta | None = None) -> None:
    """Every rule of `JOB_RULES` at `when` (pure: no clock read, no I/O); the first broken one raises."""
    for _, check in JOB_RULES:
        check(job, contract, contract_digest, when, skew)
