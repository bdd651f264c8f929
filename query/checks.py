"""The query kind's check of a signed job against the contract's rules, for receipt verification
(`fedtrust.trust.verify.verify_bundle` takes it as a parameter: trust imports nothing above it)."""
from __future__ import annotations

from fedtrust.errors import PolicyViolation, VerificationError
from fedtrust.query.sql import plan_query
from fedtrust.trust.contracts import Contract
from fedtrust.trust.jobs import JobSpec
from fedtrust.trust.verify import KindCheck, check_horizontal

__all__ = ["QUERY", "check_query_job"]


def check_query_job(contract: Contract, job: JobSpec) -> None:
    """The job's SQL plans under the contract's [query] rules; VerificationError naming the rule otherwise."""
    check_horizontal(contract)
    rules = contract.rules.query
    if rules is None:
        raise VerificationError("the job is a query but the contract sells no queries")
    schema = contract.owners[0].product.schema
    try:
        plan_query(job.sql, rules, schema, contract.dataset)
    except PolicyViolation as e:
        raise VerificationError(f"the job's SQL breaks the contract's rules: {e}") from None


QUERY = KindCheck(check_query_job)
