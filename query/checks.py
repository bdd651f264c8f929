"""How the buyer and the exchange verify a query job's receipt (`QUERY`, a `fedtrust.trust.verify.KindCheck`):
the signed SQL against the contract's rules, the coordinator's statement of what it relayed, and the ε a node
spends per query (`verify_bundle` takes it as a parameter: trust imports nothing above it)."""
from __future__ import annotations

from decimal import Decimal
from typing import Sequence

from fedtrust.errors import PolicyViolation, VerificationError
from fedtrust.query.payload import QueryPayload
from fedtrust.query.sql import plan_query
from fedtrust.trust.contracts import Contract
from fedtrust.trust.jobs import JobSpec
from fedtrust.trust.receipts import Attestation, CoordinatorStatement, fmt_eps
from fedtrust.trust.rules import PrivacyRules
from fedtrust.trust.verify import KindCheck, check_horizontal

__all__ = ["QUERY", "check_query_job", "check_query_receipt", "check_query_spend"]


def check_query_job(contract: Contract, job: JobSpec) -> None:
    """The job's SQL plans under the contract's [query] rules; VerificationError naming the rule otherwise."""
    check_horizontal(contract)
    payload = job.payload_as(QueryPayload, "the query verifier")
    rules = contract.rules.query
    if rules is None:
        raise VerificationError("the job is a query but the contract sells no queries")
    schema = contract.owners[0].product.schema
    try:
        plan_query(payload.sql, rules, schema, contract.dataset)
    except PolicyViolation as e:
        raise VerificationError(f"the job's SQL breaks the contract's rules: {e}") from None


def check_query_receipt(contract: Contract, job: JobSpec, atts: Sequence[Attestation], digests: Sequence[str],
                        statement: CoordinatorStatement) -> None:
    """A query's statement names, per participant in order, the attestation and outputs it relayed: no more."""
    if statement.relayed is None:
        raise VerificationError("the coordinator's statement for a query does not name the outputs it relayed")
    if statement.aggregate_outputs:
        raise VerificationError("the coordinator's statement for a query names an aggregate of its own; a coordinator "
                                "relays the nodes' outputs and the buyer adds them")
    if len(statement.relayed) != len(job.participants):
        raise VerificationError("the coordinator's statement names relayed outputs for other than exactly the job's "
                                "participants")
    for r, att, digest in zip(statement.relayed, atts, digests):
        if r.node != att.node:
            raise VerificationError("the coordinator's statement names relayed outputs for other than exactly the "
                                    "job's participants, in order")
        if r.attestation != digest or tuple(r.outputs) != tuple(att.outputs):
            raise VerificationError(f"the coordinator's statement names outputs for node {att.node} other than "
                                    "those the node signed in its attestation")


def check_query_spend(privacy: PrivacyRules, att: Attestation) -> None:
    """Under [privacy] a node spends exactly ε per query and δ = 0."""
    if Decimal(att.epsilon) != privacy.epsilon_per_query or Decimal(att.delta) != 0:
        raise VerificationError(
            f"attestation of node {att.node} states ε={att.epsilon}, δ={att.delta} for a query; the contract's "
            f"[privacy] rules set ε={fmt_eps(privacy.epsilon_per_query)}, δ=0 per query")


QUERY = KindCheck(check_query_job, receipt=check_query_receipt, spend=check_query_spend, blocks=frozenset({"relayed"}))
