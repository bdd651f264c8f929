"""Buyer side: the decrypted, summed vector → the exact pooled result table.

After decryption (the pairwise masks cancel in the full sum) every slot holds
the sum over all participants of one limb or one withheld flag. Limb sums
never wrap mod t (see `fedtrust.query.layout`), so recombining them with
Python integers gives the exact pooled row counts, non-null counts, Σq and
Σq². From these the aggregates are derived exactly with `fractions.Fraction`
and only then turned into floats:

* COUNT(*) = rows, COUNT(c) = n (non-null count);
* SUM(c) = min·n + Σq/scale (a Python int for int columns), NULL when n = 0;
* AVG(c) = min + Σq/(scale·n), NULL when n = 0;
* VAR_SAMP(c) = (n·Σq² − (Σq)²) / (n·(n−1)·scale²), NULL when n < 2;
* STDDEV_SAMP(c) = √VAR_SAMP(c).

Like SQL, a GROUP BY result leaves out groups with no rows; without GROUP BY
there is always exactly one row. Rows come in the public group-domain order.
Withheld contributions are reported, never hidden: `withheld_groups` (a node
held back a whole small group) and `withheld_columns` (a node held back one
column's quantities in a group where fewer than `min_group_size` of its rows
have a value); the values shown pool only what was released.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from fedtrust.errors import InvalidInput
from fedtrust.privacy.params import PLAIN_MODULUS
from fedtrust.query.layout import COUNT_LIMBS, LIMB_BITS, LIMB_MASK, LIMBS, MAX_PARTIES, ColumnSlots, Layout
from fedtrust.query.sql import QueryPlan
from fedtrust.trust.schema import Schema

_MAX_LIMB_SUM = MAX_PARTIES * LIMB_MASK


@dataclass(frozen=True)
class ResultTable:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    #: total (node, group) contributions withheld for being below min_group_size
    withheld: int
    #: (group key, number of nodes that withheld it), for groups with any, in domain order
    withheld_groups: tuple[tuple[tuple[str, ...], int], ...]
    #: (group key, column, number of nodes that withheld that column's quantities there), in domain order
    withheld_columns: tuple[tuple[tuple[str, ...], str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "rows": [list(r) for r in self.rows],
            "withheld": self.withheld,
            "withheld_groups": [[list(k), n] for k, n in self.withheld_groups],
            "withheld_columns": [[list(k), c, n] for k, c, n in self.withheld_columns],
        }


def _garbled() -> InvalidInput:
    return InvalidInput(
        "the aggregate does not decode: a slot is out of range, so the masks did not cancel or a "
        "participant is missing; rerun the query with every participant"
    )


@dataclass(frozen=True)
class _ColumnTotals:
    """Per group (in layout order): non-null count, Σq and Σq² (None when not laid out)."""

    n: list[int]
    s: list[int]
    ss: list[int] | None


def _joined(m: np.ndarray, at: int, k: int) -> list[int]:
    """Per group, the exact total of the `k` limb sums at offset `at` (Python ints: they may exceed 64 bits)."""
    part = m[:, at:at + k]
    if (part > _MAX_LIMB_SUM).any():
        raise _garbled()
    total = part[:, 0].astype(object)
    for i in range(1, k):
        total = total + (part[:, i].astype(object) << (LIMB_BITS * i))
    return total.tolist()


def _derive_all(func: str, col: ColumnSlots, t: _ColumnTotals, keep: Sequence[int]) -> list[Any]:
    """`_derive` for the groups in `keep`, with the same exact rationals as plain integer divisions.

    Python's int / int is correctly rounded, so ``a / b`` is ``float(Fraction(a, b))``
    bit for bit (and far cheaper with thousands of groups).
    """
    n, s, ss = t.n, t.s, t.ss
    if func == "COUNT":
        return [n[g] for g in keep]
    lo = Fraction(col.min)
    p, q, k = lo.numerator, lo.denominator, col.scale
    if func == "SUM":
        if col.type == "int":
            assert q == 1 and k == 1
            return [p * n[g] + s[g] if n[g] else None for g in keep]
        return [(p * k * n[g] + s[g] * q) / (q * k) if n[g] else None for g in keep]
    if func == "AVG":
        return [(p * k * n[g] + s[g] * q) / (q * k * n[g]) if n[g] else None for g in keep]
    if func in ("VAR_SAMP", "STDDEV_SAMP"):
        assert ss is not None, "layout lacks sums of squares"
        out: list[Any] = []
        for g in keep:
            if n[g] < 2:
                out.append(None)
                continue
            num = n[g] * ss[g] - s[g] * s[g]
            if num < 0:
                raise _garbled()
            var = num / (n[g] * (n[g] - 1) * k * k)
            out.append(var if func == "VAR_SAMP" else math.sqrt(var))
        return out
    raise InvalidInput(f"aggregate {func} cannot be decoded")


def decode(plan: QueryPlan, layout: Layout, schema: Schema, summed: Sequence[int]) -> ResultTable:
    """Turn the summed vector (each slot reduced mod t) into the result table.

    `summed` may be longer than `layout.length` (ciphertext padding); the
    tail is ignored. Raises `InvalidInput` when a slot is out of range, which
    means the masks did not cancel. Whole columns of groups are checked and
    recombined at once (numpy), so 10,000 groups decode in milliseconds.
    """
    if len(summed) < layout.length:
        raise InvalidInput(
            f"the aggregate has {len(summed)} slots but the query layout needs {layout.length}; "
            "the job's ciphertexts are incomplete"
        )
    if tuple(layout.group_by) != tuple(plan.group_by) or tuple(c.name for c in layout.columns) != tuple(plan.columns):
        raise InvalidInput("the layout was not built from this query plan")
    for name in plan.group_by:
        schema.column(name)  # the schema must know every group column

    try:
        vals = np.array([int(x) for x in summed[: layout.length]], dtype=np.int64)
    except (OverflowError, TypeError, ValueError):
        raise _garbled() from None
    if (vals < 0).any() or (vals >= PLAIN_MODULUS).any():
        raise _garbled()
    m = vals.reshape(len(layout.groups), layout.slots_per_group)

    flags = m[:, Layout.FLAG]
    if (flags > MAX_PARTIES).any():
        raise _garbled()
    n_rows = _joined(m, Layout.ROWS, COUNT_LIMBS)
    totals: dict[str, _ColumnTotals] = {}
    col_flags = []
    for col in layout.columns:
        cflag = m[:, col.flag]
        if (cflag > MAX_PARTIES).any():
            raise _garbled()
        col_flags.append(cflag)
        n = _joined(m, col.count, COUNT_LIMBS)
        if any(a > b for a, b in zip(n, n_rows)):
            raise _garbled()
        totals[col.name] = _ColumnTotals(
            n, _joined(m, col.sum, LIMBS), _joined(m, col.sumsq, LIMBS) if col.sumsq is not None else None)

    groups = layout.groups
    withheld_groups = [(groups[g], int(flags[g])) for g in np.flatnonzero(flags).tolist()]
    withheld_columns: list[tuple[tuple[str, ...], str, int]] = []
    if col_flags:
        cf = np.stack(col_flags, axis=1)
        withheld_columns = [(groups[g], layout.columns[c].name, int(cf[g, c])) for g, c in np.argwhere(cf).tolist()]
    keep = [g for g in range(len(groups)) if n_rows[g]] if plan.group_by else list(range(len(groups)))
    columns: list[list[Any]] = []
    for o in plan.outputs:
        if o.kind == "group":
            i = plan.group_by.index(o.column)
            columns.append([groups[g][i] for g in keep])
        elif o.column is None:  # COUNT(*)
            columns.append([n_rows[g] for g in keep])
        else:
            assert o.func is not None
            columns.append(_derive_all(o.func, layout.column(o.column), totals[o.column], keep))
    return ResultTable(
        columns=tuple(o.name for o in plan.outputs),
        rows=tuple(zip(*columns)) if columns else tuple(() for _ in keep),
        withheld=int(flags.sum()),
        withheld_groups=tuple(withheld_groups),
        withheld_columns=tuple(withheld_columns),
    )
