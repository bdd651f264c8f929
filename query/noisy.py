"""Differentially private releases: noisy per-group integers, signed limbs, and the buyer's decoding.

Node side (`add_noise`, `encode_signed`): every quantity of every group in
the public domain gets discrete Laplace noise at the scale of the public
`NoisePlan` (`fedtrust.privacy.dp`); a group whose separately noised row
count is below `min_group_size` is withheld (its slots carry noise only and
its flag is 1). In a released group, a column whose *noisy* non-null count
(the one it would release) is below `min_group_size` is withheld the same
way: its count, Σq and Σq² slots carry fresh noise only and its column flag
is 1. That decision is post-processing of an already-noised quantity, so it
costs no extra share of ε. Noisy values may be negative, so they are written as
two's complement limbs (96 bits for counts, 128 for sums; see
`fedtrust.query.layout`): limb sums over the participants recombine to the
total mod 2^(32·limbs), read back as a signed integer.

Buyer side (`decode_noisy`): recombine, then derive the SQL aggregates from
the noisy totals, clamped to their valid range (a count is never negative, an
average lies within the public bounds, a variance is never negative), and
give each value its standard error and a 95% interval from a parametric
bootstrap over the known noise (the sum of one discrete Laplace draw per
participant per quantity). Groups are never dropped: with DP every group of
the public domain is shown, with its noisy count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Sequence

import numpy as np

from fedtrust.errors import InvalidInput, PolicyViolation
from fedtrust.privacy.dp import NoisePlan, discrete_laplace, laplace_variance
from fedtrust.privacy.params import PLAIN_MODULUS
from fedtrust.query.decode import ResultTable
from fedtrust.query.encoding import ColumnStats, GroupStats
from fedtrust.query.layout import COUNT_LIMBS, LIMB_BITS, LIMB_MASK, LIMBS, MAX_PARTIES, VALUE_BITS, Layout, join_limbs
from fedtrust.query.sql import QueryPlan

# -- node side -----------------------------------------------------------------

@dataclass(frozen=True)
class NoisyStats:
    """A node's noisy release: every group of the domain, and what the noisy thresholds withheld."""

    groups: dict[tuple[str, ...], GroupStats]
    withheld: set[tuple[str, ...]]  # whole groups
    withheld_columns: set[tuple[tuple[str, ...], str]]  # (group, column) in released groups


def add_noise(layout: Layout, stats: Mapping[tuple[str, ...], GroupStats], noise: NoisePlan,
              min_group_size: int) -> NoisyStats:
    """Noisy stats for *every* group of the domain, and the groups and columns withheld by the noisy thresholds."""
    noisy: dict[tuple[str, ...], GroupStats] = {}
    withheld: set[tuple[str, ...]] = set()
    withheld_columns: set[tuple[tuple[str, ...], str]] = set()
    empty = GroupStats(0, {c.name: ColumnStats() for c in layout.columns})
    for key in layout.groups:
        gs = stats.get(key, empty)
        held = gs
        if noise.threshold is not None and gs.rows + discrete_laplace(noise.threshold) < min_group_size:
            withheld.add(key)
            held = empty  # release noise only
        cols = {}
        for c in layout.columns:
            cs = held.columns.get(c.name, ColumnStats())
            cn = noise.column(c.name)
            count = cs.count_nonnull + discrete_laplace(cn.nonnull)
            if noise.threshold is not None and key not in withheld and count < min_group_size:
                # too few values of this column here: withhold its quantities (the noisy count decided it:
                # post-processing, no extra ε) and release fresh noise in their slots
                withheld_columns.add((key, c.name))
                cs, count = ColumnStats(), discrete_laplace(cn.nonnull)
            cols[c.name] = ColumnStats(
                count,
                cs.sum_q + discrete_laplace(cn.sum),
                cs.sumsq_q + discrete_laplace(cn.sumsq) if cn.sumsq is not None else 0,
            )
        noisy[key] = GroupStats(held.rows + discrete_laplace(noise.rows), cols)
    return NoisyStats(noisy, withheld, withheld_columns)


def _put_signed(vec: np.ndarray, slot: int, value: int, limbs: int = LIMBS) -> None:
    bits = LIMB_BITS * limbs
    # counts (COUNT_LIMBS) keep MAX_PARTIES participants' worth of headroom; sums keep the 128-bit bound
    if limbs == LIMBS:
        bits = VALUE_BITS
    half = 1 << (bits - 1 if limbs == LIMBS else bits - 1 - (MAX_PARTIES.bit_length() - 1))
    if not -half <= value < half:
        raise PolicyViolation(f"a noisy quantity exceeds the {bits}-bit encoding; narrow the contract's column bounds")
    v = value % (1 << (LIMB_BITS * limbs))
    for i in range(limbs):
        vec[slot + i] = (v >> (LIMB_BITS * i)) & LIMB_MASK


def encode_signed(layout: Layout, noisy: NoisyStats) -> np.ndarray:
    vec = np.zeros(layout.length, dtype=np.uint64)
    for g, key in enumerate(layout.groups):
        gs = noisy.groups[key]
        base = layout.base(g)
        vec[base + Layout.FLAG] = 1 if key in noisy.withheld else 0
        _put_signed(vec, base + Layout.ROWS, gs.rows, COUNT_LIMBS)
        for c in layout.columns:
            cs = gs.columns[c.name]
            vec[base + c.flag] = 1 if (key, c.name) in noisy.withheld_columns else 0
            _put_signed(vec, base + c.count, cs.count_nonnull, COUNT_LIMBS)
            _put_signed(vec, base + c.sum, cs.sum_q)
            if c.sumsq is not None:
                _put_signed(vec, base + c.sumsq, cs.sumsq_q)
    return vec


# -- buyer side ----------------------------------------------------------------

@dataclass(frozen=True)
class NoisyResult:
    table: ResultTable
    stderr: tuple[tuple[float | None, ...], ...]  # per row, per column (None for group columns)
    ci95: tuple[tuple[tuple[float, float] | None, ...], ...]


def _signed(total: int, limbs: int = LIMBS) -> int:
    mod = 1 << (LIMB_BITS * limbs)
    v = total % mod
    return v - mod if v >= mod >> 1 else v


BOOTSTRAP = 2000


def decode_noisy(plan: QueryPlan, layout: Layout, summed: Sequence[int], noise: NoisePlan, parties: int,
                 rng: np.random.Generator | None = None) -> NoisyResult:
    if len(summed) < layout.length:
        raise InvalidInput("the aggregate is shorter than the query layout; the job's ciphertexts are incomplete")
    vals = [int(x) for x in summed[: layout.length]]
    if any(v < 0 or v >= PLAIN_MODULUS or v > MAX_PARTIES * LIMB_MASK for v in vals):
        raise InvalidInput("the aggregate does not decode: the masks did not cancel or a participant is missing")
    rng = rng or np.random.default_rng()

    def total(at: int, k: int = LIMBS) -> int:
        return _signed(join_limbs(vals[at: at + k]), k)

    def draws(observed: float, scale: Fraction | None) -> np.ndarray:
        """Plausible true values: observed minus the sum of `parties` noise draws (same law, symmetric)."""
        if scale is None:
            return np.full(BOOTSTRAP, float(observed))
        b = math.sqrt(laplace_variance(scale) / 2.0)  # continuous Laplace with the same variance
        return observed - rng.laplace(0.0, b, size=(BOOTSTRAP, parties)).sum(axis=1)

    rows, errs, cis = [], [], []
    withheld_total, withheld_groups, withheld_columns = 0, [], []
    for g, key in enumerate(layout.groups):
        base = layout.base(g)
        flag = vals[base + Layout.FLAG]
        if flag:
            withheld_total += flag
            withheld_groups.append((key, flag))
        for c in layout.columns:
            if vals[base + c.flag]:
                withheld_columns.append((key, c.name, vals[base + c.flag]))
        n_rows = total(base + Layout.ROWS, COUNT_LIMBS)
        sims: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        obs: dict[str, tuple[int, int, int | None]] = {}
        for c in layout.columns:
            cn = noise.column(c.name)
            n, s = total(base + c.count, COUNT_LIMBS), total(base + c.sum)
            ss = total(base + c.sumsq) if c.sumsq is not None else None
            obs[c.name] = (n, s, ss)
            sims[c.name] = (draws(n, cn.nonnull), draws(s, cn.sum), None if ss is None else draws(ss, cn.sumsq))
        row: list[Any] = []
        err: list[float | None] = []
        ci: list[tuple[float, float] | None] = []
        for o in plan.outputs:
            if o.kind == "group":
                row.append(key[plan.group_by.index(o.column)])
                err.append(None)
                ci.append(None)
                continue
            if o.column is None:  # COUNT(*)
                value = max(n_rows, 0)
                sim = np.maximum(draws(n_rows, noise.rows), 0.0)
            else:
                col = layout.column(o.column)
                value = _derive(o.func, col, *obs[o.column])
                sim = _derive_vec(o.func, col, *sims[o.column])
            row.append(value)
            finite = sim[np.isfinite(sim)]
            if value is None or finite.size < BOOTSTRAP // 2:
                err.append(None)
                ci.append(None)
            else:
                err.append(float(finite.std()))
                ci.append((float(np.quantile(finite, 0.025)), float(np.quantile(finite, 0.975))))
        rows.append(tuple(row))
        errs.append(tuple(err))
        cis.append(tuple(ci))
    table = ResultTable(tuple(o.name for o in plan.outputs), tuple(rows), withheld_total, tuple(withheld_groups),
                        tuple(withheld_columns))
    return NoisyResult(table, tuple(errs), tuple(cis))


def _derive(func: str | None, col, n: int, s: int, ss: int | None) -> Any:
    """One aggregate from noisy totals, clamped to its valid range (None where SQL gives NULL)."""
    if func == "COUNT":
        return max(n, 0)
    if n <= 0:
        return None
    lo, hi = Fraction(col.min), Fraction(col.max)
    mean = min(max(lo + Fraction(s, col.scale * n), lo), hi)
    if func == "SUM":
        total = mean * n
        return int(round(total)) if col.type == "int" else float(total)
    if func == "AVG":
        return float(mean)
    if n < 2 or ss is None:
        return None
    var = Fraction(n * ss - s * s, n * (n - 1) * col.scale * col.scale)
    var = min(max(var, Fraction(0)), (hi - lo) ** 2)
    return float(var) if func == "VAR_SAMP" else math.sqrt(var)


def _derive_vec(func: str | None, col, n: np.ndarray, s: np.ndarray, ss: np.ndarray | None) -> np.ndarray:
    """The same derivation over bootstrap draws (floats; for error bars only)."""
    if func == "COUNT":
        return np.maximum(n, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        valid = n > 0
        mean = np.clip(col.min + s / (col.scale * n), col.min, col.max)
        if func == "SUM":
            return np.where(valid, mean * n, np.nan)
        if func == "AVG":
            return np.where(valid, mean, np.nan)
        var = (n * ss - s * s) / (n * (n - 1) * col.scale * col.scale)
        var = np.clip(var, 0.0, (col.max - col.min) ** 2)
        var = np.where(n >= 2, var, np.nan)
        return var if func == "VAR_SAMP" else np.sqrt(var)
