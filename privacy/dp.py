"""Differential privacy for aggregate queries: the discrete Laplace mechanism at each node.

**Mechanism.** Every released integer quantity gets independent discrete
Laplace noise, P(Z = z) ∝ exp(−|z|/b), drawn *exactly* with the rejection
sampler of Canonne, Kamath and Steinke ("The Discrete Gaussian for
Differential Privacy", NeurIPS 2020, Algorithm 2) using only integer and
rational arithmetic and `secrets` (the OS CSPRNG): no floating point, so no
Mironov-style leakage through rounding, and no user-chosen seed. It fits the
exact integer (limb) encoding, gives pure ε-DP (δ = 0 per query), and
composes by addition, which is how the node's ledger counts.

**Neighbouring datasets.** Record-level: a node's dataset with one row added
or removed. A row falls in at most one group (after WHERE), so only that
group's quantities change (parallel composition over groups), by at most:

    row count (and the noisy threshold count)   Δ = 1
    non-null count of a column                  Δ = 1
    Σq of a column                              Δ = qmax = round((max − min) · scale)
    Σq² of a column                             Δ = qmax²

because values are clipped to the public bounds and q = round((v − min)·scale)
lies in [0, qmax].

**Split of ε.** The query's ε (the contract's `epsilon_per_query`) is split
equally over the k quantities a group releases: the threshold count (when
`min_group_size` > 1), the row count, and per aggregated column its non-null
count, Σq and (only for VAR/STDDEV) Σq². Each gets ε/k, so its scale is
b = Δ·k/ε; by basic composition within a group the release is ε-DP.

**Withholding.** A node compares a *separately noised* row count (its own
ε/k share) with `min_group_size`; a group below it releases pure noise in
every slot and sets the withheld flag (post-processing of that noisy count).
The same threshold holds per column: in a released group, a column whose
noisy non-null count (the one it releases, with its own ε/k share) is below
`min_group_size` releases fresh noise in its count, Σq and Σq² slots and sets
its column flag. The decision is post-processing of that already-released
noisy count, so it needs no share of its own and the split above is
unchanged: k = [1 threshold count] + 1 row count + per column (non-null
count, Σq[, Σq²]).
Every slot of every group — withheld, empty or absent — carries noise, so the
noise pattern does not reveal which groups a node holds or withheld.

The plan is computed from public information only (contract, query plan,
schema), so the buyer derives the very same scales to show error bars.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Protocol, Sequence

from fedtrust.errors import InvalidInput


class _Slots(Protocol):
    """What `noise_plan` reads of one numeric column of a query layout (`fedtrust.query.layout.ColumnSlots`)."""

    @property
    def name(self) -> str: ...
    @property
    def min(self) -> float: ...
    @property
    def max(self) -> float: ...
    @property
    def scale(self) -> int: ...
    @property
    def sumsq(self) -> int | None: ...


class _Layout(Protocol):
    """What `noise_plan` reads of a query layout (`fedtrust.query.layout.Layout`): privacy sits below query."""

    @property
    def needs_sumsq(self) -> bool: ...
    @property
    def columns(self) -> Sequence[_Slots]: ...


# -- exact sampling (Canonne, Kamath, Steinke 2020) -----------------------------

def _bernoulli(p: Fraction) -> bool:
    return secrets.randbelow(p.denominator) < p.numerator


def _bernoulli_exp_le1(gamma: Fraction) -> bool:
    """Bernoulli(exp(−γ)) for 0 ≤ γ ≤ 1 (their Algorithm 1, first part)."""
    k = 1
    while _bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def bernoulli_exp(gamma: Fraction) -> bool:
    """Bernoulli(exp(−γ)) for γ ≥ 0, exactly."""
    if gamma < 0:
        raise ValueError("gamma must be non-negative")
    while gamma > 1:
        if not _bernoulli_exp_le1(Fraction(1)):
            return False
        gamma -= 1
    return _bernoulli_exp_le1(gamma)


def discrete_laplace(scale: Fraction) -> int:
    """One exact draw of discrete Laplace noise with P(z) ∝ exp(−|z|/scale)."""
    if scale <= 0:
        raise ValueError("scale must be positive")
    s, t = scale.denominator, scale.numerator  # scale = t/s
    while True:
        u = secrets.randbelow(t)
        if not bernoulli_exp(Fraction(u, t)):
            continue
        v = 0
        while bernoulli_exp(Fraction(1)):
            v += 1
        y = (u + t * v) // s
        negative = _bernoulli(Fraction(1, 2))
        if negative and y == 0:
            continue
        return -y if negative else y


def laplace_variance(scale: Fraction) -> float:
    """Variance of discrete Laplace with this scale: 2·e^{-1/b} / (1 − e^{-1/b})²."""
    x = 1.0 / float(scale)
    return 2.0 * math.exp(-x) / math.expm1(-x) ** 2  # expm1: exact for huge scales (≈ 2b²)


# -- the public noise plan of one query ----------------------------------------

@dataclass(frozen=True)
class ColumnNoise:
    name: str
    qmax: int
    nonnull: Fraction  # discrete Laplace scales
    sum: Fraction
    sumsq: Fraction | None


@dataclass(frozen=True)
class NoisePlan:
    epsilon: Decimal  # ε of the whole query at one node
    shares: int  # quantities per group that split ε
    threshold: Fraction | None  # scale of the threshold count (None: min_group_size is 1)
    rows: Fraction
    columns: tuple[ColumnNoise, ...]

    def column(self, name: str) -> ColumnNoise:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        """Scales as strings (exact rationals), for result files and display."""
        return {
            "mechanism": "discrete-laplace",
            "epsilon": str(self.epsilon),
            "epsilon_each": str(Fraction(self.epsilon) / self.shares),
            "threshold_scale": None if self.threshold is None else str(self.threshold),
            "rows_scale": str(self.rows),
            "columns": {c.name: {"nonnull_scale": str(c.nonnull), "sum_scale": str(c.sum),
                                 "sumsq_scale": None if c.sumsq is None else str(c.sumsq)} for c in self.columns},
        }


def noise_plan(layout: _Layout, epsilon: Decimal, min_group_size: int) -> NoisePlan:
    """Scales b = Δ·k/ε for every quantity of the layout, from public information only."""
    if not isinstance(epsilon, Decimal) or not epsilon.is_finite() or epsilon <= 0:
        raise InvalidInput("ε per query must be a positive decimal")
    threshold = min_group_size > 1
    per_col = 3 if layout.needs_sumsq else 2
    shares = (1 if threshold else 0) + 1 + per_col * len(layout.columns)
    each = Fraction(epsilon) / shares

    def scale(delta: int) -> Fraction:
        return Fraction(delta) / each

    cols = []
    for c in layout.columns:
        qmax = round((Fraction(c.max) - Fraction(c.min)) * c.scale)
        cols.append(ColumnNoise(c.name, qmax, scale(1), scale(max(qmax, 1)),
                                scale(max(qmax, 1) ** 2) if c.sumsq is not None else None))
    return NoisePlan(epsilon, shares, scale(1) if threshold else None, scale(1), tuple(cols))
