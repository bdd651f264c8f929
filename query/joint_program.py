"""Joint statistics in MPC: group indicators × values over the rows a PSI job aligned, revealed only to the buyer.

Party r (the owner of `plan.products[r]`) holds, for the N aligned rows (row i
at one owner and row i at the other are one person, the PSI's common order):

* `groups`: an N × G_r one-hot matrix over the joint domain of its group
  columns (one column of ones when it has none), each row multiplied by its
  keep flag (the row passes this owner's part of WHERE and the public-domain
  filter every query applies);
* `values`: N × 2K_r, per value column the non-null flag and the quantized
  value `round((clip(v) - min) * scale)` (0 where NULL), as horizontal
  queries quantize, at a public scale (`value_scale`): 1 for int columns, and
  for float columns the largest power of ten up to 10^6 at which the sum over
  `max_keys` rows (the contract's cap on either owner's set, so on the joined
  rows) stays below 2^52, so every output survives a float64 decode exactly.

Inside CrypTen, with integer encoding (`precision=0`: every product is exact
in the ring Z/2^64, no fixed-point truncation), both owners secret-share
their matrices; the joined group indicator is I = H_0 ⊗ H_1 row by row (one
Beaver product, N × G), and one matmul Iᵀ · [V_0 V_1] gives per joined group
the non-null count and the sum of every value column; the row count is
Σ_i I. Comparisons in MPC then set a group's keep flag (count ≥
`min_group_size`) and each column's (its non-null count ≥ `min_group_size`),
and every released quantity is multiplied by them: a withheld group's or
column's numbers are 0 in the output, so the buyer learns only that it was
withheld, never its size. The output (withheld flags, masked counts and
sums) is returned as each party's *share*; only the buyer adds the shares.

Sizes are public: N (the attested intersection size), the domains, the
columns. `check_capacity` refuses a query whose sums could not be exact.
The outputs are integers (counts, flags, sums of quantized values) shared at
scale 1; the MPC runtime reads every output as fixed point at
`program.SCALE`, so `finish` multiplies back by it (exact below 2^52).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Sequence

import numpy as np
import torch

from fedtrust.errors import InvalidInput, PolicyViolation
from fedtrust.privacy import crypten_shim
from fedtrust.query.joint_sql import JointPlan
from fedtrust.query.layout import FLOAT_SCALE
from fedtrust.trust.schema import Schema

__all__ = ["JointResult", "check_capacity", "compute_shares", "finish", "local_tensors", "output_shape",
           "party_shapes"]

#: every output stays below 2^52: exact in the ring Z/2^64 and through a float64 decode
OUTPUT_BITS = 52
#: most int64 elements of one party's indicator matrix (N × groups)
MAX_INDICATOR_ELEMENTS = 1 << 27


def _schemas(schemas: Sequence[tuple[str, Schema]]) -> dict[str, Schema]:
    return dict(schemas)


def party_shapes(plan: JointPlan, schemas: Sequence[tuple[str, Schema]], n: int) -> list[dict[str, tuple[int, int]]]:
    """The public shapes of each party's inputs, in party order."""
    s = _schemas(schemas)
    return [{"groups": (n, prod(len(s[p].column(g).values) for g in plan.groups_of(p))),
             "values": (n, 2 * len(plan.columns_of(p)))} for p in plan.products]


def output_shape(plan: JointPlan, schemas: Sequence[tuple[str, Schema]]) -> tuple[int, int]:
    shapes = party_shapes(plan, schemas, 1)
    return shapes[0]["groups"][1] * shapes[1]["groups"][1], 2 + 3 * len(plan.columns)


def value_scale(column: Any, max_rows: int) -> int:
    """The public fixed-point scale of a value column in joint statistics (see the module docstring);
    PolicyViolation when even scale 1 could overflow at `max_rows` rows."""
    assert column.min is not None and column.max is not None
    scale = FLOAT_SCALE if column.type == "float" else 1
    while True:
        if (max_rows * (int(np.ceil((column.max - column.min) * scale)) + 1)).bit_length() <= OUTPUT_BITS:
            return scale
        if scale == 1:
            raise PolicyViolation(f"the sum of `{column.name}` over up to {max_rows} joined rows (the contract's "
                                  "max_keys) could not be exact in MPC; narrow the column's bounds or max_keys")
        scale //= 10


def check_capacity(plan: JointPlan, schemas: Sequence[tuple[str, Schema]], max_rows: int, n: int) -> None:
    """Refuse (PolicyViolation) a query whose sums could not be exact at up to `max_rows` rows (the contract's
    max_keys), or too large to share at the n aligned rows."""
    s = _schemas(schemas)
    for p, c in plan.columns:
        value_scale(s[p].column(c), max_rows)
    if n > max_rows:
        raise PolicyViolation(f"{n} aligned rows exceed the contract's max_keys ({max_rows})")
    groups = output_shape(plan, schemas)[0]
    if n * groups > MAX_INDICATOR_ELEMENTS:
        raise PolicyViolation(f"{n} joined rows × {groups} groups is over the limit of {MAX_INDICATOR_ELEMENTS} "
                              "indicator cells; group by fewer or smaller columns")


def local_tensors(plan: JointPlan, product: str, dataset: Any, rows: list[int], max_rows: int) -> dict[str, torch.Tensor]:
    """This owner's secret inputs (never leave the node in clear): `dataset` is its `query.dataset.Dataset`,
    `rows` its aligned row ids in the common order, `max_rows` the contract's max_keys."""
    schema: Schema = dataset.schema
    groups = plan.groups_of(product)
    values = tuple((c, value_scale(schema.column(c), max_rows)) for c in plan.columns_of(product))
    cols = dataset.aligned_columns(rows, groups, values, plan.where_of(product))
    n = len(rows)
    sizes = [len(schema.column(g).values) for g in groups]
    index = np.zeros(n, dtype=np.int64)
    inside = cols.keep.astype(bool)
    for j, size in enumerate(sizes):
        code = cols.groups[:, j]
        inside &= code >= 0
        index = index * size + np.where(code >= 0, code, 0)
    onehot = np.zeros((n, prod(sizes)), dtype=np.int64)
    onehot[np.arange(n)[inside], index[inside]] = 1
    vals = np.empty((n, 2 * len(values)), dtype=np.int64)
    vals[:, 0::2] = cols.present
    vals[:, 1::2] = cols.values * cols.present
    return {"groups": torch.from_numpy(onehot), "values": torch.from_numpy(vals)}


def compute_shares(plan: JointPlan, schemas: Sequence[tuple[str, Schema]], rank: int, n: int, min_group_size: int,
                   inputs: dict[str, torch.Tensor] | None, *, crypten: Any = None,
                   device: Any = None) -> dict[str, torch.Tensor]:
    """Inside `crypten_shim.party(rank, 2, …)` on both owners: this party's share of the output (int64 ring
    elements). The other party's inputs are only shapes here. (`crypten`: the module to compute with; the
    benchmark passes raw CrypTen over torch.distributed to time the same program as a baseline.)"""
    crypten = crypten or crypten_shim.load()
    comm = crypten.communicator.get()
    sizes = comm.all_gather(torch.tensor([n], dtype=torch.int64))
    if any(int(s.item()) != n for s in sizes):
        raise InvalidInput("the owners' aligned rows differ in number; both must use the same PSI job's alignment "
                           "(run a new PSI job)")
    shapes = party_shapes(plan, schemas, n)
    if inputs is not None:
        for name, shape in shapes[rank].items():
            if tuple(inputs[name].shape) != shape:
                raise InvalidInput(f"this owner's `{name}` input has shape {tuple(inputs[name].shape)}, not the "
                                   f"public {shape}")

    def share(name: str, src: int):
        mine = inputs[name] if src == rank and inputs is not None else torch.zeros(shapes[src][name], dtype=torch.int64)
        if device is None:
            return crypten.cryptensor(mine, src=src, precision=0)
        return crypten.cryptensor(mine.to(device), src=src, precision=0, device=device)

    h0, h1 = share("groups", 0), share("groups", 1)
    g0, g1 = shapes[0]["groups"][1], shapes[1]["groups"][1]
    indicator = (h0.unsqueeze(2) * h1.unsqueeze(1)).reshape(n, g0 * g1)  # one Beaver product
    counts = indicator.sum(0).unsqueeze(1)  # [G, 1]
    parts = [share("values", r) for r in range(2) if shapes[r]["values"][1]]
    k = len(plan.columns)
    if parts:
        sums = indicator.t().matmul(parts[0] if len(parts) == 1 else crypten.cat(parts, dim=1))  # [G, 2K]
        present = sums[:, 0::2]
        ok = crypten.cat([counts, present], dim=1) >= min_group_size  # one comparison for all [G, 1 + K]
        keep_group = ok[:, :1]
        keep_column = ok[:, 1:] * keep_group
        mask = crypten.cat([keep_group] + [keep_column[:, j:j + 1] for j in range(k) for _ in (0, 1)], dim=1)
        released = crypten.cat([counts, sums], dim=1) * mask
        out = crypten.cat([1 - keep_group, keep_group - keep_column, released], dim=1)
    else:
        keep_group = counts >= min_group_size
        out = crypten.cat([1 - keep_group, counts * keep_group], dim=1)
    mine = out.share
    mine = mine.tensor() if hasattr(mine, "tensor") else mine  # CUDA: CrypTen's CUDALongTensor
    return {"joint": mine.to("cpu", torch.int64).clone()}


@dataclass(frozen=True)
class JointResult:
    """What the buyer sees: rows in the public group order; None where a group or a column was withheld."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    withheld_groups: int
    withheld_columns: int

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [list(r) for r in self.rows],
                "withheld_groups": self.withheld_groups, "withheld_columns": self.withheld_columns}


def finish(plan: JointPlan, schemas: Sequence[tuple[str, Schema]], total: torch.Tensor, max_rows: int) -> JointResult:
    """The buyer's table from the sum of both parties' output shares (int64, wrapping)."""
    s = _schemas(schemas)
    groups, width = output_shape(plan, schemas)
    if tuple(total.shape) != (groups, width) or total.dtype != torch.int64:
        raise InvalidInput(f"the joint output has shape {tuple(total.shape)}, not the public ({groups}, {width})")
    t = total.tolist()
    k = len(plan.columns)
    #: keyed as the outputs name them: (product, column); a group or aggregated output names both
    col_index: dict[tuple[str | None, str | None], int] = {pc: j for j, pc in enumerate(plan.columns)}
    domains = [s[p].column(c).values for p, c in plan.group_by]
    rows, withheld_groups, withheld_columns = [], 0, 0
    for g in range(groups):
        row = t[g]
        flag, col_flags, count, rest = row[0], row[1:1 + k], row[1 + k], row[2 + k:]
        if any(v not in (0, 1) for v in [flag, *col_flags]):
            raise InvalidInput("the joint output's withheld flags are not 0 or 1; the shares do not add up")
        labels, rem = [], g
        for dom in reversed(domains):
            labels.append(dom[rem % len(dom)])
            rem //= len(dom)
        labels.reverse()
        group_of: dict[tuple[str | None, str | None], str] = {pc: labels[i] for i, pc in enumerate(plan.group_by)}
        withheld_groups += flag
        withheld_columns += sum(col_flags) if not flag else 0
        out: list[Any] = []
        for o in plan.outputs:
            if o.kind == "group":
                out.append(group_of[(o.product, o.column)])
                continue
            if flag:
                out.append(None)
                continue
            if o.column is None:
                out.append(count)
                continue
            j = col_index[(o.product, o.column)]
            if col_flags[j]:
                out.append(None)
                continue
            present, qsum = rest[2 * j], rest[2 * j + 1]
            col = s[o.product or ""].column(o.column)
            assert col.min is not None
            if o.func == "COUNT":
                out.append(present)
            else:
                scale = value_scale(col, max_rows)
                total_value = (qsum / scale if scale != 1 else qsum) + present * (col.min if col.type == "float"
                                                                                  else int(col.min))
                if o.func == "SUM":
                    out.append(total_value)
                else:
                    out.append(total_value / present if present else None)
        rows.append(tuple(out))
    return JointResult(tuple(o.name for o in plan.outputs), tuple(rows), withheld_groups, withheld_columns)
