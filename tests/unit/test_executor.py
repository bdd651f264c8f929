"""Node executor: sandboxed DuckDB over the product file, exact stats equal to plain DuckDB."""
from __future__ import annotations

import csv
import hashlib
import math
import threading
from pathlib import Path

import duckdb
import pytest
from sqlglot import exp

from fedtrust.errors import ConfigError, InvalidInput, PolicyViolation
from fedtrust.query.dataset import Dataset, file_digest
from fedtrust.query.decode import decode
from fedtrust.query.encoding import encode
from fedtrust.query.layout import Layout
from fedtrust.query.sql import QueryPlan, plan_query
from fedtrust.trust.rules import QueryRules
from fedtrust.trust.schema import Column, Schema

SCHEMA = Schema(
    (
        Column("region", "category", values=("north", "south", "east")),
        Column("income", "float", 0.0, 100_000.0),
        Column("age", "int", 18, 100),
    )
)
RULES = QueryRules(("COUNT", "SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP"), ("income", "age"), ("region", "age"), ("region",), 1, 100)

ROWS = [
    ("north", 1200.5, 30),
    ("north", 3400.25, 45),
    ("north", None, 51),
    ("south", 99_999.0, None),
    ("south", 15.75, 18),
    ("south", 20.0, 99),
    ("east", 500.0, 60),
    ("north", 42.42, 33),
]


def write_csv(path: Path, rows=ROWS, header=("region", "income", "age")) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if v is None else v for v in r])
    return path


def to_parquet(csv_path: Path, parquet_path: Path) -> Path:
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT * FROM read_csv('{csv_path}', header=true, "
        "columns={'region': 'VARCHAR', 'income': 'DOUBLE', 'age': 'BIGINT'})) "
        f"TO '{parquet_path}' (FORMAT parquet)"
    )
    con.close()
    return parquet_path


@pytest.fixture
def csv_file(tmp_path):
    return write_csv(tmp_path / "loans.csv")


@pytest.fixture
def other_file(tmp_path):
    p = tmp_path / "secret.csv"
    p.write_text("a\n42\n")
    return p


def run_plain(path: Path, sql: str):
    """The buyer's SQL run by plain DuckDB over the same file (the answer a central party would get)."""
    con = duckdb.connect()
    reader = (
        f"read_csv('{path}', header=true, columns={{'region': 'VARCHAR', 'income': 'DOUBLE', 'age': 'BIGINT'}})"
        if path.suffix == ".csv"
        else f"read_parquet('{path}')"
    )
    con.execute(f"CREATE TABLE loans AS SELECT * FROM {reader}")
    return con.execute(sql).fetchall()


def run_node(ds: Dataset, sql: str):
    p = plan_query(sql, RULES, SCHEMA, "loans")
    layout = Layout.from_plan(p, SCHEMA)
    vec, _ = encode(layout, ds.aggregate(p, layout), 1)
    return p, decode(p, layout, SCHEMA, vec.tolist())


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


# ----------------------------------------------------------------------------- sandbox


ESCAPES = [
    "SELECT * FROM read_csv('{other}')",
    "SELECT * FROM '{other}'",
    "SELECT * FROM read_text('{other}')",
    "SELECT * FROM glob('{dir}/*')",
    "INSTALL httpfs",
    "LOAD httpfs",
    "ATTACH '{dir}/x.db' AS x",
    "COPY dataset TO '{dir}/out.csv'",
    "EXPORT DATABASE '{dir}/export'",
    "SET enable_external_access=true",
    "RESET enable_external_access",
    "SET lock_configuration=false",
    "SET allowed_paths=['{other}']",
    "SET allowed_directories=['{dir}']",
]


@pytest.mark.parametrize("stmt", ESCAPES)
@pytest.mark.parametrize("via_cursor", [False, True])
def test_sandbox_escapes_are_refused(csv_file, other_file, tmp_path, stmt, via_cursor):
    with Dataset.open(csv_file, SCHEMA) as ds:
        con = ds._con.cursor() if via_cursor else ds._con
        with pytest.raises(duckdb.Error):
            con.execute(stmt.format(other=other_file, dir=tmp_path)).fetchall()
        # the loaded table still answers
        assert con.execute('SELECT COUNT(*) FROM "dataset"').fetchone()[0] == len(ROWS)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.db").exists()
    assert not (tmp_path / "export").exists()


def test_sandbox_settings_are_locked(csv_file):
    with Dataset.open(csv_file, SCHEMA) as ds:
        settings = dict(
            ds._con.execute(
                "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', 'lock_configuration')"
            ).fetchall()
        )
        assert settings == {"enable_external_access": "false", "lock_configuration": "true"}


def test_open_only_reads_the_product_file(tmp_path):
    # a CSV whose name needs quoting still loads (the path is a rendered literal, never pasted)
    p = write_csv(tmp_path / "it's a file.csv")
    with Dataset.open(p, SCHEMA) as ds:
        _, result = run_node(ds, "SELECT COUNT(*) FROM loans")
        assert result.rows == ((len(ROWS),),)


# ----------------------------------------------------------------------------- loading


def test_missing_column_is_a_config_error(tmp_path):
    p = write_csv(tmp_path / "bad.csv", [("north", 1.0)], header=("region", "income"))
    with pytest.raises(ConfigError, match=r"schema column `age` is missing from data file bad.csv"):
        Dataset.open(p, SCHEMA)


def test_wrong_type_is_a_config_error_without_value(tmp_path):
    p = write_csv(tmp_path / "bad.csv", [("north", "lots-of-money", 3)])
    with pytest.raises(ConfigError, match=r"column `income` of data file bad.csv holds values that are not float") as e:
        Dataset.open(p, SCHEMA)
    assert "lots-of-money" not in str(e.value)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        Dataset.open(tmp_path / "nope.csv", SCHEMA)
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(ConfigError, match=r"unknown extension; use .csv or .parquet"):
        Dataset.open(tmp_path / "data.xlsx", SCHEMA)


def test_header_order_case_and_extra_columns(tmp_path):
    p = tmp_path / "shuffled.csv"
    p.write_text("AGE,extra,Region,income\n30,zz,north,1.5\n,yy,south,\n")
    with Dataset.open(p, SCHEMA) as ds:
        _, result = run_node(ds, "SELECT region, COUNT(*), SUM(income), COUNT(age) FROM loans GROUP BY region")
    assert result.rows == (("north", 1, 1.5, 1), ("south", 1, None, 0))


def test_file_digest(csv_file, tmp_path):
    assert file_digest(csv_file) == hashlib.sha256(csv_file.read_bytes()).hexdigest()
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 20_000)  # several chunks
    assert file_digest(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    with pytest.raises(ConfigError):
        file_digest(tmp_path / "missing")


# ----------------------------------------------------------------------------- results


QUERIES = [
    "SELECT region, COUNT(*), COUNT(income), SUM(income), AVG(income), VAR_SAMP(income), STDDEV_SAMP(income), "
    "SUM(age), AVG(age), VAR_SAMP(age), STDDEV_SAMP(age) FROM loans GROUP BY region",
    "SELECT COUNT(*), SUM(income), AVG(age), STDDEV(age) FROM loans WHERE age >= 30 AND region IN ('north', 'east')",
    "SELECT region, AVG(income) FROM loans WHERE NOT (age BETWEEN 40 AND 60) OR region = 'south' GROUP BY region",
    "SELECT COUNT(*), SUM(income), VAR_SAMP(income) FROM loans WHERE age > 99",
]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("sql", QUERIES)
def test_results_equal_plain_duckdb(csv_file, tmp_path, fmt, sql):
    path = csv_file if fmt == "csv" else to_parquet(csv_file, tmp_path / "loans.parquet")
    with Dataset.open(path, SCHEMA) as ds:
        p, result = run_node(ds, sql)
    expected = run_plain(path, sql)
    gpos = [i for i, o in enumerate(p.outputs) if o.kind == "group"]
    by_key = {tuple(r[i] for i in gpos): r for r in expected}
    assert len(result.rows) == len(expected)
    for row in result.rows:
        want = by_key[tuple(row[i] for i in gpos)]
        assert all(same(a, b) for a, b in zip(row, want)), (row, want)


def test_clipping_nulls_and_one_domain_for_every_query(tmp_path):
    """Rows whose category is NULL or unlisted count in no query, grouped or not: COUNT(*) minus the sum of a
    GROUP BY is 0, so the difference cannot isolate them (it did when only grouped queries dropped them)."""
    rows = [
        ("north", -50.0, 10),  # below both minimums: clipped to 0.0 and 18
        ("north", 250_000.0, 130),  # above both maximums: clipped to 100000 and 100
        ("north", None, None),  # NULL stays NULL (DuckDB's GREATEST would skip it)
        ("mars", 7.0, 40),  # outside the public domain: counted by no query
        (None, 8.0, 41),
    ]
    p = write_csv(tmp_path / "clip.csv", rows)
    with Dataset.open(p, SCHEMA) as ds:
        _, grouped = run_node(ds, "SELECT region, COUNT(*), COUNT(income), SUM(income), SUM(age), AVG(age) FROM loans GROUP BY region")
        _, total = run_node(ds, "SELECT COUNT(*), SUM(age) FROM loans")
        _, complement = run_node(ds, "SELECT COUNT(*) FROM loans WHERE NOT region IN ('north', 'south', 'east')")
        _, by_age = run_node(ds, "SELECT COUNT(*) FROM loans WHERE age >= 18")
        assert ds.out_of_domain_rows() == 2  # what the node logs to its owner at start: a count only
    assert grouped.rows == (("north", 3, 2, 100_000.0, 118, 59.0),)
    assert total.rows == ((3, 18 + 100),)  # the same rows as the grouped query: nothing to difference out
    assert complement.rows == ((0,),) and by_age.rows == ((1,),)  # filters see raw values, aggregates clip


def test_parquet_with_other_physical_types(tmp_path):
    p = tmp_path / "typed.parquet"
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT 'north' AS region, CAST(i AS INTEGER) AS income, CAST(20 + i AS SMALLINT) AS age "
        f"FROM range(10) r(i)) TO '{p}' (FORMAT parquet)"
    )
    with Dataset.open(p, SCHEMA) as ds:
        _, result = run_node(ds, "SELECT region, SUM(income), SUM(age) FROM loans GROUP BY region")
    assert result.rows == (("north", 45.0, 245),)


def test_concurrent_aggregates_agree(csv_file):
    with Dataset.open(csv_file, SCHEMA) as ds:
        p = plan_query(QUERIES[0], RULES, SCHEMA, "loans")
        layout = Layout.from_plan(p, SCHEMA)
        first = ds.aggregate(p, layout)
        results, errors = [], []

        def work():
            try:
                for _ in range(20):
                    results.append(ds.aggregate(p, layout))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert len(results) == 160 and all(r == first for r in results)


def test_sql_is_rebuilt_from_the_plan(csv_file):
    with Dataset.open(csv_file, SCHEMA) as ds:
        p = plan_query("SELECT region, AVG(income) FROM loans WHERE age > 20 GROUP BY region", RULES, SCHEMA, "loans")
        sql = ds.build_sql(p, Layout.from_plan(p, SCHEMA))
    assert 'FROM "dataset"' in sql and "loans" not in sql
    # the plan's filter, and the public-domain filter every query gets: region's domain index (computed at
    # load from the listed values) is not NULL, i.e. region IN ('north', 'south', 'east')
    domain = ds.derived.domain["region"]
    assert '"age" > 20' in sql and f'NOT "{domain}" IS NULL' in sql and f'GROUP BY "{domain}"' in sql
    assert "AS INT128" in sql or "AS HUGEINT" in sql


def test_tampered_plan_filter_is_refused(csv_file):
    p = plan_query("SELECT COUNT(*) FROM loans WHERE age > 20", RULES, SCHEMA, "loans")
    layout = Layout.from_plan(p, SCHEMA)
    bad = exp.GT(
        this=exp.Column(this=exp.Identifier(this="age", quoted=True)),
        expression=exp.Anonymous(this="read_text", expressions=[exp.Literal.string("/etc/passwd")]),
    )
    forged = QueryPlan(**{**p.__dict__, "where": bad})
    with Dataset.open(csv_file, SCHEMA) as ds:
        with pytest.raises(PolicyViolation, match=r"ANONYMOUS is not allowed in a filter"):
            ds.aggregate(forged, layout)
        unknown = QueryPlan(**{**p.__dict__, "where": exp.EQ(this=exp.column("secret", quoted=True), expression=exp.Literal.number(1))})
        with pytest.raises(PolicyViolation, match=r"not in the schema"):
            ds.aggregate(unknown, layout)
        other = plan_query("SELECT AVG(income) FROM loans", RULES, SCHEMA, "loans")
        with pytest.raises(InvalidInput, match=r"layout was not built from this query plan"):
            ds.aggregate(other, layout)


def test_hugeint_overflow_is_a_policy_violation(tmp_path):
    schema = Schema((Column("x", "int", 0, 9_000_000_000_000_000_000),))
    rules = QueryRules(("VAR_SAMP",), ("x",), (), (), 1, 10)
    p = tmp_path / "huge.csv"
    p.write_text("x\n" + "9000000000000000000\n" * 3)
    plan = plan_query("SELECT VAR_SAMP(x) FROM t", rules, schema, "t")
    with Dataset.open(p, schema) as ds:
        with pytest.raises(PolicyViolation, match=r"overflowed the 127-bit range") as e:
            ds.aggregate(plan, Layout.from_plan(plan, schema))
    assert "9000000000000000000" not in str(e.value)


def test_a_group_of_twelve_rows_with_one_income_does_not_release_that_income(tmp_path):
    """min_group_size holds per quantity: COUNT(income) = 1 and SUM(income) would be that person's income."""
    rows = [("north", 87654.32 if i == 0 else None, 20 + i) for i in range(12)]
    p = write_csv(tmp_path / "sparse.csv", rows)
    sql = "SELECT region, COUNT(*) AS n, COUNT(income) AS k, SUM(income) AS s, AVG(age) AS a FROM loans GROUP BY region"
    plan = plan_query(sql, RULES, SCHEMA, "loans")
    layout = Layout.from_plan(plan, SCHEMA)
    with Dataset.open(p, SCHEMA) as ds:
        vec, _ = encode(layout, ds.aggregate(plan, layout), 10)
    result = decode(plan, layout, SCHEMA, vec.tolist())
    assert result.rows == (("north", 12, 0, None, 25.5),)
    assert result.withheld_columns == ((("north",), "income", 1),)
    assert 8765432 not in vec.tolist() and not any(v == 87654.32 for r in result.rows for v in r)


def _twin_schema() -> Schema:
    """A schema an old exchange could list (`Salary` not sold, `salary` sold); today's Schema refuses it."""
    cols = (Column("region", "category", values=("north", "south", "east")), Column("Salary", "float", 0.0, 1e6),
            Column("salary", "float", 0.0, 1e6))
    with pytest.raises(ConfigError, match="differ only in case"):
        Schema(cols)
    twin = object.__new__(Schema)
    object.__setattr__(twin, "columns", cols)
    return twin


def test_the_salary_twin_attack_is_refused_at_every_edge(tmp_path):
    """Rules sell `salary`; SQL folds `SUM(Salary)` / DuckDB folds the table: neither may reach `Salary`."""
    twin = _twin_schema()
    rules = QueryRules(("COUNT", "SUM"), ("salary",), (), ("region",), 1, 10)
    # the planner resolves against the schema first, then checks the column it resolved to against the rules
    with pytest.raises(PolicyViolation, match=r"column `Salary` may not be aggregated under this contract"):
        plan_query("SELECT SUM(Salary) FROM loans", rules, twin, "loans")
    # and a node never loads a table whose columns are not exactly the schema's
    p = tmp_path / "twins.csv"
    p.write_text("region,Salary,salary\nnorth,250000,1\nnorth,260000,1\n")
    with pytest.raises(ConfigError, match=r"loaded with columns other than the schema's \(not in the schema: "
                                          r"salary_1; missing: salary\)"):
        Dataset.open(p, twin)

