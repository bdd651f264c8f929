"""The columns a node computes once at load (domain index, quantised value) answer exactly as the per-query SQL did.

The node's aggregate statement filters on each category's domain index (an ENUM of the public values, computed at
load) instead of `col IN (listed values)`, groups on it, and sums the quantised value computed at load. These tests
play a data owner's messy file and a buyer probing the derived columns, and check every answer against plain DuckDB
running the old per-query expressions.
"""
from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import numpy as np
import pytest

from fedtrust.config import load_node_config
from fedtrust.errors import ConfigError, PolicyViolation
from fedtrust.query.dataset import Dataset
from fedtrust.query.decode import decode
from fedtrust.query.encoding import GroupArrays, encode, encode_arrays
from fedtrust.query.layout import Layout
from fedtrust.query.sql import QueryPlan, plan_query
from fedtrust.trust.rules import QueryRules
from fedtrust.trust.schema import Column, Schema

VALUES = ("north", "", "Ünï", "a'b", "x y")
SCHEMA = Schema((Column("region", "category", values=VALUES), Column("income", "float", -50.0, 1000.0),
                 Column("age", "int", 18, 100)))
RULES = QueryRules(("COUNT", "SUM", "AVG", "VAR_SAMP"), ("income", "age"), ("region", "age"), ("region",), 1, 100)
#: values a messy file holds: case, padding, another normal form, NULL; only exact listed strings count
TRICKY = ["north", "North", "north ", " north", "Ünï", "ÜNÏ", "a'b", "x y", "x  y", "nörth", "mars", None]


def write(path: Path, rows: list[tuple]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([c.name for c in SCHEMA.columns])
        for r in rows:
            w.writerow(["" if v is None else v for v in r])
    return path


def rows_for(n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        region = TRICKY[int(rng.integers(len(TRICKY)))]
        income = None if i % 11 == 0 else round(float(rng.uniform(-100, 1100)), 6)
        age = None if i % 13 == 0 else int(rng.integers(0, 130))
        out.append((region, income, age))
    return out


def old_statement_answers(path: Path, where: str) -> dict:
    """Plain DuckDB with the per-query expressions the node used before: `IN` over the listed values, q per row."""
    listed = ", ".join("'" + v.replace("'", "''") + "'" for v in VALUES)
    q = ("CASE WHEN income IS NULL THEN NULL ELSE CAST(ROUND((LEAST(GREATEST(income, -50.0), 1000.0) + 50.0) "
         "* 1000000.0) AS HUGEINT) END")
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_csv('{path}', header=true, nullstr='', "
                "columns={'region': 'VARCHAR', 'income': 'DOUBLE', 'age': 'BIGINT'})")
    rows = con.execute(f"SELECT region, COUNT(*), COUNT(income), SUM({q}), SUM({q} * {q}) FROM t "
                       f"WHERE region IN ({listed}){where} GROUP BY region").fetchall()
    return {(r[0],): (r[1], r[2], int(r[3] or 0), int(r[4] or 0)) for r in rows}


@pytest.mark.parametrize("where", ["", " AND age > 40", " AND NOT (age BETWEEN 20 AND 60)"])
def test_domain_index_and_quantised_columns_answer_as_the_per_query_expressions(tmp_path, where):
    path = write(tmp_path / "messy.csv", rows_for(3000, 1))
    sql = f"SELECT region, COUNT(*), COUNT(income), SUM(income), VAR_SAMP(income) FROM loans WHERE 1 = 1{where} GROUP BY region"
    sql = sql.replace("WHERE 1 = 1 AND", "WHERE").replace(" WHERE 1 = 1", "")
    plan = plan_query(sql, RULES, SCHEMA, "loans")
    layout = Layout.from_plan(plan, SCHEMA)
    with Dataset.open(path, SCHEMA) as ds:
        stats = ds.aggregate(plan, layout)
        arrays = ds.aggregate_arrays(plan, layout)
        outside = ds.out_of_domain_rows()
    want = old_statement_answers(path, where)
    got = {k: (g.rows, g.columns["income"].count_nonnull, g.columns["income"].sum_q, g.columns["income"].sumsq_q)
           for k, g in stats.items()}
    assert got == want and len(want) == len(VALUES) - 1  # every listed value but "" (a NULL in the CSV)
    # what the node encodes from the arrays is what the per-group reference encodes from the same stats
    vec, withheld = encode_arrays(layout, arrays, 40)
    ref, ref_withheld = encode(layout, stats, 40)
    assert np.array_equal(vec, ref) and withheld == ref_withheld
    assert outside == sum(1 for r in rows_for(3000, 1) if r[0] not in VALUES)


def test_two_group_columns_index_the_public_product_in_plan_order(tmp_path):
    schema = Schema((Column("sex", "category", values=("f", "m")), Column("region", "category", values=("n", "s", "e")),
                     Column("age", "int", 0, 100)))
    rules = QueryRules(("COUNT", "SUM"), ("age",), (), ("sex", "region"), 1, 10)
    p = tmp_path / "two.csv"
    p.write_text("sex,region,age\n" + "".join(f"{s},{r},{a}\n" for s, r, a in
                                               [("m", "e", 7), ("m", "e", 8), ("f", "s", 1), ("m", "n", 2), ("x", "n", 9)]))
    plan = plan_query("SELECT region, sex, COUNT(*), SUM(age) FROM t GROUP BY region, sex", rules, schema, "t")
    layout = Layout.from_plan(plan, schema)
    with Dataset.open(p, schema) as ds:
        vec, _ = encode_arrays(layout, ds.aggregate_arrays(plan, layout), 1)
    got = {row[:2]: row[2:] for row in decode(plan, layout, schema, vec.tolist()).rows}
    assert got == {("e", "m"): (2, 15), ("s", "f"): (1, 1), ("n", "m"): (1, 2)}


def test_a_filter_cannot_name_a_column_computed_at_load(tmp_path):
    """A forged plan that filters on the domain index or q column is refused like any column outside the schema."""
    from sqlglot import exp

    path = write(tmp_path / "d.csv", rows_for(50, 2))
    plan = plan_query("SELECT COUNT(*) FROM loans WHERE age > 20", RULES, SCHEMA, "loans")
    layout = Layout.from_plan(plan, SCHEMA)
    with Dataset.open(path, SCHEMA) as ds:
        for name in ds.derived.names:
            forged = QueryPlan(**{**plan.__dict__, "where": exp.GT(this=exp.column(name, quoted=True),
                                                                    expression=exp.Literal.number(0))})
            with pytest.raises(PolicyViolation, match=r"not in the schema"):
                ds.aggregate_arrays(forged, layout)


def test_a_schema_column_named_like_a_computed_column_keeps_its_own_values(tmp_path):
    schema = Schema((Column("__fedtrust_d1", "int", 0, 10), Column("kind", "category", values=("a", "b"))))
    rules = QueryRules(("COUNT", "SUM"), ("__fedtrust_d1",), ("kind",), ("kind",), 1, 10)
    p = tmp_path / "clash.csv"
    p.write_text("__fedtrust_d1,kind\n3,a\n4,a\n5,b\n6,zzz\n")
    plan = plan_query('SELECT kind, SUM("__fedtrust_d1") FROM t GROUP BY kind', rules, schema, "t")
    layout = Layout.from_plan(plan, schema)
    with Dataset.open(p, schema) as ds:
        assert not set(ds.derived.names) & {c.lower() for c in schema.names}
        vec, _ = encode_arrays(layout, ds.aggregate_arrays(plan, layout), 1)
    assert decode(plan, layout, schema, vec.tolist()).rows == (("a", 7), ("b", 5))


def test_a_span_too_wide_to_keep_is_quantised_per_query_and_still_refused_on_overflow(tmp_path):
    schema = Schema((Column("x", "float", 0.0, 1e33),))
    rules = QueryRules(("COUNT", "SUM"), ("x",), (), (), 1, 10)
    p = tmp_path / "wide.csv"
    p.write_text("x\n1e32\n2e32\n")
    with Dataset.open(p, schema) as ds:
        assert "x" not in ds.derived.quantized  # (max - min) × 10^6 is over 2^126: not kept at load
        count = plan_query("SELECT COUNT(*) FROM t", rules, schema, "t")
        arrays = ds.aggregate_arrays(count, Layout.from_plan(count, schema))
        assert arrays.rows.tolist() == [2]
        total = plan_query("SELECT SUM(x) FROM t", rules, schema, "t")
        with pytest.raises(PolicyViolation, match=r"overflowed the 127-bit range") as e:
            ds.aggregate_arrays(total, Layout.from_plan(total, schema))
    assert "1e32" not in str(e.value)


def test_group_arrays_round_trip_and_refuse_inconsistent_arrays():
    plan = plan_query("SELECT region, COUNT(*), SUM(age) FROM loans GROUP BY region", RULES, SCHEMA, "loans")
    layout = Layout.from_plan(plan, SCHEMA)
    from fedtrust.query.encoding import ColumnStats, GroupStats

    stats = {("north",): GroupStats(12, {"age": ColumnStats(12, 2**100 + 5, 0)}), ("x y",): GroupStats(2, {"age": ColumnStats(2, 3, 0)})}
    ga = GroupArrays.from_stats(layout, stats)
    assert ga.to_stats(layout) == stats
    from fedtrust.errors import InvalidInput

    twice = GroupArrays(np.array([0, 0]), ga.rows, ga.counts, ga.sums, ga.sumsqs)
    with pytest.raises(InvalidInput, match=r"appears twice"):
        encode_arrays(layout, twice, 1)
    negative = GroupArrays(ga.index, ga.rows, ga.counts, -ga.sums, ga.sumsqs)
    with pytest.raises(InvalidInput, match=r"non-negative"):
        encode_arrays(layout, negative, 1)
    outside = GroupArrays(np.array([0, len(layout.groups)]), ga.rows, ga.counts, ga.sums, ga.sumsqs)
    with pytest.raises(InvalidInput, match=r"outside the public group domain"):
        encode_arrays(layout, outside, 1)


def test_query_threads_is_a_dataset_setting_locked_with_the_sandbox(tmp_path):
    path = write(tmp_path / "d.csv", rows_for(20, 3))
    with Dataset.open(path, SCHEMA, threads=1) as ds:
        assert ds._con.execute("SELECT current_setting('threads')").fetchone()[0] == 1
        with pytest.raises(duckdb.Error):
            ds._con.execute("SET threads=4")
    with pytest.raises(ConfigError, match=r"query_threads must be a whole number"):
        Dataset.open(path, SCHEMA, threads=0)
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nname = "a"\nlisten = "127.0.0.1:0"\ncredentials = "c"\nstate = "s"\n\n'
                   '[[datasets]]\nproduct = "p.json"\npath = "d.csv"\nquery_threads = 1\n')
    assert load_node_config(cfg).datasets[0].query_threads == 1
    cfg.write_text(cfg.read_text().replace("query_threads = 1", "query_threads = 0"))
    with pytest.raises(ConfigError, match=r"query_threads"):
        load_node_config(cfg)


def test_kept_q_takes_the_smallest_type_of_its_public_span_and_sums_exactly_at_the_bounds(tmp_path):
    schema = Schema((Column("flag", "int", 0, 1), Column("small", "int", 0, 254), Column("wide", "int", 0, 255),
                     Column("f", "float", 0.0, 0.0002546), Column("big", "float", -1e9, 1e9)))
    rules = QueryRules(("SUM", "VAR_SAMP"), schema.names, (), (), 1, 10)
    p = tmp_path / "bounds.csv"
    p.write_text("flag,small,wide,f,big\n1,254,255,0.0002546,1e9\n1,300,999,1.0,2e9\n0,0,0,0.0,-1e9\n")
    with Dataset.open(p, schema) as ds:
        types = dict(ds._con.execute("SELECT column_name, data_type FROM duckdb_columns()").fetchall())
        kept = {c: types[ds.derived.quantized[c]] for c in schema.names}
        plan = plan_query("SELECT SUM(flag), SUM(small), SUM(wide), SUM(f), SUM(big), VAR_SAMP(big) FROM t", rules,
                          schema, "t")
        layout = Layout.from_plan(plan, schema)
        vec, _ = encode_arrays(layout, ds.aggregate_arrays(plan, layout), 1)
    assert kept == {"flag": "UTINYINT", "small": "UTINYINT", "wide": "USMALLINT", "f": "UTINYINT", "big": "BIGINT"}
    row = decode(plan, layout, schema, vec.tolist()).rows[0]
    # f: 0.0002546 is q = 254.6 → 255 (half away from zero), the most a UTINYINT holds; 1.0 clips to it
    assert row[:3] == (2, 508, 510) and row[3] == pytest.approx(0.00051) and row[4] == 1e9
    assert row[5] == pytest.approx(4 / 3 * 1e18)
