"""Public slot layout of a secure aggregate query.

Every node turns its per-group aggregates into one vector of small
non-negative integers; the vectors are added slot by slot (under BFV
encryption, with pairwise masks) and only the sum is ever decrypted. For that
sum to mean anything, every node must put the same quantity of the same group
in the same slot. The layout is therefore derived **only from public
information** — the checked query plan and the public schema (category
domains, numeric bounds) — never from a node's data:

* groups are the cartesian product of the GROUP BY columns' public `values`
  (columns in plan order, which is schema order; values in the order the
  schema lists them), or a single group `()` without GROUP BY. A node lays out
  every group of the domain, present in its data or not, so the shape of what
  it releases says nothing about which groups it holds;
* per group, in this order: 1 *withheld flag* slot (1 when the node withheld
  this group because it had fewer than `min_group_size` matching rows), then
  `COUNT_LIMBS` limbs of the row count, then for each numeric column the plan
  aggregates (schema order): `COUNT_LIMBS` limbs of its non-null count,
  `LIMBS` limbs of Σq, only when VAR_SAMP / STDDEV_SAMP is asked `LIMBS`
  limbs of Σq², and 1 *column withheld flag* slot (1 when the node withheld
  this column's quantities in this group because fewer than `min_group_size`
  of its matching rows have a value in it).

Fixed-point quantisation (public): a value v of a numeric column becomes
``q = round((clip(v, min, max) - min) * scale)`` with round half away from
zero, ``scale = 1`` for `int` columns (q is exact) and ``scale = 10**6`` for
`float` columns (values are kept to 6 decimal places; the clipped value minus
`min` is computed in IEEE double, so it is exact while
``(max - min) * 10**6 < 2**53``, i.e. for ranges under about 9·10^9). The
shift by the public minimum makes every q non-negative; decoding adds
``min × count`` back.

Limbs: each encoded quantity (row count, non-null count, Σq, Σq²) is an
unsigned integer below 2^128 (Σq² over millions of rows near the bounds needs
far more than the 59 bits of the BFV plaintext modulus t), split into
``LIMBS = 3`` limbs of 43 bits (129 bits), least significant first. Slots are
added mod t ≈ 2^59; a limb is below 2^43, so the slot sums of up to
``MAX_PARTIES = 2^15`` participants stay below t (2^15 · 2^43 = 2^58) and never
wrap: the buyer recombines the limb sums with Python integers (carries
included) and gets the exact total. The limb width is the public trade-off
between participants and slots: 32-bit limbs allowed 2^26 participants but
took 4 limbs per sum; 43-bit limbs allow 32,768 participants (no contract comes
near) and take 3.

Counts need fewer limbs, by a public bound: a node's row count and non-null
counts are below ``2^63`` (DuckDB counts in BIGINT; `encode` refuses more), so
even a noisy count (`fedtrust.query.noisy`, two's complement) summed over
``MAX_PARTIES`` participants stays within ±2^78 < 2^85, and ``COUNT_LIMBS = 2``
limbs (86 bits) carry it exactly. A group of COUNT(*) and AVG(c) thus takes 9
slots (it took 12 with 32-bit limbs), so 10,000 such groups take 11 ciphertexts
instead of 15: every ciphertext costs each node an encryption, its bytes on the
wire and in the fsynced ledger row, and the buyer an addition and a decryption.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedtrust.errors import InvalidInput
from fedtrust.privacy.params import PLAIN_MODULUS, SLOTS
from fedtrust.trust.schema import Column, Schema

if TYPE_CHECKING:  # pragma: no cover
    from fedtrust.query.sql import QueryPlan

LIMB_BITS = 43
LIMBS = 3
#: what a quantity may need: 128 bits (the limbs carry 129)
VALUE_BITS = 128
LIMB_MASK = (1 << LIMB_BITS) - 1
MAX_VALUE = (1 << VALUE_BITS) - 1
#: limbs of a row count or non-null count (public bound: below 2^63 per node; see the module docstring)
COUNT_LIMBS = 2
COUNT_BITS = 63
MAX_COUNT = (1 << COUNT_BITS) - 1
#: most participants whose limb sums are guaranteed not to wrap mod t
MAX_PARTIES = 1 << 15
#: at most 16 BFV ciphertexts of 8192 slots per release
MAX_SLOTS = 16 * SLOTS
#: fixed-point scale of float columns (6 decimal places); int columns use 1
FLOAT_SCALE = 10**6

assert LIMB_BITS * LIMBS >= VALUE_BITS
# The whole encoding relies on this: Σ over MAX_PARTIES of limbs < t (no wrap).
assert MAX_PARTIES * LIMB_MASK < PLAIN_MODULUS, "limb sums of MAX_PARTIES participants would wrap mod t"
# ... and on the withheld flags (each 0 or 1) not wrapping either.
assert MAX_PARTIES < PLAIN_MODULUS
# ... and on a signed count summed over MAX_PARTIES participants fitting COUNT_LIMBS limbs.
assert (MAX_PARTIES << COUNT_BITS) < 1 << (LIMB_BITS * COUNT_LIMBS - 1)


def slots_per_group(n_columns: int, needs_sumsq: bool) -> int:
    """Slots one group takes: flag + row count + (count, Σq[, Σq²], column flag) per column."""
    return 1 + COUNT_LIMBS + n_columns * (COUNT_LIMBS + LIMBS * (2 if needs_sumsq else 1) + 1)


def scale_of(column: Column) -> int:
    """Public fixed-point scale of a numeric column."""
    if column.type == "int":
        return 1
    if column.type == "float":
        return FLOAT_SCALE
    raise InvalidInput(f"column `{column.name}` is a category and has no numeric scale")


def quantize(value: float | int | None, column: Column) -> int | None:
    """Python reference of the q a node computes in SQL (None for NULL).

    ``round((clip(v, min, max) - min) * scale)``, half away from zero, in IEEE
    double like DuckDB (int columns: exact integer arithmetic).
    """
    if value is None:
        return None
    assert column.min is not None and column.max is not None
    if column.type == "int":
        lo, hi = int(column.min), int(column.max)
        return min(max(int(value), lo), hi) - lo
    v = float(value)
    if math.isnan(v):  # DuckDB orders NaN above everything: it clips to max
        v = float(column.max)
    x = (min(max(v, float(column.min)), float(column.max)) - float(column.min)) * FLOAT_SCALE
    f = math.floor(x)
    return int(f) + (1 if x - f >= 0.5 else 0)


@dataclass(frozen=True)
class ColumnSlots:
    """Where one numeric column's quantities sit inside a group (offsets from the group start)."""

    name: str
    type: str
    min: float
    max: float
    scale: int
    count: int  # first limb of the non-null count (COUNT_LIMBS limbs)
    sum: int  # first limb of Σq
    sumsq: int | None  # first limb of Σq², None when not needed
    flag: int  # the column's withheld flag


@dataclass(frozen=True)
class Layout:
    group_by: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]
    columns: tuple[ColumnSlots, ...]
    needs_sumsq: bool
    slots_per_group: int

    #: offsets inside a group
    FLAG = 0
    ROWS = 1

    @classmethod
    def from_plan(cls, plan: "QueryPlan", schema: Schema) -> "Layout":
        for g in plan.group_by:
            if schema.column(g).type != "category":
                raise InvalidInput(f"group column `{g}` is not a category column of the schema")
        domains = [schema.column(g).values for g in plan.group_by]
        groups = tuple(itertools.product(*domains)) if domains else ((),)
        cols: list[ColumnSlots] = []
        off = 1 + COUNT_LIMBS
        for name in plan.columns:
            c = schema.column(name)
            if not c.numeric:
                raise InvalidInput(f"column `{name}` is not numeric; only numeric columns have sums")
            assert c.min is not None and c.max is not None
            count, s = off, off + COUNT_LIMBS
            off += COUNT_LIMBS + LIMBS
            sq = None
            if plan.needs_sumsq:
                sq = off
                off += LIMBS
            flag = off
            off += 1
            cols.append(ColumnSlots(name, c.type, c.min, c.max, scale_of(c), count, s, sq, flag))
        per_group = slots_per_group(len(cols), plan.needs_sumsq)
        assert off == per_group
        layout = cls(tuple(plan.group_by), groups, tuple(cols), plan.needs_sumsq, per_group)
        if layout.length > MAX_SLOTS:
            raise InvalidInput(f"the layout needs {layout.length} slots, over the limit of {MAX_SLOTS}")
        return layout

    @property
    def length(self) -> int:
        return len(self.groups) * self.slots_per_group

    @property
    def n_ciphertexts(self) -> int:
        return -(-self.length // SLOTS)

    def column(self, name: str) -> ColumnSlots:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def group_index(self, key: tuple[str, ...]) -> int:
        try:
            return self._index[tuple(key)]
        except KeyError:
            raise InvalidInput("a group key lies outside the public group domain; only domain values can be laid out") from None

    @property
    def _index(self) -> dict[tuple[str, ...], int]:
        idx = self.__dict__.get("_index_cache")
        if idx is None:
            idx = {g: i for i, g in enumerate(self.groups)}
            object.__setattr__(self, "_index_cache", idx)
        return idx

    def base(self, group: int) -> int:
        """Absolute slot of the start (the withheld flag) of group number `group`."""
        return group * self.slots_per_group

    def flag_slot(self, group: int) -> int:
        return self.base(group) + self.FLAG

    def rows_slot(self, group: int) -> int:
        return self.base(group) + self.ROWS


def split_limbs(value: int, limbs: int = LIMBS) -> list[int]:
    """Little-endian 32-bit limbs of an integer in [0, 2^(32·limbs))."""
    return [(value >> (LIMB_BITS * i)) & LIMB_MASK for i in range(limbs)]


def join_limbs(limbs: "list[int] | tuple[int, ...]") -> int:
    """Inverse of `split_limbs`, also for limb *sums* (which may exceed 32 bits)."""
    return sum(int(v) << (LIMB_BITS * i) for i, v in enumerate(limbs))
