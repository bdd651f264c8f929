"""Admissions: a node's signed, short-lived promise that it will run a job.

Jobs are dispatched in two phases. First the coordinator asks every
participant to *admit* the job: the node runs every check it would run
before computing (contract, caller, buyer's signature, participants, rules,
query cap, privacy budget) and spends nothing; if all pass it signs an
`Admission` naming the job and contract digests, valid for a few minutes.
Only when every participant has admitted does the coordinator send *run*,
with all the admissions attached, and a node computes or debits only when it
sees a valid admission from every participant of the job (each signed by that
owner's key in the contract). So a job that one owner refuses, or that
cannot reach one owner, costs nobody anything — and this holds by each
node's own check, not on the coordinator's word.

An admission is not a reservation: two jobs admitted at once can still race
for the last of a budget, and the loser is refused at run time by the
ledger's atomic check.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from fedtrust.errors import PolicyViolation, VerificationError
from fedtrust.trust.canonical import Fields, format_time
from fedtrust.trust.clock import DEFAULT_SKEW, check_not_expired
from fedtrust.trust.contracts import Contract
from fedtrust.trust.credentials import signing_public_key
from fedtrust.trust.dsse import Envelope, Signer, keyid_of, verify_object

__all__ = ["ADMISSION_TYPE", "ADMISSION_TTL", "MAX_ADMISSIONS", "Admission", "sign_admission", "verify_admissions"]

ADMISSION_TYPE = "https://fedtrust.dev/Admission/v1"
#: how long an admission stays valid: the run phase follows within seconds
ADMISSION_TTL = timedelta(minutes=10)
#: a job has at most this many participants' admissions
MAX_ADMISSIONS = 1024


@dataclass(frozen=True)
class Admission:
    node: str
    job_digest: str
    contract_digest: str
    kind: str  # "query" or "train"
    admitted_at: str
    expires_at: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "job_digest": self.job_digest, "contract_digest": self.contract_digest,
                "kind": self.kind, "admitted_at": self.admitted_at, "expires_at": self.expires_at}

    @classmethod
    def from_dict(cls, d: object) -> Admission:
        f = Fields(d, "admission")
        return cls(f.text("node"), f.digest("job_digest"), f.digest("contract_digest"), f.text("kind"),
                   f.time("admitted_at"), f.time("expires_at"))

    @classmethod
    def new(cls, node: str, job_digest: str, contract_digest: str, kind: str,
            now: datetime | None = None) -> Admission:
        when = now or datetime.now(timezone.utc)
        return cls(node, job_digest, contract_digest, kind, format_time(when), format_time(when + ADMISSION_TTL))


def sign_admission(admission: Admission, signer: Signer) -> Envelope:
    return signer.sign_statement(ADMISSION_TYPE, admission.to_dict(), [("job", admission.job_digest)])


def verify_admissions(envelopes: Sequence[Envelope], contract: Contract, *, contract_digest: str, job_digest: str,
                      participants: Sequence[str], now: datetime | None = None,
                      skew: timedelta = DEFAULT_SKEW) -> None:
    """Every participant admitted this job under this contract, unexpired; PolicyViolation naming who did not."""
    if len(envelopes) > MAX_ADMISSIONS:
        raise VerificationError(f"more than {MAX_ADMISSIONS} admissions; the coordinator is broken")
    keys = {keyid_of(signing_public_key(h.credential)): h.credential for h in contract.owners}
    admitted: set[str] = set()
    for env in envelopes:
        cred = next((keys[s.keyid] for s in env.signatures if s.keyid in keys), None)
        if cred is None:
            raise VerificationError("an admission carries no signature by an owner of the contract; only owners admit")
        adm = verify_object(env, signing_public_key(cred), ADMISSION_TYPE, Admission.from_dict, "admission")
        if adm.node != cred.name:
            raise VerificationError(f"an admission names node {adm.node} but is signed by node {cred.name}")
        if adm.job_digest != job_digest or adm.contract_digest != contract_digest:
            raise VerificationError(f"the admission of node {cred.name} is for another job or contract")
        check_not_expired(adm.expires_at, f"the admission of node {cred.name}",
                          "the coordinator must ask every participant to admit the job again", now=now, skew=skew)
        admitted.add(cred.name)
    missing = [p for p in participants if p not in admitted]
    if missing:
        raise PolicyViolation(
            f"the job was not admitted by every participant (missing: {', '.join(missing)}); nothing runs until all "
            "have admitted it — the coordinator must run the admission phase first"
        )
