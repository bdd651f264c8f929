"""SQL policy: parse the buyer's aggregate query and check it against the contract.

The buyer writes plain SQL (`SELECT region, COUNT(*) AS n, AVG(income) FROM
loans GROUP BY region`). Every node runs `plan_query` by itself on the SQL of
the signed job spec and refuses what its contract's rules forbid; the buyer's
CLI runs it too, for fast feedback. The result is a `QueryPlan`: a small,
checked description of the query (group-by columns, aggregates, a rebuilt
filter tree) from which

* `fedtrust.query.layout` derives the public slot layout,
* `fedtrust.query.dataset` rebuilds the SQL it runs (never the buyer's text),
* `fedtrust.query.decode` derives the buyer's result table.

Only a deliberately tiny subset of SQL is accepted (a whitelist, not a
blacklist): one SELECT of group columns and COUNT / SUM / AVG / VAR_SAMP /
STDDEV_SAMP over bare columns, FROM exactly the dataset, an optional WHERE of
comparisons between filter columns and literals joined by AND / OR / NOT, and
an optional GROUP BY of category columns. Everything else is refused with a
`PolicyViolation` that names the rule broken and the fix, and never a data
value (the messages travel to the buyer and may be logged).
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import ClassVar

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from fedtrust.errors import InvalidInput, PolicyViolation
from fedtrust.query.layout import MAX_SLOTS, slots_per_group
from fedtrust.trust.rules import QueryRules
from fedtrust.trust.schema import Column, Schema

DIALECT = "duckdb"

#: sqlglot expression class -> normalised aggregate name (synonyms fold here)
_AGG_CLASSES: dict[type[exp.Expr], str] = {
    exp.Count: "COUNT",
    exp.Sum: "SUM",
    exp.Avg: "AVG",
    exp.Variance: "VAR_SAMP",  # VARIANCE, VAR_SAMP
    exp.Stddev: "STDDEV_SAMP",  # STDDEV
    exp.StddevSamp: "STDDEV_SAMP",
    exp.Min: "MIN",
    exp.Max: "MAX",
    exp.Median: "MEDIAN",
    exp.PercentileCont: "QUANTILE",  # QUANTILE_CONT(col, q), QUANTILE(col, q)
}
#: aggregates computed in MPC from each owner's local extrema or histogram (`fedtrust.query.mpc_stats`)
MPC_FUNCS = ("MIN", "MAX", "MEDIAN", "QUANTILE")
#: a quantile fraction has at most this many decimal places (the MPC compares integers scaled by 10^places)
QUANTILE_PLACES = 4
#: aggregates whose decoding needs Σq (and the non-null count)
_NEEDS_SUM = ("SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP")
_NEEDS_SUMSQ = ("VAR_SAMP", "STDDEV_SAMP")

_COMPARISONS: dict[type[exp.Expr], type[exp.Expr]] = {
    exp.EQ: exp.EQ,
    exp.NEQ: exp.NEQ,
    exp.LT: exp.LT,
    exp.LTE: exp.LTE,
    exp.GT: exp.GT,
    exp.GTE: exp.GTE,
}
#: a literal reversed to the right-hand side flips the comparison
_FLIP: dict[type[exp.Expr], type[exp.Expr]] = {
    exp.EQ: exp.EQ,
    exp.NEQ: exp.NEQ,
    exp.LT: exp.GT,
    exp.LTE: exp.GTE,
    exp.GT: exp.LT,
    exp.GTE: exp.LTE,
}
ALLOWED_WHERE = "=, <>, !=, <, <=, >, >=, BETWEEN, IN (list of literals), AND, OR, NOT and parentheses"

#: Select arguments that are refused, with the words used in the message
_CLAUSES = {
    "with_": ("WITH (common table expressions)", "inline the query; only one plain SELECT is accepted"),
    "distinct": ("DISTINCT", "remove DISTINCT; results are per group already"),
    "joins": ("joins", "query the one dataset only; joins across nodes' data are not supported"),
    "laterals": ("LATERAL", "remove it"),
    "having": ("HAVING", "filter rows with WHERE on allowed filter columns, and filter groups on your side"),
    "qualify": ("QUALIFY", "remove it"),
    "windows": ("WINDOW", "remove it"),
    "order": ("ORDER BY", "remove it; rows come back in the public group order"),
    "limit": ("LIMIT", "remove it; the whole aggregate is returned"),
    "offset": ("OFFSET", "remove it; the whole aggregate is returned"),
    "sample": ("SAMPLE", "remove it"),
    "into": ("SELECT INTO", "remove it"),
    "pivots": ("PIVOT", "remove it"),
}


@dataclass(frozen=True)
class Output:
    """One SELECT item: a group column or one aggregate of one column."""

    name: str
    kind: str  # "group" | "agg"
    func: str | None  # COUNT | SUM | AVG | VAR_SAMP | STDDEV_SAMP | MIN | MAX | MEDIAN | QUANTILE; None: group
    column: str | None  # None for COUNT(*)
    q: str | None = None  # MEDIAN and QUANTILE: the fraction, a decimal string in (0, 1) ("0.5" for MEDIAN)


@dataclass(frozen=True)
class QueryPlan:
    """A checked aggregate query. Built only by `plan_query`.

    `group_by` and `columns` are in schema order, so queries that mean the
    same thing get the same public layout. `where` is a freshly built sqlglot
    tree (quoted identifiers, normalised literals), never the buyer's tree;
    treat it as read-only and `.copy()` it before combining it.
    """

    dataset: str
    group_by: tuple[str, ...]
    outputs: tuple[Output, ...]
    where: exp.Expr | None
    columns: tuple[str, ...]
    needs_sumsq: bool
    filter_columns: tuple[str, ...]
    canonical_sql: str

    @property
    def where_sql(self) -> str | None:
        return None if self.where is None else self.where.sql(dialect=DIALECT)

    @property
    def aggregates(self) -> tuple[Output, ...]:
        return tuple(o for o in self.outputs if o.kind == "agg")

    @property
    def is_mpc(self) -> bool:
        """MIN / MAX / MEDIAN / QUANTILE: an MPC job (kind "mpc-stats"), not an HE query."""
        return any(o.func in MPC_FUNCS for o in self.outputs)

    @property
    def funcs(self) -> tuple[str, ...]:
        """The distinct aggregate functions asked for, in SELECT order."""
        seen: dict[str, None] = {}
        for o in self.aggregates:
            seen.setdefault(o.func or "", None)
        return tuple(seen)


# --------------------------------------------------------------------------- parsing


def _parse(sql: str) -> exp.Expr:
    if not isinstance(sql, str):
        raise InvalidInput("the query must be SQL text")
    try:
        statements = [s for s in sqlglot.parse(sql, dialect=DIALECT) if s is not None]
    except ParseError as e:
        err = e.errors[0] if e.errors else {}
        desc = str(err.get("description", "syntax error")).split(". Line ")[0]
        desc = re.sub(r"<Token token_type: [^>]*?text: (.*?), line: [^>]*>", r"`\1`", desc)
        raise InvalidInput(
            f"the query is not valid SQL at line {err.get('line', '?')}, column {err.get('col', '?')}: {desc}; "
            "fix the syntax and submit it again"
        ) from None
    except SqlglotError as e:
        raise InvalidInput(f"the query is not valid SQL ({type(e).__name__}: unterminated string or bad token); fix the syntax") from None
    if not statements:
        raise InvalidInput("the query is empty; write one SELECT statement")
    if len(statements) > 1:
        raise PolicyViolation(
            f"the query holds {len(statements)} statements; submit exactly one SELECT statement"
        )
    return statements[0]


# --------------------------------------------------------------------------- helpers


def _ident_name(node: exp.Expr | None) -> tuple[str, bool]:
    if isinstance(node, exp.Identifier):
        return node.this, bool(node.args.get("quoted"))
    raise PolicyViolation("a name in the query is not a plain identifier; use plain column and table names")


def _allowed(schema: Schema, rule_names: tuple[str, ...]) -> set[str]:
    """The schema columns a rules list names (each rule name resolved like a SQL identifier)."""
    return {r for r in (schema.resolve(n) for n in rule_names) if r is not None}


def _fmt(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(names) if names else "none"


def _qcol(name: str) -> exp.Column:
    return exp.Column(this=exp.Identifier(this=name, quoted=True))


class _Checker:
    #: the filter an error shows when a WHERE operand is not a plain column
    FILTER_EXAMPLE: ClassVar[str] = "region = 'north'"

    def __init__(self, rules: QueryRules, schema: Schema, dataset: str) -> None:
        self.rules = rules
        self.schema = schema
        self.dataset = dataset
        self.table_names: set[str] = {dataset.lower()}
        self.used_filters: list[str] = []

    # -- names -------------------------------------------------------------
    def column(self, node: exp.Expr, where: str) -> Column:
        if not isinstance(node, exp.Column):
            raise PolicyViolation(f"{where} must be a plain column name")
        for key in ("db", "catalog"):
            if node.args.get(key):
                raise PolicyViolation(f"{where}: qualify columns at most with the table name `{self.dataset}`")
        table = node.args.get("table")
        if table is not None:
            tname, _ = _ident_name(table)
            if tname.lower() not in self.table_names:
                raise PolicyViolation(
                    f"{where}: column qualifier `{tname}` is not the dataset; use `{self.dataset}` or no qualifier"
                )
        if isinstance(node.this, exp.Star):
            raise PolicyViolation("SELECT * is not allowed; name the group columns and aggregates you want")
        name, _ = _ident_name(node.this)
        resolved = self.schema.resolve(name)
        if resolved is None:
            raise PolicyViolation(
                f"{where}: column `{name}` is not in the schema of dataset `{self.dataset}` "
                f"(columns: {_fmt(self.schema.names)})"
            )
        col = self.schema.column(resolved)
        if col.type == "key":
            raise PolicyViolation(
                f"{where}: column `{col.name}` is a join key; keys are never aggregated, filtered, grouped or released"
            )
        return col

    # -- FROM ----------------------------------------------------------------
    def from_(self, node: exp.Expr | None) -> None:
        if node is None:
            raise PolicyViolation(f"the query has no FROM; select FROM {self.dataset}")
        table = node.this
        if isinstance(table, exp.Subquery) or table.find(exp.Select) is not None:
            raise PolicyViolation(f"subqueries are not allowed; select directly FROM {self.dataset}")
        if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
            raise PolicyViolation(
                f"FROM must name the dataset `{self.dataset}` itself; table functions and files are not allowed"
            )
        for key, value in table.args.items():
            if key in ("this", "alias") or not value:
                continue
            if key == "joins":
                raise PolicyViolation("joins are not allowed; query the one dataset only")
            raise PolicyViolation(f"FROM must name the dataset `{self.dataset}` plainly; remove the table modifier")
        name, quoted = table.this.this, bool(table.this.args.get("quoted"))
        if (name != self.dataset) if quoted else (name.lower() != self.dataset.lower()):
            raise PolicyViolation(
                f"table `{name}` is not covered by this contract; select FROM {self.dataset}"
            )
        alias = table.args.get("alias")
        if alias is not None:
            if alias.args.get("columns"):
                raise PolicyViolation("column aliases on the table are not allowed; use the schema's column names")
            aname, _ = _ident_name(alias.this)
            self.table_names.add(aname.lower())

    # -- SELECT items ---------------------------------------------------------
    def select_item(self, item: exp.Expr) -> tuple[str | None, exp.Expr]:
        alias = None
        if isinstance(item, exp.Alias):
            alias, _ = _ident_name(item.args.get("alias"))
            item = item.this
        return alias, item

    def aggregate(self, node: exp.Expr, alias: str | None) -> Output:
        if isinstance(node, exp.Window):
            raise PolicyViolation("window functions (OVER) are not allowed; use plain aggregates with GROUP BY")
        if isinstance(node, exp.Filter):
            raise PolicyViolation("aggregate FILTER clauses are not allowed; use WHERE on allowed filter columns")
        func = _AGG_CLASSES.get(type(node))
        if func is None:
            fname = node.sql_name() if isinstance(node, exp.Func) and not isinstance(node, exp.Anonymous) else None
            if isinstance(node, exp.Anonymous):
                fname = str(node.this).upper()
            if fname:
                raise PolicyViolation(
                    f"function {fname} is not supported; aggregates are COUNT, SUM, AVG, VAR_SAMP, STDDEV_SAMP, "
                    f"MIN, MAX, MEDIAN, QUANTILE_CONT (allowed under this contract: {_fmt(self.rules.aggregates)})"
                )
            raise PolicyViolation(
                "each SELECT item must be a GROUP BY column or one aggregate of one column "
                "(e.g. AVG(income)); expressions are not allowed"
            )
        if func not in self.rules.aggregates:
            raise PolicyViolation(
                f"aggregate {func} is not allowed under this contract (allowed: {_fmt(self.rules.aggregates)})"
            )
        arg = node.this
        q = None
        if func == "QUANTILE":
            q = _quantile_fraction(node.args.get("expression"))
        elif func == "MEDIAN":
            q = "0.5"
        extra = [v for k, v in node.args.items() if k not in ("this", "big_int", "expression" if q else "") and v]
        if isinstance(arg, exp.Distinct) or node.find(exp.Distinct) is not None:
            raise PolicyViolation(f"DISTINCT inside {func} is not allowed; aggregate all rows")
        if extra:
            raise PolicyViolation(f"{func} takes exactly one column; remove the extra arguments")
        if func == "COUNT" and (isinstance(arg, exp.Star) or (isinstance(arg, exp.Literal) and not arg.is_string)):
            return Output(alias or "count_star", "agg", "COUNT", None)
        if isinstance(arg, exp.Star):
            raise PolicyViolation(f"{func}(*) is not allowed; name one column, e.g. {func}(income)")
        if arg is None:
            raise PolicyViolation(f"{func} needs one column, e.g. {func}(income)")
        if not isinstance(arg, exp.Column) or isinstance(arg.this, exp.Star):
            if arg.find(exp.Select) is not None:
                raise PolicyViolation("subqueries are not allowed; aggregate a plain column")
            raise PolicyViolation(
                f"functions or expressions inside {func} are not allowed; aggregate a plain column, e.g. {func}(income)"
            )
        name, _ = _ident_name(arg.this)
        # resolve against the schema first (as DuckDB will), then check the column it resolves to
        resolved = self.schema.resolve(name)
        if resolved is None or resolved not in _allowed(self.schema, self.rules.columns):
            raise PolicyViolation(
                f"column `{name}` may not be aggregated under this contract (allowed: {_fmt(self.rules.columns)})"
            )
        col = self.column(arg, f"{func}({name})")
        if not col.numeric:
            raise PolicyViolation(
                f"column `{col.name}` is a category; {func} needs a numeric column "
                f"(count rows per category with COUNT(*) and GROUP BY {col.name})"
            )
        lname = func.lower()
        if func == "QUANTILE":
            assert q is not None
            return Output(alias or f"quantile_{col.name}_{q.replace('.', '_')}", "agg", func, col.name, q)
        return Output(alias or f"{lname}_{col.name}", "agg", func, col.name, q)

    # -- WHERE ----------------------------------------------------------------
    def literal(self, node: exp.Expr, col: Column) -> exp.Expr:
        neg = False
        while isinstance(node, (exp.Neg, exp.Paren)):
            if isinstance(node, exp.Neg):
                neg = not neg
            node = node.this
        if isinstance(node, exp.Literal):
            if col.numeric:
                if node.is_string:
                    raise PolicyViolation(
                        f"filter on numeric column `{col.name}` must compare with a number, not a string"
                    )
                try:
                    d = Decimal(node.this)
                except InvalidOperation:
                    raise PolicyViolation(f"filter on `{col.name}` has a number that does not parse; write a plain decimal number") from None
                if not d.is_finite() or not math.isfinite(float(d)):
                    raise PolicyViolation(f"filter on `{col.name}` needs a finite number")
                d = -d if neg else d
                assert col.min is not None and col.max is not None
                if not Decimal(repr(col.min)) <= d <= Decimal(repr(col.max)):
                    bounds = col.to_dict()
                    raise PolicyViolation(
                        f"filter on `{col.name}` compares with a number outside its public bounds "
                        f"[{bounds['min']}, {bounds['max']}]; use a value within them"
                    )
                text = format(d, "f") if d == d.to_integral_value() and abs(d) < 10**30 else repr(float(d))
                return exp.Literal.number(text)
            if neg or not node.is_string:
                raise PolicyViolation(
                    f"filter on category column `{col.name}` must compare with a string literal, e.g. {col.name} = 'value'"
                )
            if node.this not in col.values:
                raise PolicyViolation(
                    f"filter on category column `{col.name}` compares with a value outside its public domain; "
                    f"use one of its listed values: {_fmt(col.values)}"
                )
            return exp.Literal.string(node.this)
        if isinstance(node, exp.Column):
            raise PolicyViolation(
                f"filters compare a column with a literal; comparing two columns is not allowed (column `{col.name}`)"
            )
        if node.find(exp.Select) is not None:
            raise PolicyViolation("subqueries are not allowed in WHERE; compare filter columns with literals")
        raise PolicyViolation(
            f"filters compare column `{col.name}` with a literal only; functions, NULL and expressions are not allowed"
        )

    def filter_operand(self, node: exp.Expr) -> exp.Column:
        """A filter's column side, parentheses removed: a plain column, never an aggregate, a subquery, a
        function or an expression."""
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.AggFunc):
            raise PolicyViolation("aggregates are not allowed in WHERE; filter rows on filter columns only")
        if node.find(exp.Select) is not None:
            raise PolicyViolation("subqueries are not allowed in WHERE; compare filter columns with literals")
        if not isinstance(node, exp.Column):
            raise PolicyViolation(
                f"each filter must compare a filter column with a literal (e.g. {self.FILTER_EXAMPLE}); "
                "functions and expressions on columns are not allowed"
            )
        return node

    def filter_column(self, node: exp.Expr) -> Column:
        node = self.filter_operand(node)
        if isinstance(node.this, exp.Star):
            raise PolicyViolation("* is not allowed in WHERE; compare a filter column with a literal")
        name, _ = _ident_name(node.this)
        resolved = self.schema.resolve(name)
        if resolved is None or resolved not in _allowed(self.schema, self.rules.filters):
            raise PolicyViolation(
                f"column `{name}` may not be used in WHERE under this contract (allowed filter columns: {_fmt(self.rules.filters)})"
            )
        col = self.column(node, "WHERE")
        self.used_filters.append(col.name)
        return col

    def where(self, node: exp.Expr) -> exp.Expr:
        """Check one WHERE node and return a freshly built equivalent."""
        if isinstance(node, exp.Paren):
            return exp.Paren(this=self.where(node.this))
        if isinstance(node, exp.And):
            return exp.And(this=self.where(node.this), expression=self.where(node.expression))
        if isinstance(node, exp.Or):
            return exp.Or(this=self.where(node.this), expression=self.where(node.expression))
        if isinstance(node, exp.Not):
            return exp.Not(this=exp.Paren(this=self.where(node.this)))
        if type(node) in _COMPARISONS:
            left, right = node.this, node.expression
            if _is_colish(right) and not _is_colish(left):
                left, right = right, left
                cls = _FLIP[type(node)]
            else:
                cls = type(node)
            col = self.filter_column(left)
            return cls(this=_qcol(col.name), expression=self.literal(right, col))
        if isinstance(node, exp.Between):
            if node.args.get("symmetric"):
                raise PolicyViolation("BETWEEN SYMMETRIC is not allowed; write BETWEEN low AND high")
            col = self.filter_column(node.this)
            return exp.Between(
                this=_qcol(col.name), low=self.literal(node.args["low"], col), high=self.literal(node.args["high"], col)
            )
        if isinstance(node, exp.In):
            if node.args.get("query") is not None or node.find(exp.Select) is not None:
                raise PolicyViolation("subqueries are not allowed in WHERE; IN takes a list of literals")
            if node.args.get("unnest") or node.args.get("field") or not node.expressions:
                raise PolicyViolation("IN takes a parenthesised list of literals, e.g. region IN ('north', 'south')")
            col = self.filter_column(node.this)
            return exp.In(this=_qcol(col.name), expressions=[self.literal(e, col) for e in node.expressions])
        if node.find(exp.Select) is not None:
            raise PolicyViolation("subqueries are not allowed in WHERE; compare filter columns with literals")
        if isinstance(node, exp.AggFunc):
            raise PolicyViolation("aggregates are not allowed in WHERE; filter rows on filter columns only")
        what = node.key.upper() if isinstance(node, exp.Expression) else "this"
        raise PolicyViolation(f"{what} is not allowed in WHERE; filters may use only {ALLOWED_WHERE}")


def _quantile_fraction(node: exp.Expr | None) -> str:
    """QUANTILE_CONT's fraction: one literal strictly between 0 and 1 with at most QUANTILE_PLACES decimals."""
    fix = "write one fraction between 0 and 1, e.g. QUANTILE_CONT(income, 0.9)"
    if not isinstance(node, exp.Literal) or node.is_string:
        raise PolicyViolation(f"QUANTILE_CONT takes one literal fraction (lists are not supported); {fix}")
    try:
        d = Decimal(node.this)
    except InvalidOperation:
        raise PolicyViolation(f"the quantile fraction does not parse; {fix}") from None
    if not d.is_finite() or not 0 < d < 1 or d != d.quantize(Decimal(1).scaleb(-QUANTILE_PLACES)):
        raise PolicyViolation(f"the quantile fraction must lie strictly between 0 and 1 with at most "
                              f"{QUANTILE_PLACES} decimal places; {fix}")
    return format(d.normalize(), "f")


def _is_colish(node: exp.Expr) -> bool:
    while isinstance(node, exp.Paren):
        node = node.this
    return isinstance(node, exp.Column)


# --------------------------------------------------------------------------- entry point


def plan_query(sql: str, rules: QueryRules, schema: Schema, dataset: str) -> QueryPlan:
    """Parse `sql`, check it against the contract `rules` and the public `schema`.

    Raises `InvalidInput` when the SQL does not parse (with the position) and
    `PolicyViolation` when the contract forbids it (naming the rule and fix).
    A plan is a pure function of its four inputs (frozen values), so accepted
    plans are remembered per (sql, rules, schema, dataset): every party checks
    the same query several times per job (the buyer, then each node at
    admission and at run time). Refusals are not remembered: they raise anew.
    """
    try:
        return _remembered_plan(sql, rules, schema, dataset)
    except TypeError:  # an unhashable argument (not a str, or a mutable rules object): check it uncached
        return _plan_query(sql, rules, schema, dataset)


@functools.lru_cache(maxsize=256)
def _remembered_plan(sql: str, rules: QueryRules, schema: Schema, dataset: str) -> QueryPlan:
    return _plan_query(sql, rules, schema, dataset)


def _plan_query(sql: str, rules: QueryRules, schema: Schema, dataset: str) -> QueryPlan:
    tree = _parse(sql)
    if isinstance(tree, (exp.Union, exp.Intersect, exp.Except)):
        raise PolicyViolation("UNION, INTERSECT and EXCEPT are not allowed; submit one SELECT")
    if not isinstance(tree, exp.Select):
        raise PolicyViolation(
            f"only a SELECT query is allowed (got {tree.key.upper()}); write SELECT ... FROM {dataset}"
        )
    for key, value in tree.args.items():
        if not value or key in ("expressions", "from_", "where", "group"):
            continue
        if key in _CLAUSES:
            what, fix = _CLAUSES[key]
            raise PolicyViolation(f"{what} is not allowed in a secure aggregate query; {fix}")
        raise PolicyViolation(
            f"the {key.rstrip('_').upper()} clause is not allowed; use only SELECT, FROM, WHERE and GROUP BY"
        )
    if tree.find(exp.Subquery) is not None:
        raise PolicyViolation(f"subqueries are not allowed; select directly FROM {dataset}")

    ck = _Checker(rules, schema, dataset)
    ck.from_(tree.args.get("from_"))

    # GROUP BY
    group_cols: list[str] = []
    group = tree.args.get("group")
    if group is not None:
        for key, value in group.args.items():
            if key != "expressions" and value:
                raise PolicyViolation(
                    "GROUP BY ALL, ROLLUP, CUBE and GROUPING SETS are not allowed; list the group columns by name"
                )
        for g in group.expressions:
            if isinstance(g, (exp.Rollup, exp.Cube, exp.GroupingSets)):
                raise PolicyViolation(
                    "GROUP BY ALL, ROLLUP, CUBE and GROUPING SETS are not allowed; list the group columns by name"
                )
            if isinstance(g, exp.Literal):
                raise PolicyViolation("GROUP BY by position is not allowed; list the group columns by name")
            if not isinstance(g, exp.Column):
                raise PolicyViolation("GROUP BY takes plain column names; expressions are not allowed")
            name, _ = _ident_name(g.this)
            resolved = schema.resolve(name)
            if resolved is None or resolved not in _allowed(schema, rules.group_by):
                raise PolicyViolation(
                    f"column `{name}` may not be grouped by under this contract (allowed group columns: {_fmt(rules.group_by)})"
                )
            col = ck.column(g, "GROUP BY")
            if col.type != "category":
                raise PolicyViolation(
                    f"GROUP BY column `{col.name}` is {col.type}; only category columns (with a public domain) can be grouped by"
                )
            if col.name not in group_cols:
                group_cols.append(col.name)

    # SELECT
    outputs: list[Output] = []
    for item in tree.expressions:
        if isinstance(item, exp.Star):
            raise PolicyViolation("SELECT * is not allowed; name the group columns and aggregates you want")
        alias, node = ck.select_item(item)
        if isinstance(node, exp.Column):
            col = ck.column(node, "SELECT")
            if col.name not in group_cols:
                raise PolicyViolation(
                    f"column `{col.name}` is selected but not grouped by; add it to GROUP BY or aggregate it"
                )
            outputs.append(Output(alias or col.name, "group", None, col.name))
        elif isinstance(node, exp.Subquery) or node.find(exp.Select) is not None:
            raise PolicyViolation("subqueries are not allowed; select group columns and aggregates only")
        else:
            outputs.append(ck.aggregate(node, alias))
    if not any(o.kind == "agg" for o in outputs):
        raise PolicyViolation("the query selects no aggregate; add one, e.g. COUNT(*)")
    mpc = [o.func for o in outputs if o.func in MPC_FUNCS]
    if mpc and len(mpc) != sum(1 for o in outputs if o.kind == "agg"):
        raise PolicyViolation("MIN, MAX, MEDIAN and QUANTILE_CONT run in MPC, apart from COUNT, SUM, AVG, VAR_SAMP and "
                              "STDDEV_SAMP; submit them as a separate query")
    if mpc and group_cols:
        raise PolicyViolation("MIN, MAX, MEDIAN and QUANTILE_CONT are computed over all rows (GROUP BY is not "
                              "supported for them); filter with WHERE instead, one query per group")
    names = [o.name for o in outputs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InvalidInput(f"output name `{dup}` appears twice; give each SELECT item a distinct alias")

    # WHERE
    where_node = tree.args.get("where")
    where = ck.where(where_node.this) if where_node is not None else None

    order = {n: i for i, n in enumerate(schema.names)}
    group_by = tuple(sorted(group_cols, key=order.__getitem__))
    agg_cols = {o.column for o in outputs if o.kind == "agg" and o.column is not None}
    columns = tuple(sorted(agg_cols, key=order.__getitem__))
    needs_sumsq = any(o.func in _NEEDS_SUMSQ for o in outputs)

    n_groups = 1
    for g in group_by:
        n_groups *= len(schema.column(g).values)
    per_group = slots_per_group(len(columns), needs_sumsq)
    if n_groups * per_group > MAX_SLOTS:
        raise PolicyViolation(
            f"the result needs {n_groups} groups x {per_group} slots = {n_groups * per_group} slots, over the limit of "
            f"{MAX_SLOTS}; group by fewer or smaller columns, or aggregate fewer columns"
        )

    canonical = _canonical_sql(dataset, group_by, outputs, where)
    return QueryPlan(
        dataset=dataset,
        group_by=group_by,
        outputs=tuple(outputs),
        where=where,
        columns=columns,
        needs_sumsq=needs_sumsq,
        filter_columns=tuple(sorted(set(ck.used_filters), key=order.__getitem__)),
        canonical_sql=canonical,
    )


_FUNC_BUILD = {"SUM": "SUM", "AVG": "AVG", "VAR_SAMP": "VAR_SAMP", "STDDEV_SAMP": "STDDEV_SAMP", "MIN": "MIN",
               "MAX": "MAX", "MEDIAN": "MEDIAN", "QUANTILE": "QUANTILE_CONT"}


def _canonical_sql(dataset: str, group_by: tuple[str, ...], outputs: list[Output], where: exp.Expr | None) -> str:
    items: list[exp.Expr] = []
    for o in outputs:
        if o.kind == "group":
            assert o.column is not None
            e: exp.Expr = _qcol(o.column)
        elif o.func == "COUNT":
            e = exp.Count(this=exp.Star() if o.column is None else _qcol(o.column))
        else:
            assert o.column is not None and o.func is not None
            args: list[exp.Expr] = [_qcol(o.column)]
            if o.func == "QUANTILE":
                args.append(exp.Literal.number(o.q))
            e = exp.Anonymous(this=_FUNC_BUILD[o.func], expressions=args)
        items.append(exp.alias_(e, exp.Identifier(this=o.name, quoted=True)))
    q = exp.select(*items).from_(exp.Table(this=exp.Identifier(this=dataset, quoted=True)))
    if where is not None:
        q = q.where(where.copy())
    if group_by:
        q = q.group_by(*[_qcol(g) for g in group_by])
    return q.sql(dialect=DIALECT)
