"""The plaintext answer a trusted party would compute over the pooled rows (for comparison only).

It applies the same admission rule as the nodes — each owner's contribution
to a group with fewer than `min_group_size` matching rows is left out — and
then runs the buyer's SQL with DuckDB over the union of the admitted rows.
It does not model the per-column threshold or the domain filter, which
change nothing on the demo's data (no NULLs, every category listed).
The demo shows it next to fedtrust's answer; the tests assert they agree.
Nothing in fedtrust's release path calls this.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import duckdb

from fedtrust.query.sql import QueryPlan
from fedtrust.trust.schema import Schema


def _reader(path: Path) -> str:
    fn = "read_parquet" if path.suffix == ".parquet" else "read_csv_auto"
    return f"{fn}('{path}')"


def pooled_answer(plan: QueryPlan, sql: str, files: Sequence[Path], min_group_size: int,
                  schema: Schema | None = None) -> tuple[list[str], list[tuple]]:
    """(columns, rows); with `schema`, grouped rows come in the public domain order, as fedtrust shows them."""
    con = duckdb.connect()
    union = " UNION ALL ".join(f"SELECT *, {i} AS _owner FROM {_reader(Path(f))}" for i, f in enumerate(files))
    con.execute(f"CREATE TABLE _all AS {union}")
    where = f"WHERE {plan.where.sql(dialect='duckdb')}" if plan.where is not None else ""
    keys = ", ".join(f'"{g}"' for g in plan.group_by)
    sel = f"_owner{', ' + keys if keys else ''}"
    con.execute(
        f"CREATE TABLE _admitted AS SELECT {sel} FROM _all {where} GROUP BY {sel} HAVING COUNT(*) >= {min_group_size}"
    )
    on = " AND ".join(["a._owner = b._owner"] + [f'a."{g}" = b."{g}"' for g in plan.group_by])
    con.execute(f"CREATE VIEW {plan.dataset} AS SELECT a.* FROM _all a SEMI JOIN _admitted b ON {on}")
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    rows = cur.fetchall()
    if schema is not None and plan.group_by:
        pos = [cols.index(g) for g in plan.group_by if g in cols]
        order = [list(schema.column(g).values) for g in plan.group_by if g in cols]
        rows.sort(key=lambda r: tuple(o.index(r[p]) if r[p] in o else len(o) for p, o in zip(pos, order)))
    con.close()
    return cols, rows
