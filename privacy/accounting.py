"""Privacy accounting: what a job spends, what a contract grants, and how spends compose.

A node's ledger records one `Spend(mechanism, epsilon, delta)` per job it ran
for a contract; the contract's `[privacy]` rules grant a `Budget` per owner:
`epsilon_total` and `delta`, both *totals* over every job of the contract
(query jobs spend δ = 0; DP-SGD jobs the δ of their plan). An `Accountant`
composes the history and decides whether one more spend fits; the node store
calls it inside the transaction that debits the job, so a refused job spends
nothing and two racing jobs cannot both take the last of the budget.

Accountants are registered by name (`ACCOUNTANTS`, `accountant(name)`); the
name is what attestations and the ledger record. The first is basic
(sequential) composition: Σε ≤ ε_total and Σδ ≤ δ_total, exact in Decimal.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Iterable, Mapping, Protocol

from fedtrust.errors import BudgetExhausted, InvalidInput

_SIX = Decimal("0.000001")

__all__ = ["Spend", "Budget", "Spent", "Accountant", "BasicComposition", "ACCOUNTANTS", "DEFAULT_ACCOUNTANT",
           "accountant", "fmt_privacy"]


def fmt_privacy(x: Decimal) -> str:
    """A privacy parameter the way ledgers and messages show it: six places, half-even (as `trust.receipts.fmt_eps`)."""
    return str(x.quantize(_SIX, rounding=ROUND_HALF_EVEN))


def _check(value: Decimal, what: str) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise InvalidInput(f"{what} must be a finite, non-negative decimal")
    return value


@dataclass(frozen=True)
class Spend:
    """The privacy one job spends at one node (mechanism: "none", "discrete-laplace", "dp-sgd", …)."""

    mechanism: str
    epsilon: Decimal
    delta: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        _check(self.epsilon, "a spend's ε")
        _check(self.delta, "a spend's δ")
        if self.delta >= 1:
            raise InvalidInput("a spend's δ must be below 1")


@dataclass(frozen=True)
class Budget:
    """What a contract grants each owner over all its jobs (`[privacy] epsilon_total` and `delta`)."""

    epsilon: Decimal
    delta: Decimal

    def __post_init__(self) -> None:
        _check(self.epsilon, "a budget's ε")
        _check(self.delta, "a budget's δ")


@dataclass(frozen=True)
class Spent:
    """The composed spend of a history: the (ε, δ) guarantee it adds up to."""

    epsilon: Decimal
    delta: Decimal


class Accountant(Protocol):
    """Composes spends. `charge` returns the composed spend with `new` added, or raises BudgetExhausted naming
    what is left (and spends nothing: the caller's transaction rolls back)."""

    @property
    def name(self) -> str: ...

    def spent(self, history: Iterable[Spend]) -> Spent: ...

    def charge(self, budget: Budget | None, history: Iterable[Spend], new: Spend, *, where: str) -> Spent: ...


@dataclass(frozen=True)
class BasicComposition:
    """Sequential composition: ε and δ add up (Dwork & Roth, Theorem 3.16); exact in Decimal."""

    name: str = "basic-composition"

    def spent(self, history: Iterable[Spend]) -> Spent:
        eps = delta = Decimal(0)
        for s in history:
            eps += s.epsilon
            delta += s.delta
        return Spent(eps, delta)

    def charge(self, budget: Budget | None, history: Iterable[Spend], new: Spend, *, where: str) -> Spent:
        before = self.spent(history)
        after = Spent(before.epsilon + new.epsilon, before.delta + new.delta)
        if budget is None:  # no [privacy]: exact aggregates, nothing to cap
            return after
        if after.epsilon > budget.epsilon:
            left = max(budget.epsilon - before.epsilon, Decimal(0))
            raise BudgetExhausted(
                f"privacy budget exhausted: this job needs ε={fmt_privacy(new.epsilon)} but only "
                f"ε={fmt_privacy(left)} of ε={fmt_privacy(budget.epsilon)} is left for this contract at {where}; "
                "ask the exchange for a new contract")
        if after.delta > budget.delta:
            left = max(budget.delta - before.delta, Decimal(0))
            raise BudgetExhausted(
                f"privacy budget exhausted: this job needs δ={fmt_privacy(new.delta)} but only "
                f"δ={fmt_privacy(left)} of δ={fmt_privacy(budget.delta)} is left for this contract at {where} "
                "(the contract's delta is a total over all its jobs); ask the exchange for a new contract")
        return after


#: accountants by the name attestations and the ledger record
ACCOUNTANTS: Mapping[str, Accountant] = {a.name: a for a in (BasicComposition(),)}
DEFAULT_ACCOUNTANT = "basic-composition"


def accountant(name: str = DEFAULT_ACCOUNTANT) -> Accountant:
    try:
        return ACCOUNTANTS[name]
    except KeyError:
        raise InvalidInput(f"unknown privacy accountant {name!r}; known: {', '.join(sorted(ACCOUNTANTS))}") from None
