"""Layout, limb encoding and decoding: three nodes' vectors sum to the exact pooled answer."""
from __future__ import annotations

import csv
import math
import random
from fractions import Fraction
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtrust.errors import InvalidInput, PolicyViolation
from fedtrust.privacy.params import PLAIN_MODULUS
from fedtrust.query.dataset import Dataset
from fedtrust.query.decode import ResultTable, decode
from fedtrust.query.encoding import ColumnStats, GroupStats, encode
from fedtrust.query.layout import (
    COUNT_LIMBS,
    FLOAT_SCALE,
    LIMB_MASK,
    LIMBS,
    MAX_PARTIES,
    Layout,
    join_limbs,
    quantize,
    slots_per_group,
    split_limbs,
)
from fedtrust.query.sql import plan_query
from fedtrust.trust.rules import QueryRules
from fedtrust.trust.schema import Column, Schema

T = PLAIN_MODULUS
REGIONS = ("north", "south", "east", "west", "central")
SCHEMA = Schema(
    (
        Column("region", "category", values=REGIONS),
        Column("sex", "category", values=("f", "m")),
        Column("income", "float", 0.0, 1_000_000.0),
        Column("age", "int", 18, 100),
    )
)
RULES = QueryRules(
    aggregates=("COUNT", "SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP"),
    columns=("income", "age"),
    filters=("region", "sex", "age"),
    group_by=("region", "sex"),
    min_group_size=1,
    max_queries=1000,
)
SQL_TYPES = {"category": "VARCHAR", "float": "DOUBLE", "int": "BIGINT"}


def plan(sql: str, schema: Schema = SCHEMA, rules: QueryRules = RULES):
    return plan_query(sql, rules, schema, "loans")


def masked_sum(vectors: list[np.ndarray], rng: random.Random) -> list[int]:
    """Add the nodes' vectors mod t with masks that cancel only in the full sum."""
    length = len(vectors[0])
    masks = [[rng.randrange(T) for _ in range(length)] for _ in vectors[:-1]]
    masks.append([(-sum(col)) % T for col in zip(*masks)] if masks else [0] * length)
    total = [0] * length
    for v, m in zip(vectors, masks):
        masked = [(int(x) + r) % T for x, r in zip(v, m)]
        total = [(a + b) % T for a, b in zip(total, masked)]
    return total


def close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(b, (int, str)) and not isinstance(b, bool):
        return a == b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def assert_same(result: ResultTable, expected: list[tuple], plan_) -> None:
    gpos = [i for i, o in enumerate(plan_.outputs) if o.kind == "group"]
    assert len(result.rows) == len(expected), (result.rows, expected)
    by_key = {tuple(r[i] for i in gpos): r for r in expected}
    assert len(by_key) == len(expected)
    for row in result.rows:
        exp_row = by_key[tuple(row[i] for i in gpos)]
        for got, want, out in zip(row, exp_row, plan_.outputs):
            assert close(got, want), (out.name, got, want)
            if out.func == "SUM" and SCHEMA.column(out.column).type == "int" and want is not None:
                assert isinstance(got, int)


# ----------------------------------------------------------------------------- three nodes' files


def _write_csv(path: Path, rows: list[tuple]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["region", "sex", "income", "age"])
        for r in rows:
            w.writerow(["" if v is None else v for v in r])


def _rows(rng: np.random.Generator, n: int, extra: list[tuple]) -> list[tuple]:
    rows = []
    for _ in range(n):
        region = str(rng.choice(["north", "south"]))
        sex = str(rng.choice(["f", "m"]))
        income = None if rng.random() < 0.1 else round(float(rng.gamma(2.0, 20_000.0)), 2)
        age = None if rng.random() < 0.05 else int(rng.integers(18, 101))
        rows.append((region, sex, min(income, 999_999.99) if income is not None else None, age))
    return rows + extra


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Three parts: node 0 has 1 `east` row, node 1 ten `west` rows, node 2 three `west` rows."""
    d = tmp_path_factory.mktemp("parts")
    rng = np.random.default_rng(7)
    parts = [
        _rows(rng, 1500, [("east", "f", 51234.5, 40)]),
        _rows(rng, 2500, [("west", "m" if i % 3 else "f", 1000.0 * i + 0.25, 20 + i) for i in range(10)]),
        _rows(rng, 800, [("west", "f", 7777.77, 33), ("west", "m", None, 60), ("west", "f", 12.5, None)]),
    ]
    paths = []
    for i, rows in enumerate(parts):
        p = d / f"part{i}.csv"
        _write_csv(p, rows)
        paths.append(p)
    datasets = [Dataset.open(p, SCHEMA) for p in paths]
    con = duckdb.connect()
    cols = "{" + ", ".join(f"'{c.name}': '{SQL_TYPES[c.type]}'" for c in SCHEMA.columns) + "}"
    con.execute(
        "CREATE TABLE pooled AS "
        + " UNION ALL ".join(
            f"SELECT *, {i} AS node FROM read_csv('{p}', header=true, columns={cols})" for i, p in enumerate(paths)
        )
    )
    yield datasets, con
    for ds in datasets:
        ds.close()
    con.close()


def reference(con, sql: str, plan_, min_group_size: int) -> tuple[list[tuple], int]:
    """DuckDB over the pooled rows, minus each (node, group) a node withholds."""
    where = plan_.where_sql or "TRUE"
    gcols = [f'"{g}"' for g in plan_.group_by]
    in_domain = " AND ".join(
        [f'"{g}" IN ({", ".join(repr(v) for v in SCHEMA.column(g).values)})' for g in plan_.group_by] or ["TRUE"]
    )
    key = ", ".join(["node", *gcols])
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE withheld AS SELECT {key} FROM pooled WHERE ({where}) AND {in_domain} "
        f"GROUP BY {key} HAVING COUNT(*) < {min_group_size}"
    )
    n_withheld = con.execute("SELECT COUNT(*) FROM withheld").fetchone()[0]
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW loans AS SELECT * FROM pooled p WHERE {in_domain} AND NOT EXISTS "
        f"(SELECT 1 FROM withheld w WHERE {' AND '.join(f'w.{c} IS NOT DISTINCT FROM p.{c}' for c in ['node', *gcols])})"
    )
    return con.execute(sql).fetchall(), n_withheld


def run_federated(datasets, sql: str, min_group_size: int, seed: int = 0):
    p = plan(sql)
    layout = Layout.from_plan(p, SCHEMA)
    vectors, withheld = [], 0
    for ds in datasets:
        vec, w = encode(layout, ds.aggregate(p, layout), min_group_size)
        assert vec.dtype == np.uint64 and len(vec) == layout.length
        assert int(vec.max(initial=0)) <= LIMB_MASK
        vectors.append(vec)
        withheld += w
    result = decode(p, layout, SCHEMA, masked_sum(vectors, random.Random(seed)))
    assert result.withheld == withheld
    return p, result


QUERIES = [
    "SELECT COUNT(*) AS n, COUNT(income), SUM(income), AVG(income), VAR_SAMP(income), STDDEV_SAMP(income), "
    "SUM(age), AVG(age), VARIANCE(age), STDDEV(age) FROM loans",
    "SELECT region, COUNT(*), AVG(income), STDDEV_SAMP(income), SUM(age), VAR_SAMP(age) FROM loans GROUP BY region",
    "SELECT sex, region, COUNT(*) AS n, VAR_SAMP(age), SUM(income) FROM loans "
    "WHERE age BETWEEN 30 AND 60 AND region <> 'south' GROUP BY region, sex",
    "SELECT COUNT(*), AVG(income), SUM(age) FROM loans WHERE region IN ('north', 'east') OR NOT (age < 40)",
    "SELECT COUNT(*), SUM(income), AVG(income), VAR_SAMP(age), SUM(age) FROM loans WHERE age > 100",
    "SELECT region, sex, SUM(income), COUNT(age) FROM loans WHERE sex = 'f' GROUP BY sex, region",
]


@pytest.mark.parametrize("sql", QUERIES)
def test_three_nodes_match_duckdb_on_pooled_rows(nodes, sql):
    datasets, con = nodes
    p, result = run_federated(datasets, sql, min_group_size=1)
    expected, n_withheld = reference(con, sql, p, 1)
    assert n_withheld == 0 and result.withheld == 0
    assert result.columns == tuple(o.name for o in p.outputs)
    assert_same(result, expected, p)
    if p.group_by:
        # rows come in public domain order; empty groups (`central`) are left out
        idx = [i for i, o in enumerate(p.outputs) if o.kind == "group"]
        assert all("central" not in [r[i] for i in idx] for r in result.rows)


def test_single_row_group_has_null_variance(nodes):
    datasets, _ = nodes
    _, result = run_federated(datasets, "SELECT region, COUNT(*), VAR_SAMP(income), STDDEV(age), AVG(age) FROM loans GROUP BY region", 1)
    east = [r for r in result.rows if r[0] == "east"]
    assert east == [("east", 1, None, None, 40.0)]
    assert [r[0] for r in result.rows] == ["north", "south", "east", "west"]  # domain order


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT region, COUNT(*), AVG(income), SUM(age) FROM loans GROUP BY region",
        "SELECT region, sex, COUNT(*), STDDEV_SAMP(income) FROM loans WHERE age < 90 GROUP BY region, sex",
        "SELECT COUNT(*), AVG(income) FROM loans WHERE region = 'west'",
    ],
)
def test_small_groups_are_withheld(nodes, sql):
    datasets, con = nodes
    p, result = run_federated(datasets, sql, min_group_size=5, seed=3)
    expected, n_withheld = reference(con, sql, p, 5)
    assert n_withheld > 0
    assert result.withheld == n_withheld
    assert sum(n for _, n in result.withheld_groups) == n_withheld
    assert_same(result, expected, p)


def test_withheld_group_reports_flags(nodes):
    datasets, _ = nodes
    _, result = run_federated(datasets, "SELECT region, COUNT(*) AS n FROM loans GROUP BY region", 5)
    # node 0's single east row and node 2's three west rows are held back
    assert result.withheld == 2
    assert result.withheld_groups == ((("east",), 1), (("west",), 1))
    rows = dict(result.rows)
    assert "east" not in rows  # nobody else has east: the group is empty
    assert rows["west"] == 10  # node 1's ten rows only


# ----------------------------------------------------------------------------- sums of squares at scale


def test_millions_of_rows_near_the_bound_decode_exactly():
    """3 × 5,000,000 rows of values near a float bound: Σq² ≈ 2^102 per node, exact after decoding."""
    schema = Schema((Column("x", "float", 0.0, 1_000_000.0),))
    rules = QueryRules(("COUNT", "SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP"), ("x",), (), (), 1, 10)
    p = plan_query("SELECT COUNT(*), SUM(x), AVG(x), VAR_SAMP(x), STDDEV_SAMP(x) FROM t", rules, schema, "t")
    layout = Layout.from_plan(p, schema)
    qmax = 1_000_000 * FLOAT_SCALE
    n = 5_000_000
    vectors, tot_n, tot_s, tot_ss = [], 0, 0, 0
    for k in range(3):
        # node k holds q_i = qmax - k - i·7 for i < n (values just under the bound)
        a, d = qmax - k, 7
        s = n * a - d * n * (n - 1) // 2
        ss = n * a * a - 2 * a * d * n * (n - 1) // 2 + d * d * (n - 1) * n * (2 * n - 1) // 6
        assert ss > 2**100 and ss > T  # far beyond one slot of the plaintext modulus
        stats = {(): GroupStats(n, {"x": ColumnStats(n, s, ss)})}
        vectors.append(encode(layout, stats, 1)[0])
        tot_n, tot_s, tot_ss = tot_n + n, tot_s + s, tot_ss + ss
    result = decode(p, layout, schema, masked_sum(vectors, random.Random(1)))
    var = Fraction(tot_n * tot_ss - tot_s * tot_s, tot_n * (tot_n - 1) * FLOAT_SCALE**2)
    assert result.rows == (
        (tot_n, float(Fraction(tot_s, FLOAT_SCALE)), float(Fraction(tot_s, FLOAT_SCALE * tot_n)), float(var), math.sqrt(var)),
    )
    # the naive float64 formula already loses digits at this magnitude
    naive = (float(tot_ss) - float(tot_s) ** 2 / tot_n) / (tot_n - 1) / FLOAT_SCALE**2
    assert not math.isclose(naive, float(var), rel_tol=1e-9)


def test_duckdb_over_two_million_rows_decodes_exactly(tmp_path):
    """A real DuckDB run: 3 Parquet parts, 2.1M rows, values near the bounds, vs exact Python integers."""
    schema = Schema(
        (
            Column("region", "category", values=("a", "b")),
            Column("amount", "int", 0, 4_000_000_000),
            Column("balance", "float", 0.0, 1_000_000.0),
        )
    )
    rules = QueryRules(("COUNT", "SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP"), ("amount", "balance"), (), ("region",), 1, 10)
    sql = (
        "SELECT region, COUNT(*), SUM(amount), AVG(amount), VAR_SAMP(amount), STDDEV_SAMP(amount), "
        "SUM(balance), AVG(balance), VAR_SAMP(balance) FROM t GROUP BY region"
    )
    p = plan_query(sql, rules, schema, "t")
    layout = Layout.from_plan(p, schema)
    per_node, nodes_n = 700_000, 3
    con = duckdb.connect()
    gen = (
        "SELECT CASE WHEN i % 3 = 0 THEN 'a' ELSE 'b' END AS region, "
        "4000000000 - (i * 7919) % 1000003 AS amount, "
        "CAST((i * 31) % 1999993 AS DOUBLE) * CAST(0.5 AS DOUBLE) AS balance "
        "FROM range({lo}, {hi}) r(i)"
    )
    vectors = []
    for k in range(nodes_n):
        path = tmp_path / f"part{k}.parquet"
        con.execute(f"COPY ({gen.format(lo=k * per_node, hi=(k + 1) * per_node)}) TO '{path}' (FORMAT parquet)")
        with Dataset.open(path, schema) as ds:
            vectors.append(encode(layout, ds.aggregate(p, layout), 1)[0])
    result = decode(p, layout, schema, masked_sum(vectors, random.Random(2)))

    # exact reference with Python integers (q = amount; q = balance·10^6 = ((i·31) mod 1999993)·500000)
    i = np.arange(nodes_n * per_node, dtype=np.int64)
    amount = (4_000_000_000 - (i * 7919) % 1_000_003).tolist()
    qbal = (((i * 31) % 1_999_993) * 500_000).tolist()
    is_a = (i % 3 == 0).tolist()
    expected = {}
    for region, want_a in (("a", True), ("b", False)):
        am = [x for x, f in zip(amount, is_a) if f == want_a]
        qb = [x for x, f in zip(qbal, is_a) if f == want_a]
        n = len(am)
        s, ss = sum(am), sum(x * x for x in am)
        sb, ssb = sum(qb), sum(x * x for x in qb)
        assert ss > 2**64  # Σq² of one region needs more than 64 bits
        var = Fraction(n * ss - s * s, n * (n - 1))
        expected[region] = (
            region, n, s, float(Fraction(s, n)), float(var), math.sqrt(var),
            float(Fraction(sb, FLOAT_SCALE)), float(Fraction(sb, FLOAT_SCALE * n)),
            float(Fraction(n * ssb - sb * sb, n * (n - 1) * FLOAT_SCALE**2)),
        )  # fmt: skip
    assert result.rows == (expected["a"], expected["b"])
    assert isinstance(result.rows[0][2], int)
    # and DuckDB's own (floating-point) answer agrees within 1e-6
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{tmp_path}/part*.parquet')")
    duck = {r[0]: r for r in con.execute(sql).fetchall()}
    for row in result.rows:
        assert all(close(a, b) for a, b in zip(row, duck[row[0]]))


# ----------------------------------------------------------------------------- round-trip property

PROP_SCHEMA = Schema(
    (
        Column("g", "category", values=("x", "y", "z")),
        Column("v", "float", -5.5, 1000.25),
        Column("k", "int", -3, 50),
    )
)
PROP_RULES = QueryRules(("COUNT", "SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP"), ("v", "k"), (), ("g",), 1, 10)
PROP_QUERIES = [
    "SELECT g, COUNT(*), COUNT(v), SUM(v), AVG(v), VAR_SAMP(v), STDDEV_SAMP(k), SUM(k), AVG(k) FROM t GROUP BY g",
    "SELECT COUNT(*), SUM(v), VAR_SAMP(k), STDDEV_SAMP(v), AVG(k) FROM t",
    "SELECT g, COUNT(*) FROM t GROUP BY g",
]

row_st = st.tuples(
    st.sampled_from(("x", "y", "z")),
    st.one_of(st.none(), st.floats(-20.0, 2000.0, allow_nan=False)),
    st.one_of(st.none(), st.integers(-10, 60)),
)


def _stats(rows, layout: Layout) -> dict:
    out = {}
    grouped = bool(layout.group_by)
    for key in layout.groups:
        mine = [r for r in rows if not grouped or (r[0],) == key]
        if not mine:
            continue
        cols = {}
        for c in layout.columns:
            pos = 1 if c.name == "v" else 2
            qs = [quantize(r[pos], PROP_SCHEMA.column(c.name)) for r in mine if r[pos] is not None]
            cols[c.name] = ColumnStats(len(qs), sum(qs), sum(q * q for q in qs))
        out[key] = GroupStats(len(mine), cols)
    return out


def _expected(p, layout: Layout, node_stats: list[dict], k: int):
    rows, withheld = [], 0
    for key in layout.groups:
        parts = []
        for stats in node_stats:
            gs = stats.get(key)
            if gs is None:
                continue
            if gs.rows < k:
                withheld += 1
            else:
                parts.append(gs)
        n_rows = sum(g.rows for g in parts)
        if layout.group_by and n_rows == 0:
            continue
        row = []
        for o in p.outputs:
            if o.kind == "group":
                row.append(key[0])
                continue
            if o.column is None:
                row.append(n_rows)
                continue
            c = PROP_SCHEMA.column(o.column)
            scale = 1 if c.type == "int" else FLOAT_SCALE
            # a node releases a column's quantities only where it has at least k values in that column
            kept = [g.columns[o.column] for g in parts if not 0 < g.columns[o.column].count_nonnull < k]
            n = sum(cs.count_nonnull for cs in kept)
            s = sum(cs.sum_q for cs in kept)
            ss = sum(cs.sumsq_q for cs in kept)
            lo = Fraction(c.min)
            if o.func == "COUNT":
                row.append(n)
            elif n == 0 or (o.func in ("VAR_SAMP", "STDDEV_SAMP") and n < 2):
                row.append(None)
            elif o.func == "SUM":
                total = lo * n + Fraction(s, scale)
                row.append(int(total) if c.type == "int" else float(total))
            elif o.func == "AVG":
                row.append(float(lo + Fraction(s, scale * n)))
            else:
                var = Fraction(n * ss - s * s, n * (n - 1) * scale * scale)
                row.append(float(var) if o.func == "VAR_SAMP" else math.sqrt(var))
        rows.append(tuple(row))
    return tuple(rows), withheld


@pytest.mark.parametrize("sql", PROP_QUERIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    node_rows=st.lists(st.lists(row_st, max_size=20), min_size=1, max_size=4),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**32),
)
def test_encode_sum_decode_round_trip(sql, node_rows, k, seed):
    p = plan_query(sql, PROP_RULES, PROP_SCHEMA, "t")
    layout = Layout.from_plan(p, PROP_SCHEMA)
    node_stats = [_stats(rows, layout) for rows in node_rows]
    vectors = []
    for stats in node_stats:
        vec, _ = encode(layout, stats, k)
        vectors.append(vec)
    result = decode(p, layout, PROP_SCHEMA, masked_sum(vectors, random.Random(seed)))
    rows, withheld = _expected(p, layout, node_stats, k)
    assert result.rows == rows
    assert result.withheld == withheld
    withheld_columns = {}
    for key in layout.groups:
        for stats in node_stats:
            gs = stats.get(key)
            if gs is not None and gs.rows >= k:
                for c in layout.columns:
                    if 0 < gs.columns[c.name].count_nonnull < k:
                        withheld_columns[(key, c.name)] = withheld_columns.get((key, c.name), 0) + 1
    assert {(k_, c): n for k_, c, n in result.withheld_columns} == withheld_columns
    if not p.group_by:
        assert len(result.rows) == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**128 - 1))
def test_limbs_round_trip(x):
    limbs = split_limbs(x)
    assert len(limbs) == LIMBS and all(0 <= v <= LIMB_MASK for v in limbs)
    assert join_limbs(limbs) == x


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**128 - 1), min_size=1, max_size=50))
def test_limb_sums_recombine_to_the_exact_total(xs):
    sums = [sum(col) for col in zip(*(split_limbs(x) for x in xs))]
    assert all(s < T for s in sums)
    assert join_limbs(sums) == sum(xs)  # may exceed 2^128: carries recombine exactly


# ----------------------------------------------------------------------------- layout and edge cases


def test_layout_is_public_and_fixed():
    p = plan("SELECT region, sex, COUNT(*), AVG(income), VAR_SAMP(age) FROM loans GROUP BY sex, region")
    layout = Layout.from_plan(p, SCHEMA)
    assert layout.group_by == ("region", "sex")
    assert layout.groups[:3] == (("north", "f"), ("north", "m"), ("south", "f"))
    assert len(layout.groups) == 10
    # flag, 2 limbs of rows, then per column 2 limbs of its count, 3 of Σq, 3 of Σq², its flag
    assert layout.slots_per_group == slots_per_group(2, True) == 1 + COUNT_LIMBS + 2 * (COUNT_LIMBS + 2 * LIMBS + 1) == 21
    assert layout.length == 10 * layout.slots_per_group
    income, age = layout.columns
    assert (income.name, income.count, income.sum, income.sumsq, income.flag, income.scale) == (
        "income", 3, 5, 8, 11, FLOAT_SCALE)
    assert (age.name, age.count, age.sum, age.sumsq, age.flag, age.scale) == ("age", 12, 14, 17, 20, 1)
    assert layout.flag_slot(2) == 2 * layout.slots_per_group and layout.rows_slot(2) == layout.flag_slot(2) + 1
    no_group = Layout.from_plan(plan("SELECT COUNT(*) FROM loans"), SCHEMA)
    assert no_group.groups == ((),) and no_group.length == 1 + COUNT_LIMBS and no_group.columns == ()
    assert MAX_PARTIES * LIMB_MASK < T


def test_quantize_reference():
    inc, age = SCHEMA.column("income"), SCHEMA.column("age")
    assert quantize(None, inc) is None
    assert quantize(1.5, inc) == 1_500_000
    assert quantize(-3.0, inc) == 0 and quantize(2e9, inc) == 1_000_000 * FLOAT_SCALE
    assert quantize(0.0000005, inc) == 1  # half away from zero
    assert quantize(10, age) == 0 and quantize(50, age) == 32 and quantize(500, age) == 82


def test_encode_absent_zero_and_withheld_groups():
    p = plan("SELECT region, COUNT(*), AVG(age) FROM loans GROUP BY region")
    layout = Layout.from_plan(p, SCHEMA)
    stats = {
        ("north",): GroupStats(7, {"age": ColumnStats(6, 100, 0)}),
        ("south",): GroupStats(2, {"age": ColumnStats(2, 5, 0)}),
        ("east",): GroupStats(0, {}),
    }
    vec, withheld = encode(layout, stats, 3)
    assert withheld == 1
    s = layout.slots_per_group
    north, south, rest = vec[:s], vec[s : 2 * s], vec[2 * s :]
    assert north[0] == 0 and join_limbs(north[1:1 + COUNT_LIMBS].tolist()) == 7
    assert south[0] == 1 and not south[1:].any()  # withheld: only the flag
    assert not rest.any()  # east (0 rows), west and central (absent) are zeros
    result = decode(p, layout, SCHEMA, vec.tolist())
    assert result.rows == (("north", 7, float(18 + Fraction(100, 6))),)
    assert result.withheld == 1 and result.withheld_groups == ((("south",), 1),)


def test_a_column_with_too_few_values_in_a_released_group_is_withheld():
    """12 rows in a group, one of them with an income: the group's count is released, that income is not."""
    p = plan("SELECT region, COUNT(*), COUNT(income), SUM(income), AVG(age) FROM loans GROUP BY region")
    layout = Layout.from_plan(p, SCHEMA)
    one_income = quantize(123456.78, SCHEMA.column("income"))
    stats = {("north",): GroupStats(12, {"income": ColumnStats(1, one_income, 0), "age": ColumnStats(12, 240, 0)})}
    vec, withheld = encode(layout, stats, 10)
    assert withheld == 0
    income = layout.column("income")
    assert vec[income.flag] == 1 and not vec[income.count:income.flag].any()  # nothing of that income leaves
    result = decode(p, layout, SCHEMA, vec.tolist())
    assert result.rows == (("north", 12, 0, None, float(18 + Fraction(240, 12))),)
    assert result.withheld_columns == ((("north",), "income", 1),)
    # with enough values the column is released as before
    stats[("north",)] = GroupStats(12, {"income": ColumnStats(10, 10 * one_income, 0), "age": ColumnStats(12, 240, 0)})
    result = decode(p, layout, SCHEMA, encode(layout, stats, 10)[0].tolist())
    assert result.rows[0][2] == 10 and result.withheld_columns == ()


def test_encode_overflow_is_a_policy_violation_without_value():
    p = plan("SELECT VAR_SAMP(income) FROM loans")
    layout = Layout.from_plan(p, SCHEMA)
    big = 2**128 + 12345
    with pytest.raises(PolicyViolation, match=r"exceeds the 128-bit encoding") as e:
        encode(layout, {(): GroupStats(3, {"income": ColumnStats(3, 5, big)})}, 1)
    assert str(big) not in str(e.value) and "12345" not in str(e.value)
    encode(layout, {(): GroupStats(3, {"income": ColumnStats(3, 5, 2**128 - 1)})}, 1)  # the largest that fits


@pytest.mark.parametrize(
    "stats, match",
    [
        ({("mars",): GroupStats(3, {})}, r"outside the public group domain"),
        ({("north",): GroupStats(-1, {})}, r"non-negative"),
        ({("north",): GroupStats(3, {})}, r"stats lack column `age`"),
        ({("north",): GroupStats(3, {"age": ColumnStats(4, 1, 1)})}, r"exceeds the group's row count"),
        ({("north",): GroupStats(3, {"age": ColumnStats(2, -1, 1)})}, r"non-negative"),
        ({("north",): GroupStats(0, {"age": ColumnStats(1, 1, 1)})}, r"no rows has non-zero"),
    ],
)
def test_encode_rejects_inconsistent_stats(stats, match):
    layout = Layout.from_plan(plan("SELECT region, SUM(age) FROM loans GROUP BY region"), SCHEMA)
    with pytest.raises(InvalidInput, match=match):
        encode(layout, stats, 1)


def test_decode_empty_without_group_by_gives_one_row():
    p = plan("SELECT COUNT(*), COUNT(age), SUM(age), AVG(income), STDDEV(income) FROM loans")
    layout = Layout.from_plan(p, SCHEMA)
    assert decode(p, layout, SCHEMA, [0] * layout.length).rows == ((0, 0, None, None, None),)
    g = plan("SELECT region, COUNT(*) FROM loans GROUP BY region")
    assert decode(g, Layout.from_plan(g, SCHEMA), SCHEMA, [0] * 25).rows == ()


def test_decode_refuses_garbage_and_short_vectors():
    p = plan("SELECT region, COUNT(*), AVG(income) FROM loans GROUP BY region")
    layout = Layout.from_plan(p, SCHEMA)
    rng = random.Random(5)
    with pytest.raises(InvalidInput, match=r"masks did not cancel"):
        decode(p, layout, SCHEMA, [rng.randrange(T) for _ in range(layout.length)])
    with pytest.raises(InvalidInput, match=r"masks did not cancel"):
        decode(p, layout, SCHEMA, [T] + [0] * (layout.length - 1))
    with pytest.raises(InvalidInput, match=r"has 3 slots but the query layout needs"):
        decode(p, layout, SCHEMA, [0, 0, 0])
    # padding beyond the layout (the rest of a ciphertext) is ignored
    vec, _ = encode(layout, {("west",): GroupStats(2, {"income": ColumnStats(2, 3_000_000, 0)})}, 1)
    assert decode(p, layout, SCHEMA, vec.tolist() + [0] * 100).rows == (("west", 2, 1.5),)
