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

from fedtrust.errors import InvalidInput
from fedtrust.privacy.params import PLAIN_MODULUS
from fedtrust.query.layout import LIMB_MASK, LIMBS, MAX_PARTIES, ColumnSlots, Layout, join_limbs
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
    n: int
    s: int
    ss: int | None


def _derive(func: str, col: ColumnSlots, t: _ColumnTotals) -> Any:
    n, s = t.n, t.s
    if func == "COUNT":
        return n
    if n == 0:
        return None
    lo = Fraction(col.min)
    if func == "SUM":
        total = lo * n + Fraction(s, col.scale)
        if col.type == "int":
            assert total.denominator == 1
            return int(total)
        return float(total)
    if func == "AVG":
        return float(lo + Fraction(s, col.scale * n))
    if func in ("VAR_SAMP", "STDDEV_SAMP"):
        if n < 2:
            return None
        assert t.ss is not None, "layout lacks sums of squares"
        num = n * t.ss - s * s
        if num < 0:
            raise _garbled()
        var = Fraction(num, n * (n - 1) * col.scale * col.scale)
        return float(var) if func == "VAR_SAMP" else math.sqrt(var)
    raise InvalidInput(f"aggregate {func} cannot be decoded")


def decode(plan: QueryPlan, layout: Layout, schema: Schema, summed: Sequence[int]) -> ResultTable:
    """Turn the summed vector (each slot reduced mod t) into the result table.

    `summed` may be longer than `layout.length` (ciphertext padding); the
    tail is ignored. Raises `InvalidInput` when a slot is out of range, which
    means the masks did not cancel.
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

    vals = [int(x) for x in summed[: layout.length]]
    if any(v < 0 or v >= PLAIN_MODULUS for v in vals):
        raise _garbled()

    def limbs(at: int) -> int:
        part = vals[at : at + LIMBS]
        if any(v > _MAX_LIMB_SUM for v in part):
            raise _garbled()
        return join_limbs(part)

    aggs = [o for o in plan.outputs]
    rows: list[tuple[Any, ...]] = []
    withheld_total = 0
    withheld_groups: list[tuple[tuple[str, ...], int]] = []
    withheld_columns: list[tuple[tuple[str, ...], str, int]] = []
    for g, key in enumerate(layout.groups):
        base = layout.base(g)
        flag = vals[base + Layout.FLAG]
        if flag > MAX_PARTIES:
            raise _garbled()
        if flag:
            withheld_total += flag
            withheld_groups.append((key, flag))
        n_rows = limbs(base + Layout.ROWS)
        totals: dict[str, _ColumnTotals] = {}
        for col in layout.columns:
            cflag = vals[base + col.flag]
            if cflag > MAX_PARTIES:
                raise _garbled()
            if cflag:
                withheld_columns.append((key, col.name, cflag))
            n = limbs(base + col.count)
            if n > n_rows:
                raise _garbled()
            totals[col.name] = _ColumnTotals(
                n, limbs(base + col.sum), limbs(base + col.sumsq) if col.sumsq is not None else None
            )
        if plan.group_by and n_rows == 0:
            continue
        row: list[Any] = []
        for o in aggs:
            if o.kind == "group":
                row.append(key[plan.group_by.index(o.column)])
            elif o.column is None:  # COUNT(*)
                row.append(n_rows)
            else:
                assert o.func is not None
                row.append(_derive(o.func, layout.column(o.column), totals[o.column]))
        rows.append(tuple(row))
    return ResultTable(
        columns=tuple(o.name for o in plan.outputs),
        rows=tuple(rows),
        withheld=withheld_total,
        withheld_groups=tuple(withheld_groups),
        withheld_columns=tuple(withheld_columns),
    )
