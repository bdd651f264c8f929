"""The privacy accountant: spends compose by basic composition, a charge never takes ε or δ past the budget,
and a refusal names what is left (unit tests: no daemons)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtrust.errors import BudgetExhausted, InvalidInput
from fedtrust.privacy.accounting import ACCOUNTANTS, BasicComposition, Budget, Spend, accountant

SIX = Decimal("0.000001")
amounts = st.integers(min_value=0, max_value=3_000_000).map(lambda n: n * SIX)
deltas = st.integers(min_value=0, max_value=5).map(lambda n: n * SIX)
spends = st.builds(Spend, st.sampled_from(["discrete-laplace", "dp-sgd", "exact"]), amounts, deltas)


def test_registry_names_basic_composition():
    assert accountant().name == "basic-composition" and accountant("basic-composition") is ACCOUNTANTS["basic-composition"]
    with pytest.raises(InvalidInput, match="unknown privacy accountant 'rdp'; known: basic-composition"):
        accountant("rdp")


def test_basic_composition_adds_epsilon_and_delta():
    spent = BasicComposition().spent([Spend("discrete-laplace", Decimal("0.5")), Spend("dp-sgd", Decimal("1"), SIX)])
    assert (spent.epsilon, spent.delta) == (Decimal("1.5"), SIX)


def test_refusal_names_what_is_left_of_epsilon_and_of_delta():
    acc, budget = BasicComposition(), Budget(Decimal("3"), Decimal("0.000002"))
    history = [Spend("dp-sgd", Decimal("1"), SIX)]
    with pytest.raises(BudgetExhausted, match=r"needs ε=2\.500000 but only ε=2\.000000 of ε=3\.000000 is left .* at node a"):
        acc.charge(budget, history, Spend("discrete-laplace", Decimal("2.5")), where="node a")
    with pytest.raises(BudgetExhausted, match=r"needs δ=0\.000002 but only δ=0\.000001 of δ=0\.000002 is left"):
        acc.charge(budget, history, Spend("dp-sgd", Decimal("1"), 2 * SIX), where="node a")
    assert acc.charge(budget, history, Spend("dp-sgd", Decimal("2"), SIX), where="node a").delta == 2 * SIX


def test_query_spends_no_delta_and_no_budget_caps_nothing():
    assert Spend("discrete-laplace", Decimal("1")).delta == 0
    assert BasicComposition().charge(None, [], Spend("exact", Decimal(0)), where="node a").epsilon == 0


@pytest.mark.parametrize("bad", [Decimal(-1), Decimal("NaN"), Decimal("Infinity")])
def test_spends_are_finite_and_non_negative(bad):
    with pytest.raises(InvalidInput, match="finite, non-negative"):
        Spend("dp-sgd", bad)
    with pytest.raises(InvalidInput, match="δ must be below 1"):
        Spend("dp-sgd", Decimal(0), Decimal(1))


@settings(max_examples=200, deadline=None)
@given(eps_total=amounts, delta_total=deltas, jobs=st.lists(spends, max_size=30))
def test_charging_in_any_order_never_overspends(eps_total, delta_total, jobs):
    """Whatever jobs arrive, the admitted ones stay within ε_total and δ_total, and a refused one spends nothing."""
    acc, budget, history = BasicComposition(), Budget(eps_total, delta_total), []
    for job in jobs:
        before = acc.spent(history)
        try:
            after = acc.charge(budget, history, job, where="node a")
        except BudgetExhausted:
            assert before.epsilon + job.epsilon > eps_total or before.delta + job.delta > delta_total
            assert acc.spent(history) == before
            continue
        history.append(job)
        assert after == acc.spent(history)
        assert after.epsilon <= eps_total and after.delta <= delta_total
