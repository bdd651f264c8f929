"""The joint kind's checks of a signed job against its contract: what the buyer's CLI, every owner's node and
receipt verification (`trust.verify.verify_bundle(..., kinds={"joint": JOINT})`) run.

Under `[privacy]` joint statistics are refused. They run over a PSI alignment, and owners refuse PSI under
`[privacy]` (an exact intersection size is not differentially private), so no alignment a joint job could use
exists under such a contract; and exact joined counts and sums are not differentially private either. Were PSI
made private, the noise would be added inside the MPC as one share per owner (each owner draws its own
discrete-Laplace noise for the full ε as a secret input, so neither owner, nor the coordinator and buyer, knows
the total noise; colluding with one owner still leaves the other's), at twice the variance of one draw.
"""
from __future__ import annotations

from typing import Sequence

from fedtrust.errors import InvalidInput, PolicyViolation, VerificationError
from fedtrust.query.checks import check_query_receipt
from fedtrust.query.joint_sql import JointPlan, plan_joint
from fedtrust.trust.contracts import Contract
from fedtrust.trust.jobs import JobSpec
from fedtrust.trust.schema import Schema
from fedtrust.trust.verify import KindCheck
from fedtrust.trust.vertical import JointJob, check_vertical_job

__all__ = ["JOINT", "check_joint_job", "joint_schemas", "plan_joint_job"]

PRIVACY_REFUSAL = ("this contract has [privacy]: joint statistics are refused under it (they run on a PSI "
                   "alignment, which owners refuse under [privacy], and exact joined sums are not differentially "
                   "private); buy them under a vertical contract without [privacy]")


def joint_schemas(contract: Contract, participants: Sequence[str]) -> list[tuple[str, Schema]]:
    """(dataset, schema) of each participant's product, in party (rank) order."""
    return [(contract.holding(p).product.dataset, contract.holding(p).product.schema) for p in participants]


def plan_joint_job(contract: Contract, job: JobSpec) -> JointPlan:
    """Every rule a joint job must meet before anything runs; PolicyViolation / InvalidInput naming the rule."""
    payload = job.payload_as(JointJob, "the joint statistics check")
    check_vertical_job(contract.rules.vertical, job.kind, payload)
    if contract.rules.privacy is not None:
        raise PolicyViolation(PRIVACY_REFUSAL)
    return plan_joint(payload.sql, contract.rules.vertical, joint_schemas(contract, job.participants))


def check_joint_job(contract: Contract, job: JobSpec) -> None:
    """For receipts: VerificationError naming the broken rule."""
    try:
        plan_joint_job(contract, job)
    except (PolicyViolation, InvalidInput) as e:
        raise VerificationError(f"the joint job breaks the contract's rules: {e}") from None


#: what the buyer and `exchange verify` check of a joint job: its rules, and the statement naming exactly each
#: owner's attested (sealed) output as relayed, as for every MPC kind
JOINT = KindCheck(check_joint_job, receipt=check_query_receipt, blocks=frozenset({"relayed"}))
