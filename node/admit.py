"""The node's decision core: may this job run here, and what will it spend? Pure, like python-tuf's updater.

`admit(job, contract, ledger, now, node, rules)` holds every refusal rule a
node applies before it computes anything, and does no I/O: no clock read, no
SQLite, no network. The caller (the kind's handler in `node/kinds.py`)
verifies the envelopes' signatures, reads what its ledger already holds into
a `LedgerView`, passes the time and its own facts (`NodeFacts`: its name, the
caller, the products it holds, the revocation list it holds), then does the
I/O the `Admission` allows — or raises the `Refusal`'s error, which names the
rule broken and spends nothing.

The rules, in the order they are applied (each `Refusal.rule` is one name):

- every kind (`check_common`): `caller` (the mTLS caller is the contract's
  coordinator), `owner` (this node is an owner), `revoked` (the contract and
  its parties are not revoked; the list is fresh enough), `withdrawn` (the
  owner has not withdrawn), `product` (this node holds the product the
  contract names), `job-contract` (the job names this contract), `job-expired`,
  `contract-window` (the contract is valid now), `job-coordinator`,
  `job-participants` (exactly the contract's owners), `job-dataset`;
- each kind's own rules (`query_rules`, `training_rules`, `psi_rules`,
  `mpc_rules` for every MPC program; a new kind brings its own function; a
  query also `query-parties`: at most `query.layout.MAX_PARTIES` owners, whose
  limb sums stay below t), with
  the ledger rules they share: `job-reused` (another job already used this job
  id or nonce), `finished`, `interrupted`, `repeated`, the cap of jobs
  (`query-cap`, `training-cap`, `psi-cap`, `<kind>-cap`) and the privacy budget
  (`budget`: ε and δ under the contract's accountant).

The ledger rules are re-checked atomically by the store when it debits: an
admission is a decision on a snapshot, not a reservation.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

from fedtrust.errors import BudgetExhausted, Error, InvalidInput, PolicyViolation, ReplayError, VerificationError
from fedtrust.privacy.accounting import Budget, Spend, accountant
from fedtrust.query import layout
from fedtrust.query.payload import QueryPayload
from fedtrust.query.sql import plan_query
from fedtrust.training.policy import check_training
from fedtrust.training.spec import ARCHITECTURES, TrainingSpec
from fedtrust.trust.contracts import Contract
from fedtrust.trust.jobs import JOB_RULES, JobSpec
from fedtrust.trust.products import Product
from fedtrust.trust.revocation import RevocationList, check_revocation
from fedtrust.trust.vertical import VerticalJob, check_vertical_job

__all__ = ["Admission", "LedgerView", "NodeFacts", "Refusal", "admit", "cap_message", "check_common", "check_parties",
           "check_still_served", "refusal_of", "mpc_rules", "psi_rules", "query_rules", "refuse", "rule", "training_rules"]

#: the accountant every node composes spends with (its name goes into DP attestations)
ACCOUNTANT = accountant()


@dataclass(frozen=True)
class LedgerView:
    """What the node's ledger already holds for one job under one contract (read by the store in one go)."""

    #: the owner withdrew from the contract at this time (`fedtrust node withdraw`), or None
    withdrawn_at: str | None = None
    #: another job already used this job's "nonce" or "job-id" (under the contract), or None
    reused: str | None = None
    #: this exact job's release is recorded and attested here
    attested: bool = False
    #: this exact job is debited here (attested or not: a resumed or retried job)
    debited: bool = False
    #: jobs of this job's kind already counted under the contract at this node
    jobs: int = 0
    #: jobs counted under the contract at this node, per ledger kind (an MPC program counts its jobs as the kind
    #: its charge names, e.g. mpc-stats jobs as "query")
    counted: Mapping[str, int] = field(default_factory=dict)
    #: every privacy spend recorded under the contract at this node, in ledger order
    spends: tuple[Spend, ...] = ()


@dataclass(frozen=True)
class NodeFacts:
    """What the node knows of itself and of the call, passed in (no I/O in the core)."""

    name: str
    #: the caller's mTLS identity (role, name)
    peer: tuple[str, str]
    contract_digest: str
    #: the products this node holds, by product-credential digest
    products: Mapping[str, Product]
    #: the newest exchange revocation list this node holds (None: none yet)
    revocations: RevocationList | None = None
    #: the daemon's clock-skew tolerance
    skew: timedelta | None = None


@dataclass(frozen=True)
class Admission:
    """The job may run: what it will spend (`spend`), and whether it ran here already."""

    kind: str
    spend: Spend
    #: this exact job is released here already: return the recorded release, spend nothing again
    replay: bool = False
    #: this exact job is debited already (a resumed job): continue it without a second debit
    resume: bool = False
    #: what the kind's rules computed that the run needs (a query's plan)
    plan: Any = None

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True)
class Refusal:
    """The job may not run here: the rule it broke and the error that says so (nothing was spent)."""

    rule: str
    error: Error

    def __bool__(self) -> bool:
        return False

    def raise_error(self) -> NoReturn:
        raise self.error


class _Refused(Exception):
    def __init__(self, rule: str, error: Error) -> None:
        super().__init__(rule)
        self.rule, self.error = rule, error


def refuse(rule_name: str, error: Error) -> NoReturn:
    """Refuse the job under `rule_name` (inside `admit`)."""
    raise _Refused(rule_name, error)


@contextmanager
def rule(rule_name: str) -> Iterator[None]:
    """Any fedtrust Error raised inside is a refusal under `rule_name` (for checks that live with their domain)."""
    try:
        yield
    except _Refused:
        raise
    except Error as e:
        raise _Refused(rule_name, e) from None


@dataclass(frozen=True)
class Context:
    """One admission's inputs, as each kind's rules see them."""

    job: JobSpec
    contract: Contract
    ledger: LedgerView
    now: datetime
    node: NodeFacts

    @property
    def product(self) -> Product:
        return self.node.products[self.contract.holding(self.node.name).product_digest]


#: a kind's rules: refuse (through `refuse` / `rule`) or return the admission with its exact spend
KindRules = Callable[[Context], Admission]


def admit(job: JobSpec, contract: Contract, ledger: LedgerView, now: datetime, node: NodeFacts,
          rules: KindRules) -> Admission | Refusal:
    """Every rule a node applies before computing `job`, in order; the first broken one refuses it."""
    try:
        check_common(job, contract, ledger, now, node)
        return rules(Context(job, contract, ledger, now, node))
    except _Refused as r:
        return Refusal(r.rule, r.error)


def refusal_of(check: Callable[..., None], *args: Any) -> Refusal | None:
    """Run rules outside `admit` (`check_parties`, `check_common`: for endpoints that serve an admitted job)."""
    try:
        check(*args)
    except _Refused as r:
        return Refusal(r.rule, r.error)
    return None


def check_parties(contract: Contract, node: NodeFacts) -> None:
    """The caller is the contract's coordinator and this node one of its owners."""
    if node.peer != ("coordinator", contract.coordinator.name):
        refuse("caller", VerificationError(
            f"caller fedtrust://{node.peer[0]}/{node.peer[1]} is not the contract's coordinator "
            f"fedtrust://coordinator/{contract.coordinator.name}"))
    if node.name not in contract.owner_names:
        refuse("owner", PolicyViolation(
            f"node {node.name} is not an owner under this contract; send the job to its owners only"))


def check_common(job: JobSpec, contract: Contract, ledger: LedgerView, now: datetime, node: NodeFacts) -> None:
    check_parties(contract, node)
    check_still_served(contract, ledger, now, node)
    holding = contract.holding(node.name)
    if holding.product_digest not in node.products:
        refuse("product", PolicyViolation(
            f"product {holding.product.dataset!r} named by the contract is not held by node {node.name}; "
            "add it to [[datasets]] in the node's config"))
    for name, check in JOB_RULES:
        with rule(name):
            check(job, contract, node.contract_digest, now, node.skew)


def check_still_served(contract: Contract, ledger: LedgerView, now: datetime, node: NodeFacts) -> None:
    """`revoked` and `withdrawn`: the rules that can change while a job runs (checked again before a running job
    releases more: a training round, an MPC session's output)."""
    with rule("revoked"):
        check_revocation(node.revocations, node.contract_digest, contract, now)
    if ledger.withdrawn_at is not None:
        refuse("withdrawn", PolicyViolation(
            f"the owner of node {node.name} withdrew from this contract at {ledger.withdrawn_at} "
            "(`fedtrust node withdraw`); it serves no more jobs under it"))


# -- the ledger rules every kind shares -------------------------------------------------------------------------
def check_not_reused(ledger: LedgerView) -> None:
    if ledger.reused == "nonce":
        refuse("job-reused", ReplayError("nonce already used by another job; sign each job with a fresh nonce"))
    if ledger.reused is not None:
        refuse("job-reused", ReplayError("job id already used for a different job under this contract; use a new "
                                         "job id"))


def cap_message(kind: str, max_jobs: int) -> str:
    """The refusal of a job over its contract's cap (`[query] max_queries`, `[training] max_jobs`)."""
    if kind == "train":
        return (f"training job cap reached: this contract allows {max_jobs} training jobs at this node "
                "([training] max_jobs) and all are spent; ask the exchange for a new contract")
    return (f"query cap reached: this contract allows {max_jobs} {kind} jobs at this node and all are spent; ask "
            "the exchange for a new contract")


def check_cap(rule_name: str, ledger: LedgerView, max_jobs: int, message: str) -> None:
    if ledger.jobs >= max_jobs:
        refuse(rule_name, BudgetExhausted(message))


def check_budget(ctx: Context, spend: Spend) -> None:
    """The contract's [privacy] budget (ε and δ, composed by the accountant) has room for `spend`."""
    privacy = ctx.contract.rules.privacy
    if privacy is None:
        return
    with rule("budget"):
        ACCOUNTANT.charge(Budget(privacy.epsilon_total, privacy.delta), ctx.ledger.spends, spend,
                          where=f"node {ctx.node.name}")


# -- the kinds' rules --------------------------------------------------------------------------------------------
def query_rules(ctx: Context) -> Admission:
    """A query: the contract sells queries, the SQL passes its rules, the HE parameters are supported; a recorded
    release is replayed; the query cap and the ε budget allow one more."""
    job, contract = ctx.job, ctx.contract
    with rule("kind"):
        payload = job.payload_as(QueryPayload, "the query endpoint")
    rules = contract.rules.query
    if rules is None:
        refuse("no-queries", PolicyViolation("this contract sells no queries (its rules have no [query] table)"))
    with rule("query-sql"):
        plan = plan_query(payload.sql, rules, ctx.product.schema, contract.dataset)
    if plan.is_mpc:
        refuse("mpc-aggregate", PolicyViolation(
            "MIN, MAX, MEDIAN and QUANTILE_CONT are computed in MPC, not under HE: submit the query as an mpc-stats "
            "job (`fedtrust query` does so by itself)"))
    with rule("he-params"):
        payload.he.check_supported()
    if len(job.participants) > layout.MAX_PARTIES:  # the limb sums of more owners could wrap mod t (query/layout.py)
        refuse("query-parties", PolicyViolation(
            f"a query adds at most {layout.MAX_PARTIES} owners' releases without wrapping, and this contract has "
            f"{len(job.participants)}: split its owners across contracts"))
    privacy = contract.rules.privacy
    spend = Spend("exact", Decimal(0)) if privacy is None else Spend("discrete-laplace", privacy.epsilon_per_query)
    check_not_reused(ctx.ledger)
    if ctx.ledger.attested:
        return Admission(job.kind, spend, replay=True, plan=plan)
    check_cap("query-cap", ctx.ledger, rules.max_queries, cap_message("query", rules.max_queries))
    check_budget(ctx, spend)
    return Admission(job.kind, spend, plan=plan)


def training_rules(ctx: Context, *, approved: frozenset[str] = frozenset(),
                   dp_plan: Callable[[], Any] = lambda: None) -> Admission:
    """A training job: its spec passes the contract's [training] rules, its model is a registry model or a
    ClientApp this node approved; not finished here; a debited job resumes; the job cap and, under [privacy],
    the DP-SGD plan's ε and δ fit. `dp_plan()` is the job's DP-SGD plan from public numbers (None without
    [privacy]); `approved` the ClientApps this node's owner approved."""
    job, contract = ctx.job, ctx.contract
    with rule("kind"):
        spec = job.payload_as(TrainingSpec, "the training endpoint")
    with rule("training-rules"):
        check_training(spec, contract.rules, ctx.product.schema, contract.dataset, len(job.participants))
    if spec.model not in ARCHITECTURES and spec.model not in approved:
        refuse("app-approved", PolicyViolation(
            f"model {spec.model} is neither a registry model nor a ClientApp this node approved; "
            "its owner lists approved apps under [[clientapps]] in NODE.toml"))
    check_not_reused(ctx.ledger)
    if ctx.ledger.attested:
        refuse("finished", PolicyViolation("this training job is finished (attested) at this node; submit a new job"))
    if ctx.ledger.debited:  # a resumed job: debited once, at its first round
        return Admission(job.kind, _training_spend(spec, dp_plan), resume=True)
    training = contract.rules.training
    assert training is not None  # check_training refused the job otherwise
    check_cap("training-cap", ctx.ledger, training.max_jobs, cap_message("train", training.max_jobs))
    spend = _training_spend(spec, dp_plan)
    if spend.mechanism == "dp-sgd":
        check_budget(ctx, spend)
    return Admission(job.kind, spend)


def _training_spend(spec: TrainingSpec, dp_plan: Callable[[], Any]) -> Spend:
    with rule("dp-plan"):
        dp = dp_plan()
    if dp is not None:
        return Spend("dp-sgd", dp.epsilon, dp.delta)
    return Spend("masked-sgd" if spec.secure_aggregation == "masking" else "plain-sgd", Decimal(0))


def psi_rules(ctx: Context, *, finished_ok: bool = False, session: bool = False) -> Admission:
    """A PSI job: the contract's [vertical] rules sell it on this key, no [privacy] (an exact intersection size is
    not DP), this node's product has the key column; a finished job is refused (its last step's retry gets the
    recorded answer: `finished_ok`), a debited one needs its live `session`; the job cap."""
    job, contract = ctx.job, ctx.contract
    with rule("kind"):
        payload = job.payload_as(VerticalJob, "the PSI endpoint")
    rules = contract.rules.vertical
    with rule("vertical-rules"):
        check_vertical_job(rules, job.kind, payload)
    assert rules is not None
    if contract.rules.privacy is not None:
        refuse("psi-privacy", PolicyViolation(
            "this contract has [privacy]: an exact intersection size is not differentially private, so this node "
            "refuses PSI under it"))
    schema = ctx.product.schema
    if not schema.has(rules.key) or schema.column(rules.key).type != "key":
        refuse("key-column", PolicyViolation(f"this node's product has no join column {rules.key!r} of type \"key\""))
    spend = Spend("exact", Decimal(0))
    check_not_reused(ctx.ledger)
    if ctx.ledger.attested:
        if finished_ok:
            return Admission(job.kind, spend, replay=True)
        refuse("finished", PolicyViolation("this PSI job is finished (attested) at this node; submit a new job"))
    if ctx.ledger.debited:
        if not session:
            refuse("interrupted", PolicyViolation(
                "this PSI job was interrupted at this node (its one-time secret is gone); submit a new job"))
        return Admission(job.kind, spend, resume=True)
    check_cap("psi-cap", ctx.ledger, rules.max_jobs, cap_message("psi", rules.max_jobs))
    return Admission(job.kind, spend)


def mpc_rules(ctx: Context, *, program: Any, charge: Callable[[], Any]) -> Admission:
    """An MPC job (`privacy.mpc.program`): the job names the buyer's output key, the contract names a dealer (the
    owners agreed to it by signing), this node runs a program of the job's kind (`program`: the registered
    MpcProgram, None when there is none) that has admission rules, and they pass (`charge()`: the program's own
    checks, e.g. the SQL against `[query]` or the PSI alignment this node holds, and the job's `Charge`); the
    job never ran here (a session cannot be repeated: its randomness is gone); the cap of the kind the charge
    counts as and, under [privacy], the budget fit. The admission's `plan` is the Charge."""
    job, contract = ctx.job, ctx.contract
    if not job.is_mpc:
        refuse("kind", InvalidInput(f"job kind {job.kind!r} sent to the MPC endpoint; use the endpoint for that kind"))
    if job.output_key is None:
        refuse("output-key", InvalidInput(
            "an MPC job names the buyer's output key (`output_key`); the buyer's client sets it"))
    if contract.dealer is None:
        refuse("dealer", PolicyViolation(
            "this contract names no MPC dealer, so this node runs no MPC job under it; ask the exchange for a "
            "contract with a dealer (`fedtrust exchange contract --dealer`)"))
    if program is None:
        refuse("mpc-program", PolicyViolation(f"this node runs no MPC program of kind {job.kind!r}"))
    if program.admit is None:
        refuse("mpc-program", PolicyViolation(
            f"MPC program {job.kind!r} has no admission rules, so this node does not run it"))
    with rule("mpc-rules"):
        c = charge()
    check_not_reused(ctx.ledger)
    if ctx.ledger.debited:
        refuse("repeated", PolicyViolation("this MPC job already ran (or was interrupted) at this node; a session "
                                           "cannot be repeated, submit a new job"))
    if c.max_jobs is not None and ctx.ledger.counted.get(c.counts_as, 0) >= c.max_jobs:
        refuse(f"{c.counts_as}-cap", BudgetExhausted(cap_message(c.counts_as, c.max_jobs)))
    spend = Spend(c.mechanism, c.epsilon, c.delta)
    check_budget(ctx, spend)
    return Admission(job.kind, spend, plan=c)
