"""Job specs: what the buyer asks under a contract, signed by the buyer.

A job spec fixes the contract, the coordinator and the participants (all the
contract's owners), so a coordinator can neither invent jobs nor choose which
nodes take part. Nodes key their release ledger on (contract, job id, nonce).

Two kinds: "query" (the SQL and the buyer's HE parameters) and "train" (a
`TrainingSpec` under the key `training`). A query job's JSON is exactly what
it was before training existed: the `training` key appears only in train
jobs, and `sql`/`he` only in query jobs.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from fedtrust.errors import InvalidInput, PolicyViolation, VerificationError
from fedtrust.privacy.params import HeParams
from fedtrust.trust.canonical import Fields, format_time, is_sha256_hex, parse_time
from fedtrust.trust.clock import check_not_expired
from fedtrust.trust.contracts import Contract
from fedtrust.trust.credentials import signing_public_key
from fedtrust.trust.dsse import Envelope, Signer, verify_object
from fedtrust.trust.training_spec import TrainingSpec
from fedtrust.trust.vertical import VerticalJob
from fedtrust.trust.vertical_lr import KIND as VERTICAL_LR
from fedtrust.trust.vertical_lr import VerticalLRSpec

__all__ = [
    "JOB_TYPE", "JOB_KINDS", "MAX_SQL_CHARS", "DEFAULT_TTL", "TRAINING_TTL", "JobSpec", "new_job_id", "new_nonce",
    "sign_job", "verify_job",
]

JOB_TYPE = "https://fedtrust.dev/JobSpec/v1"
JOB_KINDS = ("query", "train", "psi", "joint", VERTICAL_LR)
#: a training job runs many rounds: the buyer's signature stays valid this long by default
TRAINING_TTL = timedelta(hours=24)
MAX_SQL_CHARS = 65536
DEFAULT_TTL = timedelta(hours=1)
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NONCE = re.compile(r"[0-9a-f]{64}")


def new_job_id() -> str:
    return secrets.token_hex(16)


def new_nonce() -> str:
    return secrets.token_hex(32)


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    contract_digest: str
    job_id: str
    nonce: str
    kind: str = "query"
    coordinator: str
    participants: tuple[str, ...]
    dataset: str
    sql: str = ""  # query jobs
    he: HeParams | None = None  # query jobs
    training: TrainingSpec | None = None  # train jobs
    vertical: VerticalJob | None = None  # vertical jobs (kinds "psi", "joint")
    vertical_lr: VerticalLRSpec | None = None  # vertical logistic regression (kind "vertical-lr")
    created_at: str
    expires_at: str

    @classmethod
    def new(
        cls, contract: Contract, contract_digest: str, sql: str, he: HeParams, *, ttl: timedelta = DEFAULT_TTL,
    ) -> JobSpec:
        """A fresh query job for every owner of `contract`, expiring after `ttl`."""
        now = datetime.now(timezone.utc)
        return cls(
            contract_digest=contract_digest, job_id=new_job_id(), nonce=new_nonce(), kind="query",
            coordinator=contract.coordinator.name, participants=contract.owner_names, dataset=contract.dataset,
            sql=sql, he=he, created_at=format_time(now), expires_at=format_time(now + ttl),
        )

    @classmethod
    def new_training(
        cls, contract: Contract, contract_digest: str, spec: TrainingSpec, *, ttl: timedelta = TRAINING_TTL,
    ) -> JobSpec:
        """A fresh training job for every owner of `contract`, expiring after `ttl`."""
        now = datetime.now(timezone.utc)
        return cls(
            contract_digest=contract_digest, job_id=new_job_id(), nonce=new_nonce(), kind="train",
            coordinator=contract.coordinator.name, participants=contract.owner_names, dataset=contract.dataset,
            training=spec, created_at=format_time(now), expires_at=format_time(now + ttl),
        )

    @classmethod
    def new_psi(cls, contract: Contract, contract_digest: str, key: str, *, ttl: timedelta = DEFAULT_TTL) -> JobSpec:
        """A fresh private-set-intersection job between the owners of a vertical `contract`."""
        now = datetime.now(timezone.utc)
        return cls(
            contract_digest=contract_digest, job_id=new_job_id(), nonce=new_nonce(), kind="psi",
            coordinator=contract.coordinator.name, participants=contract.owner_names, dataset=contract.dataset,
            vertical=VerticalJob(key), created_at=format_time(now), expires_at=format_time(now + ttl),
        )

    @classmethod
    def new_joint(cls, contract: Contract, contract_digest: str, key: str, sql: str, alignment: str, *,
                  ttl: timedelta = DEFAULT_TTL) -> JobSpec:
        """A fresh joint-statistics job over the rows PSI job `alignment` aligned under a vertical `contract`."""
        now = datetime.now(timezone.utc)
        return cls(
            contract_digest=contract_digest, job_id=new_job_id(), nonce=new_nonce(), kind="joint",
            coordinator=contract.coordinator.name, participants=contract.owner_names, dataset=contract.dataset,
            vertical=VerticalJob(key, sql, alignment), created_at=format_time(now), expires_at=format_time(now + ttl),
        )

    @classmethod
    def new_vertical_lr(cls, contract: Contract, contract_digest: str, spec: VerticalLRSpec, *,
                        ttl: timedelta = TRAINING_TTL) -> JobSpec:
        """A fresh vertical logistic regression job between the owners of a vertical `contract`."""
        now = datetime.now(timezone.utc)
        return cls(
            contract_digest=contract_digest, job_id=new_job_id(), nonce=new_nonce(), kind=VERTICAL_LR,
            coordinator=contract.coordinator.name, participants=contract.owner_names, dataset=contract.dataset,
            vertical_lr=spec, created_at=format_time(now), expires_at=format_time(now + ttl),
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
        if self.kind == "train":
            if self.training is None:
                raise InvalidInput("job spec: a train job needs its training spec")
            d["training"] = self.training.to_dict()
        elif self.kind in ("psi", "joint"):
            if self.vertical is None:
                raise InvalidInput(f"job spec: a {self.kind} job needs its vertical payload")
            d["vertical"] = self.vertical.to_dict()
        elif self.kind == VERTICAL_LR:
            if self.vertical_lr is None:
                raise InvalidInput("job spec: a vertical-lr job needs its vertical_lr payload")
            d["vertical_lr"] = self.vertical_lr.to_dict()
        else:
            if self.he is None:
                raise InvalidInput("job spec: a query job needs its HE parameters")
            d["sql"] = self.sql
            d["he"] = self.he.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: object) -> JobSpec:
        f = Fields(d, "job spec")
        kind = f.text("kind")
        if kind == "train":
            extra = {"training": TrainingSpec.from_dict(f.obj("training"))}
        elif kind in ("psi", "joint"):
            extra = {"vertical": VerticalJob.from_dict(f.obj("vertical"))}
        elif kind == VERTICAL_LR:
            extra = {"vertical_lr": VerticalLRSpec.from_dict(f.obj("vertical_lr"), where="job spec: vertical_lr")}
        else:
            extra = {"sql": f.text("sql"), "he": HeParams.from_dict(f.obj("he"))}
        job = cls(
            contract_digest=f.digest("contract_digest"),
            job_id=f.text("job_id"),
            nonce=f.text("nonce"),
            kind=kind,
            coordinator=f.text("coordinator"),
            participants=f.texts("participants"),
            dataset=f.text("dataset"),
            created_at=f.time("created_at"),
            expires_at=f.time("expires_at"),
            **extra,
        )
        job.check_form()
        return job

    def check_form(self) -> None:
        """Field formats; InvalidInput naming the field."""
        if not is_sha256_hex(self.contract_digest):
            raise InvalidInput("job spec: contract_digest must be a lowercase sha256 hex digest")
        if not _JOB_ID.fullmatch(self.job_id):
            raise InvalidInput("job spec: job_id must be 1-64 characters A-Z a-z 0-9 . _ -")
        if not _NONCE.fullmatch(self.nonce):
            raise InvalidInput("job spec: nonce must be 32 random bytes in lowercase hex")
        if self.kind not in JOB_KINDS:
            raise InvalidInput(f"job spec: kind must be one of {', '.join(JOB_KINDS)}")
        if self.kind in ("psi", "joint"):
            if self.vertical is None or self.training is not None or self.sql or self.he is not None \
                    or self.vertical_lr is not None:
                raise InvalidInput(f"job spec: a {self.kind} job carries a vertical payload and no sql, he or "
                                   "training spec")
            joint = self.kind == "joint"
            if bool(self.vertical.sql) != joint or bool(self.vertical.alignment) != joint:
                raise InvalidInput("job spec: a joint job's vertical payload names its sql and alignment (the PSI "
                                   "job id); a psi job's names neither")
            if joint and (len(self.vertical.sql) > MAX_SQL_CHARS or not _JOB_ID.fullmatch(self.vertical.alignment)):
                raise InvalidInput(f"job spec: a joint job's sql is at most {MAX_SQL_CHARS} characters and its "
                                   "alignment a PSI job id")
        elif self.kind == VERTICAL_LR:
            if self.vertical_lr is None or self.vertical is not None or self.training is not None or self.sql \
                    or self.he is not None:
                raise InvalidInput("job spec: a vertical-lr job carries a vertical_lr payload only")
        elif self.kind == "train":
            if self.training is None or self.sql or self.he is not None or self.vertical is not None \
                    or self.vertical_lr is not None:
                raise InvalidInput("job spec: a train job carries a training spec and no sql or he")
            self.training.check_form()
            if self.training.dataset != self.dataset:
                raise InvalidInput("job spec: the training spec names another dataset than the job")
        else:
            if self.training is not None or self.vertical is not None or self.vertical_lr is not None or self.he is None:
                raise InvalidInput("job spec: a query job carries sql and he and no training spec")
            if not self.sql.strip() or len(self.sql) > MAX_SQL_CHARS:
                raise InvalidInput(f"job spec: sql must be a non-empty query of at most {MAX_SQL_CHARS} characters")
            if not is_sha256_hex(self.he.context_digest):
                raise InvalidInput("job spec: he.context_digest must be a lowercase sha256 hex digest")
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
    job = verify_object(envelope, signing_public_key(contract.buyer), JOB_TYPE, JobSpec.from_dict, "job spec")
    if job.contract_digest != contract_digest:
        raise VerificationError("job spec names another contract; send the contract the buyer signed the job for")
    when = now or datetime.now(timezone.utc)
    if skew is not None:
        check_not_expired(job.expires_at, "the job spec", "the buyer must submit a new job", now=when, skew=skew)
    elif when >= parse_time(job.expires_at):
        raise PolicyViolation(f"job spec expired at {job.expires_at}; the buyer must submit a new job")
    contract.check_valid_at(when, skew)
    if job.coordinator != contract.coordinator.name:
        raise PolicyViolation(
            f"job names coordinator {job.coordinator} but the contract names {contract.coordinator.name}; "
            "send the job through the contract's coordinator"
        )
    if job.participants != contract.owner_names:
        raise PolicyViolation(
            f"participants must be exactly the contract's owners: {', '.join(contract.owner_names)} (sorted)"
        )
    if job.dataset != contract.dataset:
        raise PolicyViolation(f"job asks for dataset {job.dataset} but the contract sells {contract.dataset}")
    return job
