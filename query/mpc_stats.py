"""Horizontal MIN, MAX, MEDIAN and quantiles as an MPC program (job kind "mpc-stats").

`SELECT MIN(income), MAX(income), MEDIAN(age), QUANTILE_CONT(income, 0.9) FROM loans WHERE …` is planned and
checked like any query (`plan_query`: the contract must list the aggregate, the column, the filters), then:

* each owner computes, over the rows the query counts (its WHERE, the public domains), per MIN/MAX column its
  local minimum and maximum clipped to the column's public bounds and whether it has at least
  `min_group_size` values (else it withholds: the bounds stand in and its flag is 0); per MEDIAN/QUANTILE column
  a histogram of `BINS` equal bins over the public bounds (all zeros when withheld);
* in MPC, the owners compare their extrema (a tournament of secret comparisons) and add their histograms, take
  the cumulative counts, and for each fraction q find the bin where the count crosses q·(N−1) (secret
  comparisons of integers scaled by 10^4, exact); the outputs are the extrema, the index of each quantile's
  bin and "any value" flags — as shares for the buyer, who adds them;
* the buyer reports MIN/MAX exactly (fixed point, 2^-16) and each quantile as the midpoint of its bin: within
  half a bin of the true value whenever its two neighbouring order statistics share a bin (the resolution is
  (max − min) / BINS of the column's public bounds, public from the contract).

Only the answer is revealed, to the buyer: no owner's extremum, count or histogram. Under `[privacy]`, MIN and
MAX are refused (an exact extreme is one row's value, and noise on it either destroys it or does not protect
it); MEDIAN and quantiles are computed from histograms to which each owner adds discrete Laplace noise of scale
(histogram columns)/ε_per_query (one row moves one count per column by 1), debited before release like a query.
Each job counts against the contract's `max_queries`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar

import torch

from fedtrust.errors import InvalidInput, PolicyViolation, VerificationError
from fedtrust.privacy import crypten_shim
from fedtrust.privacy.dp import discrete_laplace
from fedtrust.privacy.mpc.program import Charge, MpcProgram, ProgramContext, register, share_input, share_of
from fedtrust.query.checks import check_query_receipt, check_query_spend
from fedtrust.query.sql import QUANTILE_PLACES, Output, QueryPlan, plan_query
from fedtrust.trust.canonical import Fields
from fedtrust.trust.jobs import DEFAULT_TTL, MAX_SQL_CHARS, register_payload
from fedtrust.trust.kinds import check_output_key
from fedtrust.trust.verify import KindCheck, check_horizontal

__all__ = ["KIND", "BINS", "MpcStatsJob", "StatsPlan", "stats_plan", "resolution", "PROGRAM", "MPC_STATS"]

KIND = "mpc-stats"
#: histogram bins over a column's public bounds: the resolution of MEDIAN and quantiles is (max - min) / BINS
BINS = 1024
_Q_SCALE = 10 ** QUANTILE_PLACES


@dataclass(frozen=True)
class StatsPlan:
    plan: QueryPlan
    extrema: tuple[str, ...]  # columns with MIN or MAX, schema order
    histograms: tuple[str, ...]  # columns with MEDIAN or QUANTILE, schema order
    quantiles: tuple[tuple[str, str], ...]  # (column, fraction) per MEDIAN/QUANTILE output, in SELECT order
    bounds: dict[str, tuple[float, float]]  # histogram column -> public (min, max)


def stats_plan(sql: str, contract: Any) -> StatsPlan:
    """Plan and check an mpc-stats query against the contract (PolicyViolation naming the rule)."""
    rules = contract.rules.query
    if rules is None or contract.rules.vertical is not None:
        raise PolicyViolation("this contract sells no queries (its rules have no [query] table)")
    if contract.dealer is None:
        raise PolicyViolation("this contract names no MPC dealer, so MIN, MAX, MEDIAN and quantiles cannot run; ask "
                              "the exchange for a contract with a dealer (`fedtrust exchange contract --dealer`)")
    schema = contract.owners[0].product.schema
    plan = plan_query(sql, rules, schema, contract.dataset)
    if not plan.is_mpc:
        raise PolicyViolation("an mpc-stats job computes MIN, MAX, MEDIAN or QUANTILE_CONT; submit other aggregates "
                              "as a query")
    aggs = plan.aggregates
    if contract.rules.privacy is not None and any(o.func in ("MIN", "MAX") for o in aggs):
        raise PolicyViolation("under this contract's [privacy] rules MIN and MAX are refused: an exact extreme is "
                              "one row's value, which no useful noise protects; ask for MEDIAN or QUANTILE_CONT "
                              "(noised) instead")
    order = {n: i for i, n in enumerate(schema.names)}
    ext = sorted({_column(o) for o in aggs if o.func in ("MIN", "MAX")}, key=order.__getitem__)
    hist = sorted({_column(o) for o in aggs if o.func in ("MEDIAN", "QUANTILE")}, key=order.__getitem__)
    bounds = {c: (float(schema.column(c).min), float(schema.column(c).max)) for c in hist}
    return StatsPlan(plan, tuple(ext), tuple(hist),
                     tuple((_column(o), _fraction(o)) for o in aggs if o.func in ("MEDIAN", "QUANTILE")), bounds)


def _column(o: Output) -> str:
    """The column an MPC aggregate is over (the SQL planner never lets MIN/MAX/MEDIAN/QUANTILE go without one)."""
    if o.column is None:
        raise PolicyViolation(f"{o.func} needs a column; write e.g. {o.func}(income)")
    return o.column


def _fraction(o: Output) -> str:
    if o.q is None:
        raise PolicyViolation(f"{o.func} needs its fraction; write e.g. QUANTILE_CONT(income, 0.9)")
    return o.q


@dataclass(frozen=True)
class MpcStatsJob:
    """The payload of an mpc-stats job: the SQL, and the key the buyer made for this job (owners seal their
    output shares to it). Keys in the signed job spec: "sql", "output_key"."""

    sql: str
    output_key: str

    kind: ClassVar[str] = KIND
    ttl: ClassVar[timedelta] = DEFAULT_TTL

    def to_fields(self) -> dict[str, Any]:
        return {"sql": self.sql, "output_key": self.output_key}

    @classmethod
    def from_fields(cls, f: Fields) -> MpcStatsJob:
        return cls(f.text("sql"), f.text("output_key"))

    def check_payload(self, dataset: str) -> None:
        if not self.sql.strip() or len(self.sql) > MAX_SQL_CHARS:
            raise InvalidInput(f"job spec: sql must be a non-empty query of at most {MAX_SQL_CHARS} characters")
        check_output_key(self.output_key)

    def describe(self) -> str:
        return self.sql


register_payload(MpcStatsJob.kind, MpcStatsJob.from_fields)


def _plan_of(ctx: ProgramContext) -> StatsPlan:
    return stats_plan(ctx.job.payload_as(MpcStatsJob, "the mpc-stats program").sql, ctx.contract)


def _admit(ctx: ProgramContext) -> Charge:
    _plan_of(ctx)
    rules, privacy = ctx.contract.rules.query, ctx.contract.rules.privacy
    if privacy is None:
        return Charge("query", rules.max_queries)
    return Charge("query", rules.max_queries, "discrete-laplace", privacy.epsilon_per_query)


def _local_inputs(ctx: ProgramContext) -> dict[str, torch.Tensor]:
    sp = _plan_of(ctx)
    ds = ctx.data.held.dataset
    mgs = ctx.contract.rules.query.min_group_size
    ext = torch.zeros((len(sp.extrema), 3), dtype=torch.float64)
    for i, c in enumerate(sp.extrema):
        s = ds.column_summary(c, sp.plan.where, 1)
        lo, hi = float(ds.schema.column(c).min), float(ds.schema.column(c).max)
        if s.count >= mgs:
            ext[i] = torch.tensor([s.min, s.max, 1.0], dtype=torch.float64)
        else:  # withheld: the public bounds stand in and change nobody's extremum
            ext[i] = torch.tensor([hi, lo, 0.0], dtype=torch.float64)
    hist = torch.zeros((len(sp.histograms), BINS), dtype=torch.float64)
    privacy = ctx.contract.rules.privacy
    scale = None if privacy is None else Fraction(len(sp.histograms)) / Fraction(str(privacy.epsilon_per_query))
    for i, c in enumerate(sp.histograms):
        s = ds.column_summary(c, sp.plan.where, BINS)
        counts = list(s.histogram) if s.count >= mgs else [0] * BINS
        if scale is not None:
            counts = [n + discrete_laplace(scale) for n in counts]
        hist[i] = torch.tensor(counts, dtype=torch.float64)
    return {"ext": ext, "hist": hist}


def _times(x, k: int):
    """x·k for a public integer k, on the shares (exact: no fixed-point truncation)."""
    y = x.clone()
    y._tensor.share = y._tensor.share * k
    return y


def _compute(ctx: ProgramContext, inputs: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Every secret comparison of one round in one batched `> 0` (a comparison costs a dozen rounds over the relay,
    whatever its size): the first tournament step of the extrema with the "any value" tests and every quantile's
    bin tests; later steps (three or more owners) one comparison each."""
    crypten = crypten_shim.load()
    sp = _plan_of(ctx)
    n, k, h = ctx.world_size, len(sp.extrema), len(sp.histograms)
    mine = inputs or {}
    out: dict[str, torch.Tensor] = {}
    ops: list = []  # operands compared with 0 in the first round, in this order
    if k:
        ext = [share_input(ctx, mine.get("ext") if r == ctx.rank else None, r, (k, 3)) for r in range(n)]
        flags = ext[0][:, 2]
        for p in ext[1:]:
            flags = flags + p[:, 2]
        lo, hi = ext[0][:, 0], ext[0][:, 1]
        ops.append(flags - 0.5)
        if n > 1:
            ops += [lo - ext[1][:, 0], ext[1][:, 1] - hi]
    nq = len(sp.quantiles)
    if h:
        hist = [share_input(ctx, mine.get("hist") if r == ctx.rank else None, r, (h, BINS)) for r in range(n)]
        total = hist[0]
        for p in hist[1:]:
            total = total + p
        cum = total.cumsum(1)
        for column, q in sp.quantiles:
            j = sp.histograms.index(column)
            num = int(Decimal(q) * _Q_SCALE)
            # bin i is at or below the quantile's position while cum_i <= q·(N-1): integers, so compare
            # 10^4·cum_i > num·(N-1) exactly on the shares
            ops.append(_times(cum[j], _Q_SCALE) - _times(cum[j][BINS - 1], num) + num)
        ops.append(crypten.stack([cum[sp.histograms.index(c)][BINS - 1] for c, _ in sp.quantiles]) - 0.5)
    bits = crypten.cat([o.flatten() for o in ops]) > 0
    at = 0
    if k:
        present, at = bits[at:at + k], at + k
        if n > 1:
            step, at = bits[at:at + 2 * k], at + 2 * k
            lo, hi = _take(crypten, step, lo, hi, ext[1])
        for p in ext[2:]:
            lo, hi = _take(crypten, crypten.cat([lo - p[:, 0], p[:, 1] - hi]) > 0, lo, hi, p)
        out.update(min=share_of(lo), max=share_of(hi), present=share_of(present))
    if h:
        above = bits[at:at + nq * BINS].view(nq, BINS)
        out.update(qidx=share_of(BINS - above.sum(1)), qany=share_of(bits[at + nq * BINS:]))
    return out


def _take(crypten, step, lo, hi, p):
    """One tournament step: `step` = [lo > p.lo, p.hi > hi] (bits); the new (lo, hi) in one batched product."""
    k = lo.size(0)
    moved = step * crypten.cat([p[:, 0] - lo, p[:, 1] - hi])
    return lo + moved[:k], hi + moved[k:]


def _finish(ctx: ProgramContext, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    sp = _plan_of(ctx)
    names: list[str] = []
    row: list[float | None] = []
    qi = 0
    for o in sp.plan.aggregates:
        names.append(o.name)
        if o.func in ("MIN", "MAX"):
            i = sp.extrema.index(_column(o))
            ok = round(float(outputs["present"][i])) > 0
            row.append(round(float(outputs["min" if o.func == "MIN" else "max"][i]), 4) if ok else None)
            continue
        j, qi = qi, qi + 1
        lo, hi = sp.bounds[_column(o)]
        if round(float(outputs["qany"][j])) == 0:
            row.append(None)
            continue
        b = min(max(int(round(float(outputs["qidx"][j]))), 0), BINS - 1)
        row.append(lo + (b + 0.5) * (hi - lo) / BINS)
    return {"columns": names, "rows": [row]}


def resolution(sp: StatsPlan) -> dict[str, float]:
    """The width of one histogram bin per MEDIAN/QUANTILE column: a quantile is reported at its bin's midpoint."""
    return {c: (hi - lo) / BINS for c, (lo, hi) in sp.bounds.items()}


def _check_rules(contract: Any, job: Any) -> None:
    check_horizontal(contract)
    try:
        stats_plan(job.payload_as(MpcStatsJob, "the mpc-stats verifier").sql, contract)
    except (PolicyViolation, InvalidInput) as e:
        raise VerificationError(f"the job's query breaks the contract's rules: {e}") from None


PROGRAM = register(MpcProgram(KIND, _local_inputs, _compute, _finish, admit=_admit))
#: what `exchange verify` and the buyer check of an mpc-stats job's payload
MPC_STATS = KindCheck(_check_rules, receipt=check_query_receipt, spend=check_query_spend, blocks=frozenset({"relayed"}))

