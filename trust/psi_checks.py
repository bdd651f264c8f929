"""How the buyer and the exchange verify a PSI job's receipt (`PSI`, a `fedtrust.trust.verify.KindCheck`; trust
holds the vertical rules itself): the signed join key against the contract's [vertical] rules, and one
intersection size, at least the contract's minimum, attested by every owner."""
from __future__ import annotations

from typing import Sequence

from fedtrust.errors import PolicyViolation, VerificationError
from fedtrust.trust.contracts import Contract
from fedtrust.trust.jobs import JobSpec
from fedtrust.trust.receipts import Attestation, CoordinatorStatement
from fedtrust.trust.verify import KindCheck
from fedtrust.trust.vertical import VerticalJob, check_vertical_job

__all__ = ["PSI", "check_psi_job", "check_psi_receipt"]


def check_psi_job(contract: Contract, job: JobSpec) -> None:
    """A PSI job's vertical spec fits the contract's [vertical] rules; VerificationError naming the rule otherwise."""
    payload = job.payload_as(VerticalJob, "the PSI verifier")
    try:
        check_vertical_job(contract.rules.vertical, job.kind, payload)
    except PolicyViolation as e:
        raise VerificationError(f"the vertical job breaks the contract's rules: {e}") from None


def check_psi_receipt(contract: Contract, job: JobSpec, atts: Sequence[Attestation], digests: Sequence[str],
                      statement: CoordinatorStatement) -> None:
    """Every owner attests the same intersection size, at least the contract's minimum; the coordinator claims no
    output of its own."""
    if statement.aggregate_outputs:
        raise VerificationError("the coordinator's statement for a PSI names an output of its own; it only relays")
    sizes = {a.intersection_size for a in atts}
    if None in sizes:
        raise VerificationError("an owner's attestation of a PSI job states no intersection size")
    if len(sizes) != 1:
        raise VerificationError("the owners attested different intersection sizes; the PSI was not run on one pair "
                                "of messages (a relay fault or a dishonest owner)")
    rules = contract.rules.vertical
    if rules is None:  # check_psi_job refused such a job first
        raise VerificationError("the job is a PSI but the contract sells no vertical jobs")
    size = sizes.pop()
    if size is None or size < rules.min_intersection:
        raise VerificationError("the attested intersection is below the contract's min_intersection; no owner may "
                                "release it")


PSI = KindCheck(check_psi_job, receipt=check_psi_receipt, blocks=frozenset({"intersection_size"}))
