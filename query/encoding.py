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
from fedtrust.query.layout import COUNT_LIMBS, LIMB_BITS, LIMB_MASK, LIMBS, MAX_COUNT, MAX_VALUE, Layout, split_limbs


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


@dataclass(frozen=True)
class GroupArrays:
    """A node's per-group aggregates as arrays (one row per group it holds), as DuckDB hands them over.

    `index` is the group's position in `layout.groups`; `counts` [G, columns]
    the non-null counts; `sums` and `sumsqs` [G, columns, LIMBS] the
    LIMB_BITS-bit limbs of Σq and Σq² (zeros where the layout needs no Σq²).
    Every entry is an int64 (limbs below 2^LIMB_BITS); `encode_arrays` checks that.
    """

    index: np.ndarray
    rows: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    sumsqs: np.ndarray

    @classmethod
    def from_stats(cls, layout: Layout, stats: Mapping[tuple[str, ...], GroupStats]) -> "GroupArrays":
        """The arrays of `stats` (one `GroupStats` per group key), every quantity checked as `encode` promises."""
        n, c = len(stats), len(layout.columns)
        out = cls(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros((n, c), np.int64),
                  np.zeros((n, c, LIMBS), np.int64), np.zeros((n, c, LIMBS), np.int64))
        for i, (key, gs) in enumerate(stats.items()):
            out.index[i] = layout.group_index(tuple(key))
            rows = out.rows[i] = _check_count(gs.rows, "a group's row count")
            if rows == 0:
                if any(cs.count_nonnull or cs.sum_q or cs.sumsq_q for cs in gs.columns.values()):
                    raise InvalidInput("a group with no rows has non-zero column aggregates; the stats are inconsistent")
                continue
            for j, col in enumerate(layout.columns):
                cs = gs.columns.get(col.name)
                if cs is None:
                    raise InvalidInput(f"stats lack column `{col.name}` that the query layout needs")
                out.counts[i, j] = _check_count(cs.count_nonnull, f"the non-null count of `{col.name}`")
                out.sums[i, j] = split_limbs(_check_int(cs.sum_q, f"the sum of `{col.name}`"))
                if col.sumsq is not None:
                    out.sumsqs[i, j] = split_limbs(_check_int(cs.sumsq_q, f"the sum of squares of `{col.name}`"))
        return out

    def to_stats(self, layout: Layout) -> dict[tuple[str, ...], GroupStats]:
        """The same aggregates as one `GroupStats` per group (exact Python integers)."""
        weights = [1 << (LIMB_BITS * i) for i in range(LIMBS)]

        def join(limbs: np.ndarray) -> int:
            return sum(int(v) * w for v, w in zip(limbs.tolist(), weights))

        out: dict[tuple[str, ...], GroupStats] = {}
        for i, g in enumerate(self.index.tolist()):
            cols = {col.name: ColumnStats(int(self.counts[i, j]), join(self.sums[i, j]),
                                          join(self.sumsqs[i, j]) if col.sumsq is not None else 0)
                    for j, col in enumerate(layout.columns)}
            out[layout.groups[g]] = GroupStats(int(self.rows[i]), cols)
        return out


def _limbs_of(counts: np.ndarray) -> np.ndarray:
    """[..., COUNT_LIMBS] limbs of non-negative int64 counts."""
    c = counts.astype(np.uint64)
    return np.stack([(c >> np.uint64(LIMB_BITS * i)) & np.uint64(LIMB_MASK) for i in range(COUNT_LIMBS)], axis=-1)


def encode(layout: Layout, stats: Mapping[tuple[str, ...], GroupStats], min_group_size: int) -> tuple[np.ndarray, int]:
    """Lay `stats` out over `layout`; returns (uint64 vector of length `layout.length`, groups withheld).

    Groups absent from `stats` (or with 0 rows) encode as zeros. A group with
    0 < rows < `min_group_size` is withheld: only its flag slot is 1. In a
    released group, a column with 0 < non-null count < `min_group_size` is
    withheld: only its column flag slot is 1.
    Raises `PolicyViolation` (no value in the message) when a quantity needs
    more than 128 bits, `InvalidInput` when the stats are inconsistent.
    """
    _check_min_group_size(min_group_size)
    return encode_arrays(layout, GroupArrays.from_stats(layout, stats), min_group_size)


def _check_min_group_size(min_group_size: object) -> None:
    if not isinstance(min_group_size, int) or isinstance(min_group_size, bool) or min_group_size < 1:
        raise InvalidInput("min_group_size must be an integer of at least 1")


def encode_arrays(layout: Layout, ga: GroupArrays, min_group_size: int) -> tuple[np.ndarray, int]:
    """`encode` over arrays: the same vector, the same rules, whole columns of groups at once."""
    _check_min_group_size(min_group_size)
    n, c = len(ga.index), len(layout.columns)
    index, rows = np.asarray(ga.index, np.int64), np.asarray(ga.rows, np.int64)
    counts, sums, sumsqs = (np.asarray(a, np.int64) for a in (ga.counts, ga.sums, ga.sumsqs))
    if rows.shape != (n,) or counts.shape != (n, c) or sums.shape != (n, c, LIMBS) or sumsqs.shape != (n, c, LIMBS):
        raise InvalidInput("the group arrays do not match the query layout")
    if n and (index.min() < 0 or index.max() >= len(layout.groups)):
        raise InvalidInput("a group key lies outside the public group domain; only domain values can be laid out")
    if len(np.unique(index)) != n:
        raise InvalidInput("a group appears twice in the stats; the stats are inconsistent")
    if (rows < 0).any() or (counts < 0).any() or (sums < 0).any() or (sumsqs < 0).any():
        raise InvalidInput("a group's aggregates must be non-negative (quantised values are shifted by the public "
                           "minimum)")
    if (sums > LIMB_MASK).any() or (sumsqs > LIMB_MASK).any():
        raise InvalidInput(f"a limb of a group's sums is not below 2^{LIMB_BITS}; the stats are inconsistent")
    empty = rows == 0
    if (counts[empty].any() or sums[empty].any() or sumsqs[empty].any()):
        raise InvalidInput("a group with no rows has non-zero column aggregates; the stats are inconsistent")
    released = rows >= min_group_size
    withheld = ~empty & ~released
    if (counts[released] > rows[released, None]).any():
        bad = layout.columns[int(np.nonzero((counts > rows[:, None]) & released[:, None])[1][0])].name
        raise InvalidInput(f"the non-null count of `{bad}` exceeds the group's row count")
    vec = np.zeros(layout.length, dtype=np.uint64)
    base = index * layout.slots_per_group
    vec[base[withheld] + Layout.FLAG] = 1
    rel = base[released]
    count_at = np.arange(COUNT_LIMBS)
    vec[rel[:, None] + Layout.ROWS + count_at] = _limbs_of(rows[released])
    limb_at = np.arange(LIMBS)
    for j, col in enumerate(layout.columns):
        cnt = counts[released, j]
        col_withheld = (cnt > 0) & (cnt < min_group_size)
        vec[rel[col_withheld] + col.flag] = 1
        keep = ~col_withheld
        at = rel[keep][:, None]
        vec[at + col.count + count_at] = _limbs_of(cnt[keep])
        vec[at + col.sum + limb_at] = sums[released, j][keep].astype(np.uint64)
        if col.sumsq is not None:
            vec[at + col.sumsq + limb_at] = sumsqs[released, j][keep].astype(np.uint64)
    return vec, int(withheld.sum())
