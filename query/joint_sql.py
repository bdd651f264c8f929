"""SQL policy for joint statistics: an aggregate query over two owners' products joined on the contract's key.

    SELECT bank.segment, COUNT(*) AS n, AVG(telco.arpu) FROM bank JOIN telco USING (phone_key)
    WHERE telco.tenure_months >= 12 GROUP BY bank.segment

Every node runs `plan_joint` by itself on the SQL of the signed job spec (the
buyer's CLI too, for fast feedback) and refuses what the contract's
`[vertical]` / `[vertical.joint]` rules forbid, with the same whitelist as
`query.sql`: one SELECT of group columns and COUNT / SUM / AVG of bare
columns, FROM exactly the contract's two products joined (INNER) on the key,
an optional WHERE of comparisons between filter columns and literals, and an
optional GROUP BY of category columns (public domains). Every column names its
product (`telco.arpu`, or a table alias). The key is never selected,
aggregated, filtered or grouped; it appears only in the join condition.

WHERE is split at its top-level ANDs: each part compares columns of one
product only, and is evaluated by that product's owner on its own rows (the
joined filter is the product of the owners' masks, computed in MPC). A part
that mixes both products (`bank.x = 1 OR telco.y = 2`) is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from sqlglot import exp

from fedtrust.errors import InvalidInput, PolicyViolation
from fedtrust.query.sql import _AGG_CLASSES, _CLAUSES, DIALECT, MPC_FUNCS, _Checker, _fmt, _ident_name, _parse
from fedtrust.trust.joint_rules import JOINT_AGGREGATES
from fedtrust.trust.schema import Column, Schema
from fedtrust.trust.vertical import VerticalRules

__all__ = ["MAX_JOINT_GROUPS", "JointOutput", "JointPlan", "plan_joint"]

#: most joined groups one joint query may ask for (the product of the group columns' domain sizes)
MAX_JOINT_GROUPS = 1024


@dataclass(frozen=True)
class JointOutput:
    """One SELECT item: a group column, or COUNT(*) (column None), COUNT / SUM / AVG of one product's column."""

    name: str
    kind: str  # "group" | "agg"
    func: str | None
    product: str | None
    column: str | None


@dataclass(frozen=True)
class JointPlan:
    """A checked joint query. Built only by `plan_joint`.

    `products` are the two datasets in party (rank) order; `group_by` and
    `columns` are (product, column) pairs in product order, then schema
    order, so joined group g is the row-major index over the group columns'
    domains. `where` holds, per product, a freshly built filter over that
    product's unqualified columns (None: no filter there).
    """

    products: tuple[str, ...]
    key: str
    group_by: tuple[tuple[str, str], ...]
    outputs: tuple[JointOutput, ...]
    columns: tuple[tuple[str, str], ...]
    where: tuple[tuple[str, exp.Expr | None], ...]
    canonical_sql: str

    def where_of(self, product: str) -> exp.Expr | None:
        return dict(self.where).get(product)

    def groups_of(self, product: str) -> tuple[str, ...]:
        return tuple(c for p, c in self.group_by if p == product)

    def columns_of(self, product: str) -> tuple[str, ...]:
        return tuple(c for p, c in self.columns if p == product)


class _JointChecker(_Checker):
    """`query.sql`'s checker with product-qualified names over two schemas (reuses its WHERE rebuilding)."""

    FILTER_EXAMPLE: ClassVar[str] = "telco.tenure_months >= 12"

    def __init__(self, rules: VerticalRules, schemas: dict[str, Schema]) -> None:
        assert rules.joint is not None
        self.vrules, self.joint, self.schemas = rules, rules.joint, schemas
        self.tables: dict[str, str] = {}  # lower-cased name or alias -> product
        self.used_filters: list[str] = []
        self.seen: set[str] = set()

    def resolve_table(self, node: exp.Expr | None, where: str) -> str:
        if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
            if node is not None and node.find(exp.Select) is not None:
                raise PolicyViolation("subqueries are not allowed; join the two products directly")
            raise PolicyViolation(f"{where} must name a product of this contract ({_fmt(list(self.schemas))}); "
                                  "table functions and files are not allowed")
        for key, value in node.args.items():
            if key not in ("this", "alias") and value:
                raise PolicyViolation(f"{where} must name a product plainly; remove the table modifier")
        name = node.this.this
        product = next((p for p in self.schemas if p.lower() == name.lower()), None)
        if product is None:
            raise PolicyViolation(f"table `{name}` is not a product of this contract; join "
                                  f"{' and '.join(self.schemas)}")
        alias = node.args.get("alias")
        names = [name.lower()]
        if alias is not None:
            if alias.args.get("columns"):
                raise PolicyViolation("column aliases on a table are not allowed; use the schema's column names")
            names.append(_ident_name(alias.this)[0].lower())
        for n in names:
            if self.tables.get(n, product) != product:
                raise PolicyViolation(f"the name `{n}` is used for both products; give each table its own alias")
            self.tables[n] = product
        return product

    def qualified(self, node: exp.Expr, where: str) -> tuple[str, Column]:
        if not isinstance(node, exp.Column):
            raise PolicyViolation(f"{where} must be a plain column name qualified by its product, e.g. telco.arpu")
        if isinstance(node.this, exp.Star):
            raise PolicyViolation("SELECT * is not allowed; name the group columns and aggregates you want")
        for key in ("db", "catalog"):
            if node.args.get(key):
                raise PolicyViolation(f"{where}: qualify columns only with their product, e.g. telco.arpu")
        name, _ = _ident_name(node.this)
        table = node.args.get("table")
        if table is None:
            raise PolicyViolation(f"{where}: column `{name}` must name its product, e.g. "
                                  f"{next(iter(self.schemas))}.{name}; joint queries qualify every column")
        tname, _ = _ident_name(table)
        product = self.tables.get(tname.lower())
        if product is None:
            raise PolicyViolation(f"{where}: qualifier `{tname}` is neither a joined product nor its alias")
        schema = self.schemas[product]
        resolved = schema.resolve(name)
        if resolved is None:
            raise PolicyViolation(f"{where}: column `{name}` is not in the schema of product `{product}` "
                                  f"(columns: {_fmt(schema.names)})")
        col = schema.column(resolved)
        if col.type == "key":
            raise PolicyViolation(f"{where}: column `{product}.{col.name}` is a join key; keys are never "
                                  "aggregated, filtered, grouped or released (they appear only in the join)")
        if col.name not in self.vrules.usable(product):
            raise PolicyViolation(f"{where}: column `{product}.{col.name}` may not be used under this contract "
                                  f"(usable for {product}: {_fmt(self.vrules.usable(product))})")
        return product, col

    def filter_column(self, node: exp.Expr) -> Column:
        product, col = self.qualified(self.filter_operand(node), "WHERE")
        if f"{product}.{col.name}" not in self.joint.filters:
            raise PolicyViolation(f"column `{product}.{col.name}` may not be used in WHERE under this contract "
                                  f"(allowed filter columns: {_fmt(self.joint.filters)})")
        self.seen.add(product)
        self.used_filters.append(f"{product}.{col.name}")
        return col

    def join(self, joins: list[exp.Expr], left: str) -> str:
        if len(joins) != 1:
            raise PolicyViolation(f"join exactly the two products of this contract once: FROM {left} JOIN "
                                  f"<other> USING ({self.vrules.key})")
        j = joins[0]
        if not isinstance(j, exp.Join):
            raise PolicyViolation("only an INNER JOIN of the two products is allowed")
        side, kind = (j.args.get("side") or "").upper(), (j.args.get("kind") or "").upper()
        if side or kind not in ("", "INNER"):
            raise PolicyViolation(f"{(side + ' ' + kind).strip()} JOIN is not allowed; joint statistics run over "
                                  "the aligned (INNER-joined) rows only")
        for key, value in j.args.items():
            if key not in ("this", "using", "on", "kind") and value:
                raise PolicyViolation("only a plain INNER JOIN ... USING (key) or ON a.key = b.key is allowed")
        right = self.resolve_table(j.this, "JOIN")
        if right == left:
            raise PolicyViolation("a product cannot be joined with itself; join the contract's two products")
        using, on = j.args.get("using"), j.args.get("on")
        key = self.vrules.key
        if using and not on:
            names = [_ident_name(u if isinstance(u, exp.Identifier) else u.this)[0] for u in using]
            if [n.lower() for n in names] != [key.lower()]:
                raise PolicyViolation(f"the products are joined on the contract's key only: USING ({key})")
        elif on is not None and not using:
            ok = (isinstance(on, exp.EQ) and all(isinstance(s, exp.Column) for s in (on.this, on.expression))
                  and {self._key_side(on.this), self._key_side(on.expression)} == {left, right})
            if not ok:
                raise PolicyViolation(f"the products are joined on the contract's key only: ON {left}.{key} = "
                                      f"{right}.{key} (or USING ({key}))")
        else:
            raise PolicyViolation(f"a join needs its condition on the contract's key: USING ({key})")
        return right

    def _key_side(self, col: exp.Column) -> str | None:
        table = col.args.get("table")
        if table is None or _ident_name(col.this)[0].lower() != self.vrules.key.lower():
            return None
        return self.tables.get(_ident_name(table)[0].lower())


def _conjuncts(node: exp.Expr) -> list[exp.Expr]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def plan_joint(sql: str, rules: VerticalRules | None, schemas: Sequence[tuple[str, Schema]]) -> JointPlan:
    """Parse `sql` and check it against a vertical contract's rules; `schemas` are (dataset, schema) of the
    two products in party order. InvalidInput when the SQL does not parse, PolicyViolation naming the rule."""
    if rules is None or rules.joint is None or "joint" not in rules.kinds:
        raise PolicyViolation("this contract sells no joint statistics (its [vertical] kinds do not include "
                              "\"joint\")")
    joint = rules.joint
    tree = _parse(sql)
    if not isinstance(tree, exp.Select):
        raise PolicyViolation("only one SELECT query is allowed; write SELECT ... FROM a JOIN b USING (key)")
    for key, value in tree.args.items():
        if not value or key in ("expressions", "from_", "where", "group", "joins"):
            continue
        if key in _CLAUSES:
            what, fix = _CLAUSES[key]
            raise PolicyViolation(f"{what} is not allowed in a joint statistics query; {fix.split(';')[0]}")
        raise PolicyViolation(f"the {key.rstrip('_').upper()} clause is not allowed; use only SELECT, FROM ... JOIN, "
                              "WHERE and GROUP BY")
    if tree.find(exp.Subquery) is not None:
        raise PolicyViolation("subqueries are not allowed; join the two products directly")
    order = {p: i for i, (p, _) in enumerate(schemas)}
    ck = _JointChecker(rules, dict(schemas))
    from_ = tree.args.get("from_")
    if from_ is None:
        raise PolicyViolation(f"the query has no FROM; select FROM {schemas[0][0]} JOIN {schemas[1][0]} "
                              f"USING ({rules.key})")
    left = ck.resolve_table(from_.this, "FROM")
    ck.join(tree.args.get("joins") or [], left)

    group_cols: list[tuple[str, str]] = []
    group = tree.args.get("group")
    if group is not None:
        if any(v for k, v in group.args.items() if k != "expressions"):
            raise PolicyViolation("GROUP BY ALL, ROLLUP, CUBE and GROUPING SETS are not allowed; list the group "
                                  "columns by name")
        for g in group.expressions:
            if not isinstance(g, exp.Column):
                raise PolicyViolation("GROUP BY takes plain qualified column names (e.g. bank.segment); positions "
                                      "and expressions are not allowed")
            product, col = ck.qualified(g, "GROUP BY")
            if f"{product}.{col.name}" not in joint.group_by:
                raise PolicyViolation(f"column `{product}.{col.name}` may not be grouped by under this contract "
                                      f"(allowed group columns: {_fmt(joint.group_by)})")
            if col.type != "category":
                raise PolicyViolation(f"GROUP BY column `{product}.{col.name}` is {col.type}; only category columns "
                                      "(with a public domain) can be grouped by")
            if (product, col.name) not in group_cols:
                group_cols.append((product, col.name))

    outputs: list[JointOutput] = []
    for item in tree.expressions:
        if isinstance(item, exp.Star):
            raise PolicyViolation("SELECT * is not allowed; name the group columns and aggregates you want")
        alias, node = ck.select_item(item)
        if isinstance(node, exp.Column):
            product, col = ck.qualified(node, "SELECT")
            if (product, col.name) not in group_cols:
                raise PolicyViolation(f"column `{product}.{col.name}` is selected but not grouped by; add it to "
                                      "GROUP BY or aggregate it")
            outputs.append(JointOutput(alias or col.name, "group", None, product, col.name))
        elif node.find(exp.Select) is not None:
            raise PolicyViolation("subqueries are not allowed; select group columns and aggregates only")
        else:
            outputs.append(_aggregate(ck, node, alias))
    if not any(o.kind == "agg" for o in outputs):
        raise PolicyViolation("the query selects no aggregate; add one, e.g. COUNT(*)")
    names = [o.name for o in outputs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InvalidInput(f"output name `{dup}` appears twice; give each SELECT item a distinct alias")

    where: dict[str, list[exp.Expr]] = {}
    where_node = tree.args.get("where")
    if where_node is not None:
        for part in _conjuncts(where_node.this):
            ck.seen = set()
            built = ck.where(part)
            if len(ck.seen) != 1:
                raise PolicyViolation("each part of WHERE joined by AND may compare columns of one product only "
                                      "(each owner filters its own rows); split the condition with AND")
            where.setdefault(next(iter(ck.seen)), []).append(built)

    def rank(pc: tuple[str, str]) -> tuple[int, int]:
        return order[pc[0]], dict(schemas)[pc[0]].names.index(pc[1])

    group_by = tuple(sorted(group_cols, key=rank))
    n_groups = 1
    for p, c in group_by:
        n_groups *= len(dict(schemas)[p].column(c).values)
    if n_groups > MAX_JOINT_GROUPS:
        raise PolicyViolation(f"the query has {n_groups} joined groups, over the limit of {MAX_JOINT_GROUPS}; "
                              "group by fewer or smaller columns")
    columns = tuple(sorted({(o.product, o.column) for o in outputs if o.kind == "agg" and o.column is not None
                            and o.product is not None}, key=rank))
    filters = tuple((p, _and_all(where[p]) if p in where else None) for p, _ in schemas)
    return JointPlan(products=tuple(p for p, _ in schemas), key=rules.key, group_by=group_by,
                     outputs=tuple(outputs), columns=columns, where=filters,
                     canonical_sql=_canonical(schemas, rules.key, group_by, outputs, filters))


def _aggregate(ck: _JointChecker, node: exp.Expr, alias: str | None) -> JointOutput:
    if isinstance(node, exp.Window):
        raise PolicyViolation("window functions (OVER) are not allowed; use plain aggregates with GROUP BY")
    func = _AGG_CLASSES.get(type(node))
    if func is None or func in MPC_FUNCS:  # (MIN, MAX, MEDIAN, QUANTILE are horizontal MPC aggregates)
        if isinstance(node, exp.Func):
            fname = str(node.this).upper() if isinstance(node, exp.Anonymous) else node.sql_name()
            raise PolicyViolation(f"function {fname} is not offered for joint statistics; aggregates are "
                                  f"{', '.join(JOINT_AGGREGATES)} (allowed under this contract: "
                                  f"{_fmt(ck.joint.aggregates)})")
        raise PolicyViolation("each SELECT item must be a GROUP BY column or one aggregate of one column "
                              "(e.g. AVG(telco.arpu)); expressions are not allowed")
    if func not in ck.joint.aggregates:
        raise PolicyViolation(f"aggregate {func} is not allowed for joint statistics under this contract "
                              f"(allowed: {_fmt(ck.joint.aggregates)})")
    arg = node.this
    if isinstance(arg, exp.Distinct) or node.find(exp.Distinct) is not None:
        raise PolicyViolation(f"DISTINCT inside {func} is not allowed; aggregate all rows")
    if [v for k, v in node.args.items() if k not in ("this", "big_int") and v]:
        raise PolicyViolation(f"{func} takes exactly one column; remove the extra arguments")
    if func == "COUNT" and (isinstance(arg, exp.Star) or (isinstance(arg, exp.Literal) and not arg.is_string)):
        return JointOutput(alias or "count_star", "agg", "COUNT", None, None)
    if not isinstance(arg, exp.Column) or isinstance(arg.this, exp.Star):
        raise PolicyViolation(f"{func} takes one plain qualified column, e.g. {func}(telco.arpu); functions, "
                              "expressions and * are not allowed there")
    product, col = ck.qualified(arg, f"{func}(...)")
    if not col.numeric:
        raise PolicyViolation(f"column `{product}.{col.name}` is a category; {func} needs a numeric column "
                              f"(count rows per category with COUNT(*) and GROUP BY {product}.{col.name})")
    return JointOutput(alias or f"{func.lower()}_{product}_{col.name}", "agg", func, product, col.name)


def _and_all(parts: list[exp.Expr]) -> exp.Expr:
    out = parts[0]
    for p in parts[1:]:
        out = exp.And(this=out, expression=p)
    return out


def _qualify(tree: exp.Expr, product: str) -> exp.Expr:
    tree = tree.copy()
    for c in tree.find_all(exp.Column):
        c.set("table", exp.Identifier(this=product, quoted=True))
    return tree


def _canonical(schemas: Sequence[tuple[str, Schema]], key: str, group_by: tuple[tuple[str, str], ...],
               outputs: list[JointOutput], where: tuple[tuple[str, exp.Expr | None], ...]) -> str:
    """The checked query as DuckDB SQL over the two products as tables (what a plaintext join would run)."""
    def col(p: str, c: str) -> exp.Column:
        return exp.Column(this=exp.Identifier(this=c, quoted=True), table=exp.Identifier(this=p, quoted=True))

    items: list[exp.Expr] = []
    for o in outputs:
        if o.kind == "group":
            e: exp.Expr = col(o.product or "", o.column or "")
        elif o.column is None:
            e = exp.Count(this=exp.Star())
        else:
            e = exp.Anonymous(this=o.func, expressions=[col(o.product or "", o.column)])
        items.append(exp.alias_(e, exp.Identifier(this=o.name, quoted=True)))
    (a, _), (b, _) = schemas
    q = exp.select(*items).from_(exp.Table(this=exp.Identifier(this=a, quoted=True))).join(
        exp.Table(this=exp.Identifier(this=b, quoted=True)), using=[exp.Identifier(this=key, quoted=True)])
    conds = [_qualify(w, p) for p, w in where if w is not None]
    if conds:
        q = q.where(_and_all(conds))
    if group_by:
        q = q.group_by(*[col(p, c) for p, c in group_by])
    return q.sql(dialect=DIALECT)

