"""Node side: exact per-group aggregates → one vector of 32-bit limbs over the public layout.

A node computes, per group of the public domain, exact integers: the row
count and, for each numeric column of the plan, the non-null count, Σq and
(when needed) Σq² of the quantised values q (see `fedtrust.query.layout`).
`encode` writes them into the layout as limbs, so that adding every node's
vector slot by slot mod t (under encryption, with masks) gives exact limb
sums the buyer can recombine.

Small groups are *withheld*: a group in which this node has at least one but
fewer than `min_group_size` matching rows contributes nothing except its
withheld flag (1), so the buyer learns that some node held back a small group
but nothing about its rows. The same rule holds per column: in a group the
node releases, a column with at least one but fewer than `min_group_size`
non-null values contributes nothing (no non-null count, Σq or Σq²) except its
column withheld flag, so a group of many rows with one value in a column does
not release that value. Groups a node does not hold encode as zeros, the
same as a group it holds with zero rows — absence leaks nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from fedtrust.errors import InvalidInput, PolicyViolation
from fedtrust.query.layout import COUNT_LIMBS, LIMB_BITS, LIMB_MASK, LIMBS, MAX_COUNT, MAX_VALUE, Layout


@dataclass(frozen=True)
class ColumnStats:
    """Exact aggregates of one numeric column in one group (quantised values q)."""

    count_nonnull: int = 0
    sum_q: int = 0
    sumsq_q: int = 0


@dataclass(frozen=True)
class GroupStats:
    """Exact aggregates of one group on one node: row count and per-column stats."""

    rows: int
    columns: Mapping[str, ColumnStats] = field(default_factory=dict)


def _check_int(x: object, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise InvalidInput(f"{what} must be a Python int")
    if x < 0:
        raise InvalidInput(f"{what} must be non-negative (quantised values are shifted by the public minimum)")
    if x > MAX_VALUE:
        raise PolicyViolation(
            f"{what} exceeds the 128-bit encoding of the query layout; "
            "narrow the contract's column bounds or split the query"
        )
    return x


def _check_count(x: object, what: str) -> int:
    n = _check_int(x, what)
    if n > MAX_COUNT:
        raise PolicyViolation(f"{what} exceeds the 63-bit count of the query layout; split the dataset")
    return n


def _put(vec: np.ndarray, slot: int, value: int, limbs: int = LIMBS) -> None:
    for i in range(limbs):
        vec[slot + i] = (value >> (LIMB_BITS * i)) & LIMB_MASK


def encode(layout: Layout, stats: Mapping[tuple[str, ...], GroupStats], min_group_size: int) -> tuple[np.ndarray, int]:
    """Lay `stats` out over `layout`; returns (uint64 vector of length `layout.length`, groups withheld).

    Groups absent from `stats` (or with 0 rows) encode as zeros. A group with
    0 < rows < `min_group_size` is withheld: only its flag slot is 1. In a
    released group, a column with 0 < non-null count < `min_group_size` is
    withheld: only its column flag slot is 1.
    Raises `PolicyViolation` (no value in the message) when a quantity needs
    more than 128 bits, `InvalidInput` when the stats are inconsistent.
    """
    if not isinstance(min_group_size, int) or min_group_size < 1:
        raise InvalidInput("min_group_size must be an integer of at least 1")
    vec = np.zeros(layout.length, dtype=np.uint64)
    withheld = 0
    for key, gs in stats.items():
        g = layout.group_index(tuple(key))
        rows = _check_count(gs.rows, "a group's row count")
        base = layout.base(g)
        if rows == 0:
            if any(cs.count_nonnull or cs.sum_q or cs.sumsq_q for cs in gs.columns.values()):
                raise InvalidInput("a group with no rows has non-zero column aggregates; the stats are inconsistent")
            continue
        if rows < min_group_size:
            vec[base + Layout.FLAG] = 1
            withheld += 1
            continue
        _put(vec, base + Layout.ROWS, rows, COUNT_LIMBS)
        for col in layout.columns:
            cs = gs.columns.get(col.name)
            if cs is None:
                raise InvalidInput(f"stats lack column `{col.name}` that the query layout needs")
            n = _check_count(cs.count_nonnull, f"the non-null count of `{col.name}`")
            if n > rows:
                raise InvalidInput(f"the non-null count of `{col.name}` exceeds the group's row count")
            if 0 < n < min_group_size:
                vec[base + col.flag] = 1
                continue
            _put(vec, base + col.count, n, COUNT_LIMBS)
            _put(vec, base + col.sum, _check_int(cs.sum_q, f"the sum of `{col.name}`"))
            if col.sumsq is not None:
                _put(vec, base + col.sumsq, _check_int(cs.sumsq_q, f"the sum of squares of `{col.name}`"))
    return vec, withheld
