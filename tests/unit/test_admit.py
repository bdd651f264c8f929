"""The node's decision core (`fedtrust.node.admit`): every refusal rule by name, on plain data.

`admit` is pure (no clock, no SQLite, no network): each test builds a contract, a job, the node's facts and a
ledger view, and checks the decision. A refusal names its rule, carries the error the node sends (its kind and
one-line message) and no spend; an admission states the exact spend the node will debit.
"""
from __future__ import annotations

from dataclasses import fields, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from types import SimpleNamespace

import pytest

from fedtrust.errors import BudgetExhausted, InvalidInput, PolicyViolation, ReplayError, VerificationError
from fedtrust.node.admit import (
    Admission,
    LedgerView,
    NodeFacts,
    Refusal,
    admit,
    check_still_served,
    mpc_rules,
    psi_rules,
    query_rules,
    refusal_of,
    training_rules,
)
from fedtrust.privacy.accounting import Spend
from fedtrust.privacy.mpc.program import Charge
from fedtrust.privacy.params import HeParams
from fedtrust.query.mpc_stats import MpcStatsJob
from fedtrust.query.payload import QueryPayload
from fedtrust.training.dp_sgd import DpSgdPlan
from fedtrust.trust.canonical import format_time
from fedtrust.trust.jobs import JobSpec
from fedtrust.trust.revocation import RevocationList, Revoked
from fedtrust.trust.rules import PrivacyRules, QueryRules, Rules, TrainingRules
from fedtrust.trust.schema import Column, Schema
from fedtrust.trust.vertical import VerticalJob, VerticalRules

from training_helper import make_spec
from trust_world import D, World

SCHEMA = Schema((
    Column("region", "category", values=("north", "south", "east")),
    Column("income", "float", 0.0, 100.0),
    Column("age", "int", 18, 100),
    Column("defaulted", "int", 0, 1),
    Column("phone_key", "key"),
))
QUERY = QueryRules(("COUNT", "SUM"), ("income",), ("region",), ("region",), 5, 3)
TRAINING = TrainingRules(("logreg",), 10, ("income", "age", "region", "defaulted"), 2, max_jobs=2)
PRIVACY = PrivacyRules(Decimal("1"), Decimal("1e-5"), Decimal("0.5"), Decimal("0.8"), Decimal("1e-6"))
VERTICAL = VerticalRules("phone_key", ("psi",), 5, 100, 2, ())
SQL = "SELECT region, COUNT(*) AS n FROM loans GROUP BY region"
HE = HeParams(context_digest=D)
DP = DpSgdPlan(Decimal("0.8"), Decimal("1e-6"), Decimal("0.75"), 1.1, 1.0, 0.01, 10, 3, 64, 100)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def contract_of(world: World, rules: Rules, *, schema: Schema = SCHEMA, **changes):
    """The world's contract over a 'loans' product with `schema`, under `rules` (signatures are the shell's)."""
    holdings = tuple(replace(h, product=replace(h.product, dataset="loans", schema=schema))
                     for h in world.contract.owners)
    return replace(world.contract, owners=holdings, rules=rules, **changes)


def facts(contract, *, peer=("coordinator", "coord-1"), name="node-a", products=None, revocations=None) -> NodeFacts:
    held = {h.product_digest: h.product for h in contract.owners if h.credential.name == name}
    return NodeFacts(name, peer, D, held if products is None else products, revocations, timedelta(seconds=30))


def job_of(contract, payload, **changes) -> JobSpec:
    return replace(JobSpec.create(contract, D, payload), **changes)


def decide(world, payload, rules_fn, *, rules: Rules | None = None, ledger: LedgerView = LedgerView(),
           now: datetime | None = None, contract_changes=None, job_changes=None, **fact_changes):
    contract = contract_of(world, rules or Rules(QUERY, 30, TRAINING), **(contract_changes or {}))
    job = job_of(contract, payload, **(job_changes or {}))
    return admit(job, contract, ledger, now or datetime.now(timezone.utc), facts(contract, **fact_changes), rules_fn)


def refused(decision, rule: str, error: type, match: str) -> None:
    """The job is refused under `rule`, with the node's error, and nothing is spent."""
    assert isinstance(decision, Refusal), decision
    assert not decision and decision.rule == rule, decision
    assert isinstance(decision.error, error), decision.error
    assert match in str(decision.error), str(decision.error)
    assert "spend" not in {f.name for f in fields(decision)}


QUERY_JOB = QueryPayload(SQL, HE)


# -- the rules every kind shares ---------------------------------------------------------------------------------
def test_caller_must_be_the_contracts_coordinator(world):
    refused(decide(world, QUERY_JOB, query_rules, peer=("coordinator", "mallory")), "caller", VerificationError,
            "caller fedtrust://coordinator/mallory is not the contract's coordinator")


def test_node_must_be_an_owner(world):
    refused(decide(world, QUERY_JOB, query_rules, name="node-z", products={}), "owner", PolicyViolation,
            "node node-z is not an owner under this contract")


def test_revoked_contract(world):
    rl = RevocationList(1, format_time(datetime.now(timezone.utc)),
                        (Revoked("contract", D, "breach", format_time(datetime.now(timezone.utc))),))
    refused(decide(world, QUERY_JOB, query_rules, revocations=rl), "revoked", PolicyViolation,
            "this contract was revoked by the exchange")


def test_withdrawn_owner(world):
    refused(decide(world, QUERY_JOB, query_rules, ledger=LedgerView(withdrawn_at="2026-01-01T00:00:00Z")),
            "withdrawn", PolicyViolation, "withdrew from this contract at 2026-01-01T00:00:00Z")


def test_a_running_job_is_checked_again_for_revocation_and_withdrawal_only(world):
    """What a running job's next step re-checks (`check_still_served`): the rules that can change mid-job."""
    contract = contract_of(world, Rules(QUERY, 30, TRAINING))
    now = datetime.now(timezone.utc)
    rl = RevocationList(1, format_time(now), (Revoked("subject", contract.buyer.uri, "breach", format_time(now)),))
    refused(refusal_of(check_still_served, contract, LedgerView(), now, facts(contract, revocations=rl)), "revoked",
            PolicyViolation, f"party {contract.buyer.uri} of this contract was revoked by the exchange")
    refused(refusal_of(check_still_served, contract, LedgerView(withdrawn_at="2026-01-01T00:00:00Z"), now,
                       facts(contract)), "withdrawn", PolicyViolation, "withdrew from this contract")
    # an expired job or contract window is not re-checked here: a session that started in time finishes
    assert refusal_of(check_still_served, contract, LedgerView(), now + timedelta(days=3650), facts(contract)) is None


def test_product_must_be_held(world):
    refused(decide(world, QUERY_JOB, query_rules, products={}), "product", PolicyViolation,
            "named by the contract is not held by node node-a")


def test_job_must_name_this_contract(world):
    refused(decide(world, QUERY_JOB, query_rules, job_changes={"contract_digest": "cd" * 32}), "job-contract",
            VerificationError, "job spec names another contract")


def test_expired_job(world):
    refused(decide(world, QUERY_JOB, query_rules, now=datetime.now(timezone.utc) + timedelta(hours=2)),
            "job-expired", PolicyViolation, "the job spec expired")


def test_contract_outside_its_window(world):
    later = datetime.now(timezone.utc) + timedelta(days=1)
    refused(decide(world, QUERY_JOB, query_rules, contract_changes={"valid_from": format_time(later)},
                   job_changes={"expires_at": format_time(later + timedelta(days=2))}),
            "contract-window", PolicyViolation, "the contract is not valid before")


def test_job_names_another_coordinator(world):
    refused(decide(world, QUERY_JOB, query_rules, job_changes={"coordinator": "mallory"}), "job-coordinator",
            PolicyViolation, "job names coordinator mallory but the contract names coord-1")


def test_job_names_other_participants(world):
    refused(decide(world, QUERY_JOB, query_rules, job_changes={"participants": ("node-a",)}), "job-participants",
            PolicyViolation, "participants must be exactly the contract's owners: node-a, node-b")


def test_job_names_another_dataset(world):
    refused(decide(world, QUERY_JOB, query_rules, job_changes={"dataset": "claims"}), "job-dataset",
            PolicyViolation, "job asks for dataset claims but the contract sells loans")


def test_a_job_of_another_kind(world):
    refused(decide(world, VerticalJob("phone_key"), query_rules), "kind", InvalidInput,
            "job kind 'psi' sent to the query endpoint")


def test_reused_job_id_or_nonce(world):
    refused(decide(world, QUERY_JOB, query_rules, ledger=LedgerView(reused="nonce")), "job-reused", ReplayError,
            "nonce already used by another job")
    refused(decide(world, QUERY_JOB, query_rules, ledger=LedgerView(reused="job-id")), "job-reused", ReplayError,
            "job id already used for a different job")


# -- queries -----------------------------------------------------------------------------------------------------
def test_a_query_is_admitted_with_its_exact_spend(world):
    exact = decide(world, QUERY_JOB, query_rules)
    assert isinstance(exact, Admission) and exact.spend == Spend("exact", Decimal(0)) and not exact.replay
    assert [o.column for o in exact.plan.outputs] == ["region", None]
    dp = decide(world, QUERY_JOB, query_rules, rules=Rules(QUERY, 30, None, PRIVACY))
    assert isinstance(dp, Admission) and dp.spend == Spend("discrete-laplace", Decimal("0.5"))
    again = decide(world, QUERY_JOB, query_rules, ledger=LedgerView(attested=True, debited=True, jobs=3))
    assert isinstance(again, Admission) and again.replay  # the recorded release, even past the cap


def test_contract_sells_no_queries(world):
    refused(decide(world, QUERY_JOB, query_rules, rules=Rules(None, 30, TRAINING)), "no-queries", PolicyViolation,
            "this contract sells no queries")


def test_sql_outside_the_query_rules(world):
    refused(decide(world, QueryPayload("SELECT AVG(income) FROM loans", HE), query_rules), "query-sql",
            PolicyViolation, "AVG")


def test_unsupported_he_parameters(world):
    refused(decide(world, QueryPayload(SQL, replace(HE, poly_modulus_degree=4096)), query_rules), "he-params",
            InvalidInput, "HE parameters not supported")


def test_more_owners_than_the_limbs_carry(world, monkeypatch):
    # the contract has two owners; with a limit of one, their limb sums could wrap
    monkeypatch.setattr("fedtrust.query.layout.MAX_PARTIES", 1)
    refused(decide(world, QUERY_JOB, query_rules), "query-parties", PolicyViolation,
            "a query adds at most 1 owners' releases without wrapping, and this contract has 2")


def test_query_cap(world):
    refused(decide(world, QUERY_JOB, query_rules, ledger=LedgerView(jobs=3)), "query-cap", BudgetExhausted,
            "query cap reached: this contract allows 3 query jobs")


def test_epsilon_budget(world):
    spent = (Spend("discrete-laplace", Decimal("0.5")), Spend("discrete-laplace", Decimal("0.5")))
    refused(decide(world, QUERY_JOB, query_rules, rules=Rules(QUERY, 30, None, PRIVACY),
                   ledger=LedgerView(jobs=2, spends=spent)), "budget", BudgetExhausted, "privacy budget exhausted")


# -- training ----------------------------------------------------------------------------------------------------
TRAIN = partial(training_rules, approved=frozenset({"approved-app"}))


def test_a_training_job_is_admitted_with_its_exact_spend(world):
    plain = decide(world, make_spec(), TRAIN)
    assert isinstance(plain, Admission) and plain.spend == Spend("masked-sgd", Decimal(0))
    dp = decide(world, make_spec(evaluate=False), partial(TRAIN, dp_plan=lambda: DP),
                rules=Rules(None, 30, TRAINING, PRIVACY))
    assert isinstance(dp, Admission) and dp.spend == Spend("dp-sgd", Decimal("0.75"), Decimal("1e-6"))
    resumed = decide(world, make_spec(), TRAIN, ledger=LedgerView(debited=True, jobs=2))
    assert isinstance(resumed, Admission) and resumed.resume  # debited at its first round, past the cap now


def test_training_spec_outside_the_training_rules(world):
    refused(decide(world, make_spec(rounds=11), TRAIN), "training-rules", PolicyViolation,
            "11 rounds exceed the contract's [training] max_rounds of 10")


def test_model_neither_registry_nor_approved(world):
    rules = Rules(QUERY, 30, replace(TRAINING, models=("logreg", "stranger")))
    spec = make_spec(model="stranger", model_options={"architecture": "logreg"})
    refused(decide(world, spec, TRAIN, rules=rules), "app-approved", PolicyViolation,
            "model stranger is neither a registry model nor a ClientApp this node approved")


def test_finished_training_job(world):
    refused(decide(world, make_spec(), TRAIN, ledger=LedgerView(attested=True, debited=True)), "finished",
            PolicyViolation, "this training job is finished (attested) at this node")


def test_training_cap(world):
    refused(decide(world, make_spec(), TRAIN, ledger=LedgerView(jobs=2)), "training-cap", BudgetExhausted,
            "training job cap reached: this contract allows 2 training jobs")


def test_no_dp_sgd_plan_fits(world):
    def no_plan():
        raise PolicyViolation("no DP-SGD plan reaches ε ≤ 0.8 with these numbers")

    refused(decide(world, make_spec(evaluate=False), partial(TRAIN, dp_plan=no_plan), rules=Rules(None, 30, TRAINING, PRIVACY)),
            "dp-plan", PolicyViolation, "no DP-SGD plan")


def test_delta_budget(world):
    """ε is left, δ is not: the accountant composes both."""
    spent = tuple(Spend("dp-sgd", Decimal("0.01"), Decimal("1e-6")) for _ in range(10))
    refused(decide(world, make_spec(evaluate=False), partial(TRAIN, dp_plan=lambda: DP), rules=Rules(None, 30, TRAINING, PRIVACY),
                   ledger=LedgerView(jobs=1, spends=spent)), "budget", BudgetExhausted, "δ")


# -- PSI ---------------------------------------------------------------------------------------------------------
PSI_RULES = Rules(None, 30, None, None, VERTICAL)


def test_a_psi_job_is_admitted(world):
    d = decide(world, VerticalJob("phone_key"), psi_rules, rules=PSI_RULES)
    assert isinstance(d, Admission) and d.spend == Spend("exact", Decimal(0))
    retry = decide(world, VerticalJob("phone_key"), partial(psi_rules, finished_ok=True), rules=PSI_RULES,
                   ledger=LedgerView(attested=True, debited=True))
    assert isinstance(retry, Admission) and retry.replay
    live = decide(world, VerticalJob("phone_key"), partial(psi_rules, session=True), rules=PSI_RULES,
                  ledger=LedgerView(debited=True, jobs=2))
    assert isinstance(live, Admission) and live.resume


def test_psi_outside_the_vertical_rules(world):
    refused(decide(world, VerticalJob("region"), psi_rules, rules=PSI_RULES), "vertical-rules", PolicyViolation,
            "the job joins on 'region' but the contract's join key is 'phone_key'")


def test_psi_under_privacy(world):
    refused(decide(world, VerticalJob("phone_key"), psi_rules, rules=replace(PSI_RULES, privacy=PRIVACY)),
            "psi-privacy", PolicyViolation, "an exact intersection size is not differentially private")


def test_psi_without_the_key_column(world):
    schema = Schema(tuple(c for c in SCHEMA.columns if c.name != "phone_key"))
    rules = PSI_RULES
    contract = contract_of(world, rules, schema=schema)
    d = admit(job_of(contract, VerticalJob("phone_key")), contract, LedgerView(), datetime.now(timezone.utc),
              facts(contract), psi_rules)
    refused(d, "key-column", PolicyViolation, "this node's product has no join column 'phone_key'")


def test_finished_psi_job(world):
    refused(decide(world, VerticalJob("phone_key"), psi_rules, rules=PSI_RULES,
                   ledger=LedgerView(attested=True, debited=True)), "finished", PolicyViolation,
            "this PSI job is finished (attested) at this node")


def test_interrupted_psi_job(world):
    refused(decide(world, VerticalJob("phone_key"), psi_rules, rules=PSI_RULES, ledger=LedgerView(debited=True)),
            "interrupted", PolicyViolation, "its one-time secret is gone")


def test_psi_cap(world):
    refused(decide(world, VerticalJob("phone_key"), psi_rules, rules=PSI_RULES, ledger=LedgerView(jobs=2)),
            "psi-cap", BudgetExhausted, "this contract allows 2 psi jobs")


def test_mpc_aggregates_are_not_run_under_he(world):
    rules = Rules(replace(QUERY, aggregates=("COUNT", "MIN")), 30)
    refused(decide(world, QueryPayload("SELECT MIN(income) AS lo FROM loans", HE),
                   query_rules, rules=rules), "mpc-aggregate", PolicyViolation, "submit the query as an mpc-stats job")


# -- MPC ---------------------------------------------------------------------------------------------------------
MPC_JOB = MpcStatsJob("SELECT MEDIAN(income) AS m FROM loans", "b3V0cHV0LWtleQ==")
PROGRAM = SimpleNamespace(admit=lambda ctx: None)  # what the core asks of a registered MpcProgram


def _charge(*, raises: Exception | None = None, **kw):
    def charge() -> Charge:
        if raises is not None:
            raise raises
        return Charge(**{"counts_as": "query", "max_jobs": 3, **kw})
    return charge


def decide_mpc(world, *, payload=MPC_JOB, program=PROGRAM, charge=None, dealer=True, **kw):
    """An MPC job under a contract whose owners agreed to a dealer (any subject credential stands for it here)."""
    changes = {"dealer": world.contract.coordinator if dealer else None}
    return decide(world, payload, partial(mpc_rules, program=program, charge=charge or _charge()),
                  contract_changes=changes, **kw)


def test_an_mpc_job_is_admitted_with_its_programs_charge(world):
    d = decide_mpc(world)
    assert isinstance(d, Admission) and d.spend == Spend("exact", Decimal(0)) and d.plan == Charge("query", 3)
    dp = decide_mpc(world, rules=Rules(QUERY, 30, None, PRIVACY),
                    charge=_charge(mechanism="discrete-laplace", epsilon=Decimal("0.5")))
    assert isinstance(dp, Admission) and dp.spend == Spend("discrete-laplace", Decimal("0.5"))


def test_a_job_that_is_not_mpc_at_the_mpc_endpoint(world):
    refused(decide_mpc(world, payload=QUERY_JOB), "kind", InvalidInput, "job kind 'query' sent to the MPC endpoint")


def test_an_mpc_job_without_the_buyers_output_key(world):
    refused(decide_mpc(world, payload=replace(MPC_JOB, output_key=None)), "output-key", InvalidInput,
            "an MPC job names the buyer's output key")


def test_an_mpc_job_under_a_contract_without_a_dealer(world):
    refused(decide_mpc(world, dealer=False), "dealer", PolicyViolation, "this contract names no MPC dealer")


def test_an_mpc_kind_this_node_does_not_run(world):
    refused(decide_mpc(world, program=None), "mpc-program", PolicyViolation,
            "this node runs no MPC program of kind 'mpc-stats'")
    refused(decide_mpc(world, program=SimpleNamespace(admit=None)), "mpc-program", PolicyViolation,
            "MPC program 'mpc-stats' has no admission rules")


def test_an_mpc_job_outside_its_programs_rules(world):
    refused(decide_mpc(world, charge=_charge(raises=PolicyViolation("MIN and MAX are not released under [privacy]"))),
            "mpc-rules", PolicyViolation, "MIN and MAX are not released under [privacy]")


def test_a_reused_mpc_job_id_or_nonce(world):
    refused(decide_mpc(world, ledger=LedgerView(reused="nonce")), "job-reused", ReplayError,
            "nonce already used by another job")


def test_an_mpc_session_is_never_repeated(world):
    for ledger in (LedgerView(debited=True), LedgerView(debited=True, attested=True)):
        refused(decide_mpc(world, ledger=ledger), "repeated", PolicyViolation, "a session cannot be repeated")


def test_mpc_cap_of_the_kind_its_charge_counts_as(world):
    refused(decide_mpc(world, ledger=LedgerView(counted={"query": 3})), "query-cap", BudgetExhausted,
            "query cap reached: this contract allows 3 query jobs")
    assert decide_mpc(world, ledger=LedgerView(counted={"joint": 3}))  # other kinds' jobs do not count
    refused(decide_mpc(world, charge=_charge(counts_as="joint", max_jobs=1), ledger=LedgerView(counted={"joint": 1})),
            "joint-cap", BudgetExhausted, "this contract allows 1 joint jobs")
    assert decide_mpc(world, charge=_charge(max_jobs=None), ledger=LedgerView(counted={"query": 99}))


def test_mpc_epsilon_budget(world):
    spent = (Spend("discrete-laplace", Decimal("0.5")), Spend("discrete-laplace", Decimal("0.5")))
    refused(decide_mpc(world, rules=Rules(QUERY, 30, None, PRIVACY), ledger=LedgerView(spends=spent),
                       charge=_charge(mechanism="discrete-laplace", epsilon=Decimal("0.5"))),
            "budget", BudgetExhausted, "privacy budget exhausted")
