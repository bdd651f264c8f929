"""SQL policy: what `plan_query` accepts, and every refusal with its reason."""
from __future__ import annotations

import pytest

from fedtrust.errors import InvalidInput, PolicyViolation
from fedtrust.query.layout import MAX_SLOTS, Layout, slots_per_group
from fedtrust.query.sql import Output, plan_query
from fedtrust.trust.rules import QueryRules
from fedtrust.trust.schema import Column, Schema

SCHEMA = Schema(
    (
        Column("region", "category", values=("north", "south", "east", "west")),
        Column("sex", "category", values=("f", "m")),
        Column("grade", "category", values=("a", "b", "c")),
        Column("income", "float", 0.0, 1_000_000.0),
        Column("age", "int", 18, 100),
        Column("salary", "float", 0.0, 500_000.0),
    )
)
RULES = QueryRules(
    aggregates=("COUNT", "SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP"),
    columns=("income", "age"),
    filters=("region", "sex", "age"),
    group_by=("region", "sex", "income"),
    min_group_size=5,
    max_queries=100,
)


def plan(sql: str, rules: QueryRules = RULES, schema: Schema = SCHEMA):
    return plan_query(sql, rules, schema, "loans")


# ----------------------------------------------------------------------------- accepted


def test_example_query():
    p = plan("SELECT region, COUNT(*) AS n, AVG(income) AS mean_income FROM loans GROUP BY region")
    assert p.dataset == "loans"
    assert p.group_by == ("region",)
    assert p.outputs == (
        Output("region", "group", None, "region"),
        Output("n", "agg", "COUNT", None),
        Output("mean_income", "agg", "AVG", "income"),
    )
    assert p.columns == ("income",)
    assert p.needs_sumsq is False
    assert p.where is None
    assert p.canonical_sql == (
        'SELECT "region" AS "region", COUNT(*) AS "n", AVG("income") AS "mean_income" FROM "loans" GROUP BY "region"'
    )


def test_default_names_and_synonyms():
    p = plan(
        "SELECT COUNT(*), COUNT(income), SUM(income), AVG(age), STDDEV(age), VARIANCE(income), "
        "VAR_SAMP(age) AS v, STDDEV_SAMP(income) FROM loans"
    )
    assert [(o.name, o.func, o.column) for o in p.outputs] == [
        ("count_star", "COUNT", None),
        ("count_income", "COUNT", "income"),
        ("sum_income", "SUM", "income"),
        ("avg_age", "AVG", "age"),
        ("stddev_samp_age", "STDDEV_SAMP", "age"),
        ("var_samp_income", "VAR_SAMP", "income"),
        ("v", "VAR_SAMP", "age"),
        ("stddev_samp_income", "STDDEV_SAMP", "income"),
    ]
    assert p.columns == ("income", "age")  # schema order
    assert p.needs_sumsq is True
    assert p.group_by == ()


def test_count_literal_is_count_star_and_case_insensitive_names():
    p = plan("select Region, count(1) from LOANS group by REGION")
    assert p.group_by == ("region",)
    assert p.outputs[0] == Output("region", "group", None, "region")  # the schema's spelling
    assert p.outputs[1] == Output("count_star", "agg", "COUNT", None)


def test_group_by_normalised_to_schema_order_and_select_order_kept():
    p = plan("SELECT sex, region, COUNT(*) FROM loans GROUP BY sex, region")
    assert p.group_by == ("region", "sex")
    assert [o.name for o in p.outputs] == ["sex", "region", "count_star"]
    q = plan("SELECT COUNT(*) FROM loans GROUP BY region, sex")
    assert Layout.from_plan(p, SCHEMA).groups == Layout.from_plan(q, SCHEMA).groups
    # a GROUP BY column need not be selected
    assert q.outputs == (Output("count_star", "agg", "COUNT", None),)


def test_where_forms_accepted_and_rebuilt():
    p = plan(
        "SELECT COUNT(*) FROM loans AS l WHERE (region = 'north' OR region <> 'south') AND age != 30 "
        "AND NOT sex IN ('m') AND age BETWEEN 20 AND 40 AND 50 > age AND l.age >= 18 AND age <= 99.5 AND age < 1e2"
    )
    sql = p.where_sql
    assert sql is not None
    assert '"age" < 50' in sql  # literal on the left is flipped
    assert "BETWEEN 20 AND 40" in sql
    assert "'m'" in sql and '"region" = ' in sql
    assert p.filter_columns == ("region", "sex", "age")
    assert "WHERE" in p.canonical_sql


def test_where_string_literal_is_escaped_in_rebuilt_tree():
    quoted = Schema((Column("region", "category", values=("north", "it's")), Column("age", "int", 18, 100)))
    p = plan("SELECT COUNT(*) FROM loans WHERE region = 'it''s'", schema=quoted)
    assert "'it''s'" in p.where_sql


def test_quoted_identifiers_and_trailing_semicolon():
    p = plan('SELECT "region", COUNT(*) FROM "loans" GROUP BY "region";')
    assert p.group_by == ("region",)


def test_from_first_syntax_is_fine():
    assert plan("FROM loans SELECT COUNT(*)").outputs[0].func == "COUNT"


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "sql, match",
    [
        ("SELECT * FROM loans", r"SELECT \* is not allowed"),
        ("SELECT region, COUNT(*) FROM loans", r"column `region` is selected but not grouped by; add it to GROUP BY"),
        ("SELECT sex, COUNT(*) FROM loans GROUP BY region", r"`sex` is selected but not grouped by"),
        ("SELECT SUM(salary) FROM loans", r"column `salary` may not be aggregated under this contract \(allowed: income, age\)"),
        ("SELECT AVG(nope) FROM loans", r"column `nope` may not be aggregated"),
        # MPC aggregates (fedtrust.query.mpc_stats) the contract must list like any other
        ("SELECT MIN(income) FROM loans", r"aggregate MIN is not allowed under this contract \(allowed: COUNT, SUM"),
        ("SELECT MEDIAN(income) FROM loans", r"aggregate MEDIAN is not allowed under this contract"),
        ("SELECT MODE(income) FROM loans", r"function MODE is not supported; aggregates are COUNT, SUM, AVG"),
        ("SELECT VAR_POP(income) FROM loans", r"function VARIANCE_POP is not supported"),
        ("SELECT my_udf(income) FROM loans", r"function MY_UDF is not supported"),
        ("SELECT COUNT(*) FROM loans WHERE salary > 5", r"column `salary` may not be used in WHERE under this contract \(allowed filter columns: region, sex, age\)"),
        ("SELECT COUNT(*) FROM loans WHERE income > 5", r"column `income` may not be used in WHERE"),
        ("SELECT COUNT(*) FROM loans GROUP BY grade", r"column `grade` may not be grouped by under this contract \(allowed group columns: region, sex, income\)"),
        ("SELECT COUNT(*) FROM loans GROUP BY income", r"GROUP BY column `income` is float; only category columns"),
        ("SELECT COUNT(*) FROM loans GROUP BY 1", r"GROUP BY by position is not allowed"),
        ("SELECT COUNT(*) FROM loans GROUP BY ALL", r"GROUP BY ALL, ROLLUP, CUBE and GROUPING SETS are not allowed"),
        ("SELECT COUNT(*) FROM loans GROUP BY ROLLUP (region)", r"ROLLUP"),
        ("SELECT COUNT(*) FROM loans GROUP BY lower(region)", r"GROUP BY takes plain column names"),
        ("SELECT COUNT(*) FROM loans LIMIT 5", r"LIMIT is not allowed"),
        ("SELECT COUNT(*) FROM loans OFFSET 5", r"OFFSET is not allowed"),
        ("SELECT region, COUNT(*) FROM loans GROUP BY region ORDER BY region", r"ORDER BY is not allowed"),
        ("SELECT region, COUNT(*) FROM loans GROUP BY region HAVING COUNT(*) > 3", r"HAVING is not allowed"),
        ("SELECT DISTINCT region, COUNT(*) FROM loans GROUP BY region", r"DISTINCT is not allowed"),
        ("SELECT COUNT(DISTINCT age) FROM loans", r"DISTINCT inside COUNT is not allowed"),
        ("SELECT SUM(DISTINCT age) FROM loans", r"DISTINCT inside SUM is not allowed"),
        ("SELECT COUNT(*) FROM (SELECT * FROM loans)", r"subqueries are not allowed"),
        ("SELECT COUNT(*) FROM loans WHERE age IN (SELECT age FROM loans)", r"subqueries are not allowed"),
        ("SELECT (SELECT COUNT(*) FROM loans)", r"subqueries are not allowed"),
        ("SELECT COUNT(*) FROM loans WHERE age > (SELECT 1)", r"subqueries are not allowed"),
        ("WITH x AS (SELECT * FROM loans) SELECT COUNT(*) FROM x", r"WITH \(common table expressions\) is not allowed"),
        ("SELECT COUNT(*) FROM loans JOIN other ON loans.a = other.a", r"joins"),
        ("SELECT COUNT(*) FROM loans, other", r"joins"),
        ("SELECT COUNT(*) FROM loans UNION SELECT COUNT(*) FROM loans", r"UNION, INTERSECT and EXCEPT are not allowed"),
        ("SELECT COUNT(*) FROM read_csv('/etc/passwd')", r"table functions and files are not allowed"),
        ("SELECT COUNT(*) FROM '/etc/passwd'", r"table `/etc/passwd` is not covered by this contract; select FROM loans"),
        ("SELECT COUNT(*) FROM range(10)", r"table functions and files are not allowed"),
        ("SELECT COUNT(*) FROM other", r"table `other` is not covered by this contract; select FROM loans"),
        ("SELECT COUNT(*) FROM main.loans", r"FROM must name the dataset `loans` plainly"),
        ("SELECT COUNT(*)", r"the query has no FROM; select FROM loans"),
        ("SELECT SUM(income * 2) FROM loans", r"functions or expressions inside SUM are not allowed"),
        ("SELECT AVG(abs(income)) FROM loans", r"functions or expressions inside AVG are not allowed"),
        ("SELECT SUM(AVG(income)) FROM loans", r"functions or expressions inside SUM are not allowed"),
        ("SELECT SUM(*) FROM loans", r"SUM\(\*\) is not allowed"),
        ("SELECT COUNT(*) + 1 FROM loans", r"each SELECT item must be a GROUP BY column or one aggregate"),
        ("SELECT SUM(income) / COUNT(*) FROM loans", r"each SELECT item must be a GROUP BY column or one aggregate"),
        ("SELECT 1 FROM loans", r"each SELECT item must be a GROUP BY column or one aggregate"),
        ("SELECT region FROM loans GROUP BY region", r"the query selects no aggregate; add one"),
        ("SELECT SUM(income) OVER () FROM loans", r"window functions \(OVER\) are not allowed"),
        ("SELECT SUM(income) FILTER (WHERE age > 3) FROM loans", r"FILTER clauses are not allowed"),
        ("SELECT COUNT(*) FROM loans; SELECT COUNT(*) FROM loans", r"the query holds 2 statements; submit exactly one SELECT"),
        ("DROP TABLE loans", r"only a SELECT query is allowed \(got DROP\)"),
        ("INSERT INTO loans VALUES (1)", r"only a SELECT query is allowed \(got INSERT\)"),
        ("COPY loans TO '/tmp/x.csv'", r"only a SELECT query is allowed"),
        ("ATTACH '/tmp/x.db'", r"only a SELECT query is allowed"),
        ("SELECT COUNT(*) FROM loans WHERE region LIKE 'n%'", r"LIKE is not allowed in WHERE; filters may use only =, <>"),
        ("SELECT COUNT(*) FROM loans WHERE region IS NULL", r"IS is not allowed in WHERE"),
        ("SELECT COUNT(*) FROM loans WHERE age = sex", r"comparing two columns is not allowed"),
        ("SELECT COUNT(*) FROM loans WHERE age + 1 > 3", r"functions and expressions on columns are not allowed"),
        ("SELECT COUNT(*) FROM loans WHERE lower(region) = 'north'", r"functions and expressions on columns are not allowed"),
        ("SELECT COUNT(*) FROM loans WHERE age > abs(-3)", r"compare.*with a literal only"),
        ("SELECT COUNT(*) FROM loans WHERE age = 'x'", r"numeric column `age` must compare with a number"),
        ("SELECT COUNT(*) FROM loans WHERE region = 3", r"category column `region` must compare with a string literal"),
        ("SELECT COUNT(*) FROM loans WHERE age", r"COLUMN is not allowed in WHERE"),
        ("SELECT COUNT(*) FROM loans WHERE TRUE", r"is not allowed in WHERE"),
        ("SELECT COUNT(*) FROM loans WHERE COUNT(*) > 3", r"aggregates are not allowed in WHERE"),
        ("SELECT COUNT(*) FROM loans WHERE other.age > 3", r"column qualifier `other` is not the dataset"),
        ("SELECT COUNT(*) FROM loans USING SAMPLE 10", r"SAMPLE is not allowed"),
        ("SELECT COUNT(*) FROM loans QUALIFY 1 = 1", r"QUALIFY is not allowed"),
        ("SELECT AVG(region) FROM loans", r"column `region` may not be aggregated"),
    ],
)
def test_refusals(sql, match):
    with pytest.raises(PolicyViolation, match=match):
        plan(sql)


def test_category_aggregate_refused_even_if_listed():
    rules = QueryRules(("COUNT", "SUM"), ("region", "income"), (), ("region",), 1, 5)
    with pytest.raises(PolicyViolation, match=r"column `region` is a category; SUM needs a numeric column"):
        plan("SELECT SUM(region) FROM loans", rules)


def test_aggregate_not_in_contract():
    rules = QueryRules(("COUNT", "AVG"), ("income",), ("region",), ("region",), 1, 5)
    with pytest.raises(PolicyViolation, match=r"aggregate SUM is not allowed under this contract \(allowed: COUNT, AVG\)"):
        plan("SELECT SUM(income) FROM loans", rules)
    with pytest.raises(PolicyViolation, match=r"aggregate STDDEV_SAMP is not allowed"):
        plan("SELECT STDDEV(income) FROM loans", rules)  # synonyms are checked as their normal name
    rules = QueryRules(("AVG",), ("income",), (), (), 1, 5)
    with pytest.raises(PolicyViolation, match=r"aggregate COUNT is not allowed under this contract \(allowed: AVG\)"):
        plan("SELECT COUNT(*) FROM loans", rules)


def test_group_domain_too_large():
    big = Schema(
        (
            Column("a", "category", values=tuple(f"a{i}" for i in range(200))),
            Column("b", "category", values=tuple(f"b{i}" for i in range(200))),
            Column("x", "float", 0.0, 1.0),
        )
    )
    rules = QueryRules(("COUNT", "AVG"), ("x",), (), ("a", "b"), 1, 5)
    # 200 groups fit
    plan_query("SELECT a, AVG(x) FROM t GROUP BY a", rules, big, "t")
    need = 200 * 200 * slots_per_group(1, False)
    assert need > MAX_SLOTS
    per_group = slots_per_group(1, False)
    with pytest.raises(PolicyViolation, match=rf"40000 groups x {per_group} slots = {need} slots, over the limit of {MAX_SLOTS}"):
        plan_query("SELECT a, b, AVG(x) FROM t GROUP BY a, b", rules, big, "t")


def test_duplicate_output_names_are_invalid():
    with pytest.raises(InvalidInput, match=r"output name `n` appears twice"):
        plan("SELECT COUNT(*) AS n, AVG(income) AS n FROM loans")


@pytest.mark.parametrize(
    "sql",
    ["SELEC COUNT(*) FROM loans", "SELECT COUNT(* FROM loans", "SELECT FROM WHERE ("],
)
def test_unparsable_sql_reports_position(sql):
    with pytest.raises(InvalidInput, match=r"not valid SQL at line 1, column \d+"):
        plan(sql)


def test_unterminated_string_and_empty():
    with pytest.raises(InvalidInput, match=r"not valid SQL"):
        plan("SELECT COUNT(*) FROM loans WHERE region = 'north")
    with pytest.raises(InvalidInput, match=r"the query is empty"):
        plan("  ;  ")


def test_refusal_messages_never_echo_literals():
    # the message names the rule, not the compared value
    with pytest.raises(PolicyViolation) as e:
        plan("SELECT COUNT(*) FROM loans WHERE salary = 123456.78")
    assert "123456" not in str(e.value)


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELECT COUNT(*) FROM loans WHERE region = 'dermatology'",
         r"filter on category column `region` compares with a value outside its public domain; use one of its listed "
         r"values: north, south, east, west"),
        ("SELECT COUNT(*) FROM loans WHERE region IN ('north', 'Mars')", r"outside its public domain"),
        ("SELECT COUNT(*) FROM loans WHERE region <> 'NORTH'", r"outside its public domain"),
        ("SELECT COUNT(*) FROM loans WHERE sex = ''", r"`sex` compares with a value outside .*: f, m"),
        ("SELECT COUNT(*) FROM loans WHERE age > 1000", r"filter on `age` compares with a number outside its public "
                                                         r"bounds \[18, 100\]; use a value within them"),
        ("SELECT COUNT(*) FROM loans WHERE age < -5", r"outside its public bounds \[18, 100\]"),
        ("SELECT COUNT(*) FROM loans WHERE age BETWEEN 20 AND 100.5", r"outside its public bounds"),
        ("SELECT COUNT(*) FROM loans WHERE age IN (30, 17)", r"outside its public bounds"),
    ],
)
def test_filter_literals_must_lie_in_the_public_domain_and_bounds(sql, message):
    """A literal outside the listed domain probes for unlisted values in an owner's file; refused by name."""
    with pytest.raises(PolicyViolation, match=message) as e:
        plan(sql)
    assert "dermatology" not in str(e.value) and "Mars" not in str(e.value) and "1000" not in str(e.value)


def test_filter_literals_at_the_bounds_and_listed_values_are_fine():
    p = plan("SELECT COUNT(*) FROM loans WHERE age >= 18 AND age <= 100 AND region IN ('north', 'west') AND sex = 'f'")
    assert p.filter_columns == ("region", "sex", "age")
