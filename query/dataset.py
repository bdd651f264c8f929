"""Node side: run a checked query plan over the node's own data file, sandboxed.

`Dataset.open` loads the product file (CSV or Parquet) into an in-memory
DuckDB database once, with the schema's column types, inside a sandbox:

1. ``SET allowed_paths=['<the resolved product file>']`` and
   ``SET enable_external_access=false`` *before* anything is read, so the
   only file DuckDB can ever touch is the product file itself;
2. the file is loaded into a table (repeated queries are fast and do not
   re-read the file);
3. ``SET lock_configuration=true``, so no later statement can lift the
   sandbox (verified with duckdb 2.0.1: reading other files, ``INSTALL``,
   ``LOAD``, ``ATTACH``, ``COPY … TO``, ``EXPORT`` and
   ``SET enable_external_access=true`` are all refused afterwards).

`Dataset.aggregate` never runs the buyer's SQL text: it builds a fresh
statement from the checked `QueryPlan` with sqlglot expressions (quoted
identifiers, literals rendered by sqlglot): the plan's filter tree, plus the
*domain filter* — only rows whose every category column holds a value listed
in its public domain (not NULL, not an unlisted value) — which is the same
for every query, grouped or not, so that no difference between two queries
(COUNT(*) minus the sum of a GROUP BY, a filter and its complement) can
isolate rows outside the domain; ``out_of_domain_rows`` counts those rows
for the owner's log,
and per numeric column the exact HUGEINT aggregates of the quantised value
``q = CAST(round((LEAST(GREATEST(col, min), max) - min) * scale) AS HUGEINT)``
(NULL stays NULL; int columns are clipped and shifted in integer arithmetic;
a float NaN clips to the column's maximum, where plain DuckDB would answer
NaN).
The result is one `GroupStats` per group present, ready for
`fedtrust.query.encoding.encode`.

DuckDB errors are turned into `InvalidInput` / `PolicyViolation` /
`ConfigError` messages that name the problem, never a data value (DuckDB's
own messages often quote the offending value, so they are not passed on).
"""
from __future__ import annotations

import codecs
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from sqlglot import exp

from fedtrust.errors import ConfigError, InvalidInput, PolicyViolation
from fedtrust.query.encoding import GroupArrays, GroupStats
from fedtrust.query.layout import LIMB_BITS, LIMB_MASK, LIMBS, Layout, scale_of
from fedtrust.query.sql import QueryPlan
from fedtrust.trust.schema import Column, Schema

DIALECT = "duckdb"
TABLE = "dataset"
_SQL_TYPES = {"category": "VARCHAR", "float": "DOUBLE", "int": "BIGINT", "key": "VARCHAR"}
_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_CHUNK = 1 << 20

#: node types a plan's filter tree may contain (checked again here, defence in depth)
_WHERE_NODES = (
    exp.And, exp.Or, exp.Not, exp.Paren, exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE,
    exp.Between, exp.In, exp.Column, exp.Identifier, exp.Literal,
)  # fmt: skip


@dataclass(frozen=True)
class ColumnSummary:
    """One numeric column over the rows a query counts: what an MPC MIN/MAX/quantile job takes from a node."""

    count: int  # non-null values
    min: float | None  # clipped to the public bounds; None without values
    max: float | None
    histogram: tuple[int, ...]  # counts in `bins` equal bins over the public bounds [min, max]


@dataclass(frozen=True)
class ColumnProfile:
    column: str
    type: str
    rows: int
    nulls: int
    clipped: int  # numeric values outside [min, max]: every answer clips them to the bounds
    outside_domain: int  # category values not among the listed values: no query counts these rows


def file_digest(path: str | Path) -> str:
    """sha256 hex of the file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        raise ConfigError(f"data file {path} does not exist; check the product's path in the node config") from None
    return h.hexdigest()


#: common markers of a missing value in CSVs written by R, Excel, pandas and databases
NA_MARKERS = ("NA", "N/A", "#N/A", "NULL", "null", "NaN", "nan", "None", "-", ".")


def check_encoding(name: str) -> str:
    """A Python codec name for `encoding = "…"` in NODE.toml (ConfigError for an unknown one)."""
    try:
        return codecs.lookup(name).name
    except (LookupError, TypeError):
        raise ConfigError(f'encoding {name!r} is not a known text encoding; use e.g. "utf-8", "gb18030" or "latin-1"') from None


def _utf8_error(p: Path) -> int | None:
    """The byte offset of the first invalid UTF-8 sequence in the file, or None when it is all UTF-8."""
    dec = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            try:
                dec.decode(chunk)
            except UnicodeDecodeError as e:
                return offset + e.start
            offset += len(chunk)
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError as e:
            return offset + e.start
    return None


def _guess_encoding(p: Path) -> str:
    with open(p, "rb") as f:
        head = f.read(1 << 20)
    for enc in ("gb18030", "big5", "shift_jis", "cp1252"):
        try:
            codecs.getincrementaldecoder(enc)().decode(head)  # not final: the 1 MiB may end inside a character
            return enc
        except UnicodeDecodeError:
            continue
    return "latin-1"


def _transcode(src: Path, dst: Path, encoding: str) -> None:
    """Decode `src` from `encoding` and write it as UTF-8 to `dst` (created 0600); ConfigError on a bad byte."""
    dec = codecs.getincrementaldecoder(encoding)()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    offset = 0
    with open(src, "rb") as f, os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
        try:
            while chunk := f.read(_CHUNK):
                out.write(dec.decode(chunk))
                offset += len(chunk)
            out.write(dec.decode(b"", final=True))
        except UnicodeError as e:  # a decode error, or e.g. UTF-16 without a byte-order mark
            at = offset + getattr(e, "start", 0)
            raise ConfigError(f"data file {src.name} is not valid {encoding} (at byte {at}); fix the "
                              "dataset's `encoding` in the node config") from None


def encoding_problem(p: Path) -> str | None:
    """A one-line message naming the fix when the CSV is not UTF-8, else None."""
    at = _utf8_error(p)
    if at is None:
        return None
    enc = _guess_encoding(p)
    return (f"data file {p.name} is not UTF-8 (invalid byte sequence at byte {at}; it looks like {enc.upper()}): "
            f'declare encoding = "{enc}" for this dataset in the node config (`--encoding {enc}` for '
            "`fedtrust predict`), or convert it with "
            f"`iconv -f {enc.upper()} -t UTF-8 {p.name} > {p.stem}.utf8{p.suffix}` and list the converted file")


def _lit(value: str) -> str:
    return exp.Literal.string(value).sql(dialect=DIALECT)


def _q(name: str) -> exp.Column:
    return exp.Column(this=exp.Identifier(this=name, quoted=True))


def _one(cursor: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    """The one row an aggregate query returns (DuckDB always returns it; None would be a DuckDB bug)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("DuckDB returned no row for an aggregate query")
    return row


def _num(x: float | int) -> exp.Expr:
    if isinstance(x, int):
        return exp.Literal.number(str(x))
    return exp.Cast(this=exp.Literal.number(repr(float(x))), to=exp.DataType.build("DOUBLE"))


def _greatest(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    # a plain DuckDB GREATEST call (sqlglot would wrap exp.Greatest in NULL checks;
    # `_quantized` handles NULL itself)
    return exp.Anonymous(this="GREATEST", expressions=[a, b])


def _least(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this="LEAST", expressions=[a, b])


def _and(conds: list[exp.Expr]) -> exp.Expr:
    cond = conds[0]
    for extra in conds[1:]:
        cond = exp.And(this=cond, expression=extra)
    return cond


@dataclass(frozen=True)
class AlignedColumns:
    """One owner's columns for a joint query, row i = aligned row i (see `Dataset.aligned_columns`)."""

    groups: Any  # int64 [N, group columns]: domain index, -1 outside the domain or NULL
    values: Any  # int64 [N, value columns]: quantized, 0 where NULL
    present: Any  # int64 [N, value columns]: 1 where the value is not NULL
    keep: Any  # int64 [N]: 1 where the row passes the owner's filter and the public-domain filter


@dataclass(frozen=True)
class DerivedColumns:
    """Columns the node computes once at load, from public schema facts only, so a query need not.

    * per category column, its *domain index*: the value's position in the
      public domain (an ENUM of the listed values, `TRY_CAST` + `enum_code`),
      NULL for NULL or an unlisted value. `index IS NOT NULL` is exactly
      `col IN (listed values)` (byte-exact string equality, tested), and the
      GROUP BY runs over small integers instead of strings;
    * per numeric column, its quantised value q (`Dataset._quantized` with the
      column's public scale), in the smallest integer type that holds the
      public span `(max - min) × scale` (`_Q_TYPES`: a 0/1 flag takes one
      byte, an age two, a float with six decimals eight; below 2^126 as
      HUGEINT); with a wider span q is computed per query (and overflows there,
      as before).

    The names start with a prefix no schema column shares (case folded), and
    no filter can name them (`_check_where` admits schema columns only).
    """

    domain: dict[str, str]
    quantized: dict[str, str]
    enums: dict[str, str]
    names: tuple[str, ...]  # in the table's order (schema order)

    @classmethod
    def for_schema(cls, schema: Schema) -> "DerivedColumns":
        prefix = "__fedtrust_"
        while any(n.lower().startswith(prefix) for n in schema.names):
            prefix = "_" + prefix
        domain, quantized, enums, names = {}, {}, {}, []
        for i, c in enumerate(schema.columns):
            if c.type == "category":
                domain[c.name], enums[c.name] = f"{prefix}d{i}", f"{prefix}enum{i}"
                names.append(domain[c.name])
            elif c.numeric and c.min is not None and c.max is not None and _span(c) < 2**126:
                quantized[c.name] = f"{prefix}q{i}"
                names.append(quantized[c.name])
        return cls(domain, quantized, enums, tuple(names))

    def statements(self, schema: Schema) -> list[str]:
        """The ENUM types of the public domains (run before the table is created)."""
        return [f"CREATE TYPE {_ident(self.enums[c.name])} AS ENUM ({', '.join(_lit(v) for v in c.values)})"
                for c in schema.columns if c.name in self.enums]

    def items(self, schema: Schema) -> list[str]:
        """The SELECT items that compute the derived columns from the schema's columns."""
        out = []
        for c in schema.columns:
            if c.name in self.domain:
                cast = exp.TryCast(this=_q(c.name), to=exp.DataType.build(self.enums[c.name], udt=True))
                code = exp.Anonymous(this="enum_code", expressions=[cast])
                out.append(exp.alias_(code, exp.Identifier(this=self.domain[c.name], quoted=True)))
            elif c.name in self.quantized:
                typ = next(t for bound, t in _Q_TYPES if _span(c) < bound)
                q = exp.Cast(this=Dataset._quantized(c, scale_of(c)), to=exp.DataType.build(typ, dialect=DIALECT))
                out.append(exp.alias_(q, exp.Identifier(this=self.quantized[c.name], quoted=True)))
        return [e.sql(dialect=DIALECT) for e in out]


#: (exclusive bound on the public span, type) for a kept q; one below the type's limit, so that q, the span
#: rounded half away from zero, still fits
_Q_TYPES = ((2**8 - 1, "UTINYINT"), (2**16 - 1, "USMALLINT"), (2**32 - 1, "UINTEGER"), (2**62, "BIGINT"),
            (2**126, "HUGEINT"))


def _span(c: Column) -> float:
    """The public span of a numeric column's quantised values, (max - min) × scale."""
    assert c.min is not None and c.max is not None
    return (float(c.max) - float(c.min)) * scale_of(c)


def _ident(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect=DIALECT)


class Dataset:
    """One product file loaded into a sandboxed in-memory DuckDB database."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, schema: Schema) -> None:
        self._con = con
        self._lock = threading.Lock()
        #: statements already built, keyed by everything `build_sql` reads (bounded; see there)
        self._statements: "OrderedDict[tuple, str]" = OrderedDict()
        self.path = path
        self.schema = schema
        self.derived = DerivedColumns.for_schema(schema)

    # ------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: str | Path, schema: Schema, *, encoding: str = "utf-8",
             null_values: tuple[str, ...] = ("",), threads: int | None = None) -> "Dataset":
        """Load the file; a CSV in another `encoding` is transcoded to UTF-8 in a private temporary file
        first, and the strings in `null_values` read as missing (SQL NULL). `threads` caps DuckDB's
        threads for this dataset (default: DuckDB's, one per core); it is locked with the sandbox."""
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ConfigError("query_threads must be a whole number of at least 1")
        try:
            p = Path(path).resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            raise ConfigError(f"data file {path} does not exist; check the product's path in the node config") from None
        if not p.is_file():
            raise ConfigError(f"data file {p} is not a regular file")
        suffix = p.suffix.lower()
        if suffix in _CSV_SUFFIXES:
            kind = "csv"
        elif suffix in _PARQUET_SUFFIXES:
            kind = "parquet"
        else:
            raise ConfigError(f"data file {p} has an unknown extension; use .csv or .parquet")

        encoding = check_encoding(encoding)
        source, tmpdir = p, None
        if kind == "csv" and encoding != "utf-8":
            tmpdir = tempfile.TemporaryDirectory(prefix="fedtrust-utf8-")
            source = Path(tmpdir.name) / "data.csv"
            _transcode(p, source, encoding)
        con = duckdb.connect(
            ":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        )
        try:
            con.execute(f"SET allowed_paths=[{_lit(str(source))}]")
            con.execute("SET enable_external_access=false")
            if threads is not None:
                con.execute(f"SET threads={int(threads)}")
            cls._load(con, source, kind, schema, null_values, p)
            con.execute("SET lock_configuration=true")
        except BaseException:
            con.close()
            raise
        finally:
            if tmpdir is not None:  # the rows are in DuckDB's memory now; the UTF-8 copy goes
                tmpdir.cleanup()
        return cls(con, p, schema)

    @staticmethod
    def _load(con: duckdb.DuckDBPyConnection, p: Path, kind: str, schema: Schema,
              null_values: tuple[str, ...] = ("",), original: Path | None = None) -> None:
        src = _lit(str(p))
        shown = original or p
        nulls = "[" + ", ".join(_lit(v) for v in null_values) + "]"
        reader = (f"read_csv({src}, header=true, all_varchar=true, nullstr={nulls})" if kind == "csv"
                  else f"read_parquet({src})")
        try:
            header = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
        except duckdb.Error as e:
            problem = encoding_problem(p) if kind == "csv" else None
            if problem:
                raise ConfigError(problem) from None
            raise ConfigError(f"data file {shown} cannot be read as {kind.upper()} ({type(e).__name__}); check the file") from None
        lower: dict[str, str] = {}
        for h in header:
            lower.setdefault(h.lower(), h)
        found: dict[str, str] = {}
        for c in schema.columns:
            h = c.name if c.name in header else lower.get(c.name.lower())
            if h is None:
                raise ConfigError(
                    f"schema column `{c.name}` is missing from data file {shown.name}; add it to the file or fix "
                    "the schema"
                )
            found[c.name] = h
        if kind == "csv":
            by_header = {found[c.name]: c for c in schema.columns}
            struct = ", ".join(
                f"{_lit(h)}: {_lit(_SQL_TYPES[by_header[h].type] if h in by_header else 'VARCHAR')}" for h in header
            )
            source = f"read_csv({src}, header=true, columns={{{struct}}}, nullstr={nulls})"
        else:
            source = f"read_parquet({src})"
        items = ", ".join(
            exp.alias_(
                exp.Cast(this=_q(found[c.name]), to=exp.DataType.build(_SQL_TYPES[c.type])),
                exp.Identifier(this=c.name, quoted=True),
            ).sql(dialect=DIALECT)
            for c in schema.columns
        )
        table = exp.to_identifier(TABLE, quoted=True).sql(dialect=DIALECT)
        derived = DerivedColumns.for_schema(schema)
        for stmt in derived.statements(schema):
            con.execute(stmt)
        computed = "".join(", " + d for d in derived.items(schema))
        try:
            con.execute(f"CREATE TABLE {table} AS SELECT *{computed} FROM (SELECT {items} FROM {source})")
        except duckdb.Error:
            problem = encoding_problem(p) if kind == "csv" else None
            if problem:
                raise ConfigError(problem) from None
            bad = Dataset._bad_column(con, reader, schema, found)
            if bad is not None:
                column, marker = bad
                hint = (f"; if {marker!r} marks a missing value, declare null_values = [\"\", \"{marker}\"] for this "
                        "dataset in the node config" if marker else "")
                raise ConfigError(
                    f"column `{column.name}` of data file {shown.name} holds values that are not {column.type} as the "
                    f"schema declares; fix the file or the schema{hint}"
                ) from None
            raise ConfigError(f"data file {shown.name} cannot be loaded with the schema's column types; check the file") from None
        # the table must have exactly the schema's columns: DuckDB folds case and renames clashes (`x`, `x_1`),
        # and a query must never reach a column under another column's name
        loaded = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
        if loaded != list(schema.names) + list(derived.names):
            extra = [n for n in loaded if n not in schema.names and n not in derived.names]
            missing = [n for n in schema.names if n not in loaded]
            raise ConfigError(
                f"data file {shown.name} loaded with columns other than the schema's (not in the schema: "
                f"{', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'}); fix the schema or the file"
            )

    @staticmethod
    def _bad_column(con: Any, reader: str, schema: Schema, found: dict[str, str]) -> tuple[Column, str | None] | None:
        """The first column with a value its type refuses, and the missing-value marker it holds, if it holds one
        (a marker such as NA is not a data value, so naming it is safe)."""
        for c in schema.columns:
            col = _q(found[c.name]).sql(dialect=DIALECT)
            bad = f"FROM {reader} WHERE {col} IS NOT NULL AND TRY_CAST({col} AS {_SQL_TYPES[c.type]}) IS NULL"
            try:
                n = con.execute(f"SELECT count(*) {bad}").fetchone()[0]
                if not n:
                    continue
                markers = ", ".join(_lit(m) for m in NA_MARKERS)
                row = con.execute(f"SELECT trim({col}) AS v {bad} AND trim({col}) IN ({markers}) LIMIT 1").fetchone()
            except duckdb.Error:
                return c, None
            return c, row[0] if row else None
        return None

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "Dataset":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- profile
    def profile(self) -> list[ColumnProfile]:
        """Per schema column: rows that are NULL, outside the public bounds (clipped in every answer) or
        outside the public domain (left out of every query). Counts only, for the owner's own check."""
        table = exp.to_identifier(TABLE, quoted=True).sql(dialect=DIALECT)
        out = []
        for c in self.schema.columns:
            col = _q(c.name).sql(dialect=DIALECT)
            clipped = "0"
            if c.type != "category":
                conds = [f"{col} < {_num(c.min).sql(dialect=DIALECT)}"] if c.min is not None else []
                conds += [f"{col} > {_num(c.max).sql(dialect=DIALECT)}"] if c.max is not None else []
                if conds:
                    clipped = f"count(*) FILTER (WHERE {' OR '.join(conds)})"
            outside = "0"
            if c.type == "category" and c.values:
                values = ", ".join(_lit(v) for v in c.values)
                outside = f"count(*) FILTER (WHERE {col} IS NOT NULL AND {col} NOT IN ({values}))"
            with self._lock:
                rows, nulls, n_clipped, n_outside = _one(self._con.execute(
                    f"SELECT count(*), count(*) - count({col}), {clipped}, {outside} FROM {table}"))
            out.append(ColumnProfile(c.name, c.type, int(rows), int(nulls), int(n_clipped), int(n_outside)))
        return out

    # --------------------------------------------------------------- columns
    def columns(self, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
        """Read-only: the named schema columns, in file order, as NumPy arrays (masked where NULL).

        For federated training, which preprocesses rows on the node itself
        (`fedtrust.training.preprocess`). Only schema columns can be named;
        the statement is built from quoted identifiers, never from text.
        """
        for n in names:
            if not self.schema.has(n):
                raise PolicyViolation(f"column `{n}` is not in the product schema")
            if self.schema.column(n).type == "key":
                raise PolicyViolation(f"column `{n}` is a join key; only a vertical job's PSI reads it (`join_keys`)")
        if not names:
            return {}
        query = exp.select(*[_q(n) for n in names]).from_(exp.Table(this=exp.Identifier(this=TABLE, quoted=True)))
        with self._lock:
            cur = self._con.cursor()
        try:
            return dict(cur.execute(query.sql(dialect=DIALECT)).fetchnumpy())
        except duckdb.Error as e:
            raise InvalidInput(f"reading training columns failed on this node's data ({type(e).__name__})") from None
        finally:
            cur.close()

    def columns_at(self, names: tuple[str, ...] | list[str], row_ids: list[int]) -> dict[str, Any]:
        """The named columns of the rows `row_ids` (row ids as `join_keys` gives them), in that order.

        For vertical jobs, which read this node's rows in a PSI alignment's order."""
        import numpy as np

        for n in names:
            if not self.schema.has(n) or self.schema.column(n).type == "key":
                raise PolicyViolation(f"column `{n}` is not a value column of the product schema")
        table = exp.Table(this=exp.Identifier(this=TABLE, quoted=True))
        query = exp.select(exp.column("rowid"), *[_q(n) for n in names]).from_(table).order_by(exp.column("rowid"))
        with self._lock:
            cur = self._con.cursor()
        try:
            got = dict(cur.execute(query.sql(dialect=DIALECT)).fetchnumpy())
        except duckdb.Error as e:
            raise InvalidInput(f"reading aligned rows failed on this node's data ({type(e).__name__})") from None
        finally:
            cur.close()
        have = np.asarray(got.pop("rowid"), dtype=np.int64)
        ids = np.asarray(row_ids, dtype=np.int64)
        pos = np.searchsorted(have, ids)
        if ids.size and (pos.max() >= len(have) or not np.array_equal(have[np.minimum(pos, len(have) - 1)], ids)):
            raise InvalidInput("a vertical job's alignment names rows this node's data does not have; run PSI again")
        return {k: v[pos] for k, v in got.items()}

    def join_keys(self, column: str) -> tuple[list[int], list[bytes]]:
        """(row ids, key bytes) of the rows whose join key is not NULL, in file order; for PSI only.

        The column must be declared `type = "key"`; its values never leave the node (PSI hashes and
        blinds them)."""
        if not self.schema.has(column) or self.schema.column(column).type != "key":
            raise PolicyViolation(f"column `{column}` is not a join key (type \"key\") of this product")
        table = exp.Table(this=exp.Identifier(this=TABLE, quoted=True))
        query = (exp.select(exp.column("rowid"), _q(column)).from_(table)
                 .where(exp.Not(this=exp.Is(this=_q(column), expression=exp.Null()))).order_by(exp.column("rowid")))
        with self._lock:
            cur = self._con.cursor()
        try:
            rows = cur.execute(query.sql(dialect=DIALECT)).fetchall()
        except duckdb.Error as e:
            raise InvalidInput(f"reading the join key failed on this node's data ({type(e).__name__})") from None
        finally:
            cur.close()
        return [int(r) for r, _ in rows], [str(k).encode() for _, k in rows]

    def aligned_columns(self, rows: list[int], groups: tuple[str, ...], values: tuple[tuple[str, int], ...],
                        where: exp.Expr | None) -> "AlignedColumns":
        """This owner's part of a joint query, for `rows` (row ids from `join_keys`, in the PSI's common order):
        per row the domain index of each group column (-1 outside the public domain or NULL), each value
        column quantized like `aggregate` does (`round((clip(v) - min) * scale)`, 0 where NULL) with its
        non-null flag, and whether the row passes `where` and the domain filter every query applies.

        Private to the node: these feed the MPC as this owner's secret input and never leave it in clear.
        """
        if where is not None:
            self._check_where(where)
        items: list[exp.Expr] = [exp.alias_(exp.column("rowid"), "rid", quoted=True)]
        for i, g in enumerate(groups):
            col = self.schema.column(g)
            if col.type != "category":
                raise PolicyViolation(f"group column `{g}` is not a category column")
            case = exp.Case(ifs=[exp.If(this=exp.EQ(this=_q(g), expression=exp.Literal.string(v)),
                                        true=exp.Literal.number(k)) for k, v in enumerate(col.values)],
                            default=exp.Literal.number(-1))
            items.append(exp.alias_(case, f"g{i}", quoted=True))
        for j, (name, scale) in enumerate(values):
            col = self.schema.column(name)
            if not col.numeric:
                raise PolicyViolation(f"column `{name}` is not numeric")
            q = exp.Cast(this=self._quantized(col, scale), to=exp.DataType.build("BIGINT"))
            items.append(exp.alias_(exp.func("COALESCE", q, exp.Literal.number(0)), f"v{j}", quoted=True))
            items.append(exp.alias_(exp.Cast(this=exp.Not(this=exp.Is(this=_q(name), expression=exp.Null())),
                                             to=exp.DataType.build("BIGINT")), f"n{j}", quoted=True))
        conds = self._domain_conditions() + ([exp.Paren(this=where.copy())] if where is not None else [])
        keep = exp.Literal.number(1) if not conds else exp.Case(
            ifs=[exp.If(this=_and(conds), true=exp.Literal.number(1))], default=exp.Literal.number(0))
        items.append(exp.alias_(keep, "keep", quoted=True))
        query = exp.select(*items).from_(exp.Table(this=exp.Identifier(this=TABLE, quoted=True)))
        with self._lock:
            cur = self._con.cursor()
        try:
            got = cur.execute(query.sql(dialect=DIALECT)).fetchnumpy()
        except duckdb.OutOfRangeException:
            raise PolicyViolation("a quantized value overflowed 64 bits on this node; narrow the contract's column "
                                  "bounds") from None
        except duckdb.Error as e:
            raise InvalidInput(f"reading the joint query's columns failed on this node's data ({type(e).__name__})") from None
        finally:
            cur.close()
        rid = np.asarray(got["rid"], dtype=np.int64)
        pos = np.full(int(rid.max()) + 1 if len(rid) else 0, -1, dtype=np.int64)
        pos[rid] = np.arange(len(rid))
        idx = np.asarray(rows, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(pos) or (pos[idx] < 0).any()):
            raise InvalidInput("the stored alignment names rows this dataset does not have; the data changed since "
                               "the PSI job, run a new one")
        at = pos[idx]

        def aligned(name: str) -> np.ndarray:
            return np.asarray(got[name], dtype=np.int64)[at]

        return AlignedColumns(
            groups=np.stack([aligned(f"g{i}") for i in range(len(groups))], axis=1) if groups
            else np.zeros((len(at), 0), dtype=np.int64),
            values=np.stack([aligned(f"v{j}") for j in range(len(values))], axis=1) if values
            else np.zeros((len(at), 0), dtype=np.int64),
            present=np.stack([aligned(f"n{j}") for j in range(len(values))], axis=1) if values
            else np.zeros((len(at), 0), dtype=np.int64),
            keep=aligned("keep"),
        )

    # ------------------------------------------------------------- aggregate
    def _check_where(self, where: exp.Expr) -> None:
        for node in where.walk():
            if not isinstance(node, _WHERE_NODES):
                raise PolicyViolation(f"{node.key.upper()} is not allowed in a filter; rebuild the plan with plan_query")
            if isinstance(node, exp.Column) and (not self.schema.has(node.name) or node.args.get("table")):
                raise PolicyViolation("a filter names a column that is not in the schema; rebuild the plan with plan_query")

    def build_sql(self, plan: QueryPlan, layout: Layout) -> str:
        """The statement `aggregate` runs, built from the checked plan only.

        The statement depends only on the plan's group columns, aggregated
        columns, filter and this dataset's schema, so it is remembered per
        (group columns, columns, sums of squares, filter SQL): with a domain
        of 10,000 groups building it costs far more than running it. The
        filter is still checked on every call.
        """
        if tuple(layout.group_by) != tuple(plan.group_by) or tuple(c.name for c in layout.columns) != tuple(plan.columns):
            raise InvalidInput("the layout was not built from this query plan")
        if plan.where is not None:
            self._check_where(plan.where)
        key = (tuple(plan.group_by), tuple(layout.columns), plan.where_sql)
        with self._lock:
            sql = self._statements.get(key)
            if sql is not None:
                self._statements.move_to_end(key)
                return sql
        sql = self._build_sql(plan, layout)
        with self._lock:
            self._statements[key] = sql
            while len(self._statements) > 64:
                self._statements.popitem(last=False)
        return sql

    def _build_sql(self, plan: QueryPlan, layout: Layout) -> str:
        items: list[exp.Expr] = []
        for i, g in enumerate(plan.group_by):
            if self.schema.column(g).type != "category":
                raise PolicyViolation(f"group column `{g}` is not a category column")
            # the group's position in the public domain (computed at load), not its string
            items.append(exp.alias_(_q(self.derived.domain[g]), f"g{i}", quoted=True))
        items.append(exp.alias_(exp.Count(this=exp.Star()), "n_rows", quoted=True))
        for j, c in enumerate(layout.columns):
            col = self.schema.column(c.name)
            if not col.numeric:
                raise PolicyViolation(f"column `{c.name}` is not numeric")
            q = self._q_of(col, c.scale)
            items.append(exp.alias_(exp.Count(this=_q(c.name)), f"c{j}_n", quoted=True))
            items += _limbs(exp.Sum(this=q.copy()), f"c{j}_s")
            if c.sumsq is not None:
                wide = exp.Cast(this=q.copy(), to=exp.DataType.build("HUGEINT"))
                items += _limbs(exp.Sum(this=exp.Mul(this=wide, expression=q.copy())), f"c{j}_ss")
        conds: list[exp.Expr] = []
        if plan.where is not None:
            self._check_where(plan.where)
            conds.append(exp.Paren(this=plan.where.copy()))
        conds += self._domain_conditions()
        # every node of this tree was built here: no defensive copies (they dominate with large domains)
        query = exp.select(*items, copy=False).from_(exp.Table(this=exp.Identifier(this=TABLE, quoted=True)), copy=False)
        if conds:
            query = query.where(_and(conds), copy=False)
        if plan.group_by:
            query = query.group_by(*[_q(self.derived.domain[g]) for g in plan.group_by], copy=False)
        return query.sql(dialect=DIALECT)

    def _q_of(self, col: Column, scale: int) -> exp.Expr:
        """The quantised value of `col`: the column computed at load, or (wide spans, other scales) the expression."""
        name = self.derived.quantized.get(col.name)
        if name is not None and scale == scale_of(col):
            return _q(name)
        return self._quantized(col, scale)

    def _domain_conditions(self) -> list[exp.Expr]:
        """Every category column's value is listed in its public domain: its domain index (computed at load) is
        not NULL, exactly `col IN (listed values)`; NULL and unlisted values fail it."""
        return [exp.Not(this=exp.Is(this=_q(self.derived.domain[c.name]), expression=exp.Null()))
                for c in self.schema.columns if c.type == "category"]

    def column_summary(self, column: str, where: exp.Expr | None, bins: int) -> ColumnSummary:
        """`column`'s count, extrema and histogram over the rows a query counts (its checked WHERE and the public
        domains), values clipped to the column's public bounds. For MPC MIN/MAX/quantiles; never released as is."""
        col = self.schema.column(column)
        if not col.numeric or col.min is None or col.max is None:
            raise PolicyViolation(f"column `{column}` is not numeric with public bounds")
        conds: list[exp.Expr] = []
        if where is not None:
            self._check_where(where)
            conds.append(exp.Paren(this=where.copy()))
        conds += self._domain_conditions()
        conds.append(exp.Not(this=exp.Is(this=_q(column), expression=exp.Null())))
        lo, hi = float(col.min), float(col.max)
        clipped = _least(_greatest(exp.Cast(this=_q(column), to=exp.DataType.build("DOUBLE")), _num(lo)), _num(hi))
        width = (hi - lo) / bins if hi > lo else 1.0
        bin_of = _least(exp.Cast(this=exp.Floor(this=exp.Div(this=exp.Paren(this=exp.Sub(this=clipped.copy(),
                                                                                         expression=_num(lo))),
                                                                expression=_num(width))),
                                 to=exp.DataType.build("BIGINT")), _num(bins - 1))
        table = exp.Table(this=exp.Identifier(this=TABLE, quoted=True))
        stats = exp.select(exp.Count(this=exp.Star()), exp.Min(this=clipped.copy()), exp.Max(this=clipped.copy())
                           ).from_(table.copy()).where(_and([c.copy() for c in conds]))
        hist = (exp.select(exp.alias_(bin_of, "b", quoted=True), exp.Count(this=exp.Star())).from_(table.copy())
                .where(_and(conds)).group_by(exp.column("b", quoted=True)))
        with self._lock:
            cur = self._con.cursor()
        try:
            n, mn, mx = _one(cur.execute(stats.sql(dialect=DIALECT)))
            counts = [0] * bins
            for b, c in cur.execute(hist.sql(dialect=DIALECT)).fetchall():
                counts[max(0, min(bins - 1, int(b)))] += int(c)
        except duckdb.Error as e:
            raise InvalidInput(f"the query failed on this node's data ({type(e).__name__}); check the plan against "
                               "the schema") from None
        finally:
            cur.close()
        return ColumnSummary(int(n), None if mn is None else float(mn), None if mx is None else float(mx),
                             tuple(counts))

    def out_of_domain_rows(self) -> int:
        """How many rows no query counts (a category value NULL or outside its public domain): for the owner's log."""
        conds = self._domain_conditions()
        if not conds:
            return 0
        query = exp.select(exp.Count(this=exp.Star())).from_(exp.Table(this=exp.Identifier(this=TABLE, quoted=True)))
        query = query.where(exp.Not(this=exp.Paren(this=exp.func("COALESCE", _and(conds), exp.false()))))
        with self._lock:
            cur = self._con.cursor()
        try:
            return int(_one(cur.execute(query.sql(dialect=DIALECT)))[0])
        finally:
            cur.close()

    @staticmethod
    def _quantized(col: Column, scale: int) -> exp.Expr:
        assert col.min is not None and col.max is not None
        c = _q(col.name)
        if col.type == "int":
            lo, hi = int(col.min), int(col.max)
            clipped = _least(_greatest(c.copy(), _num(lo)), _num(hi))
            body: exp.Expr = exp.Sub(
                this=exp.Cast(this=clipped, to=exp.DataType.build("HUGEINT")), expression=_num(lo)
            )
        else:
            clipped = _least(_greatest(c.copy(), _num(col.min)), _num(col.max))
            shifted = exp.Mul(
                this=exp.Paren(this=exp.Sub(this=clipped, expression=_num(col.min))), expression=_num(float(scale))
            )
            body = exp.Cast(this=exp.Round(this=shifted), to=exp.DataType.build("HUGEINT"))
        # DuckDB's GREATEST/LEAST skip NULLs: keep a NULL value NULL explicitly
        return exp.Case(ifs=[exp.If(this=exp.Is(this=c.copy(), expression=exp.Null()), true=exp.Null())], default=body)

    def aggregate(self, plan: QueryPlan, layout: Layout) -> dict[tuple[str, ...], GroupStats]:
        """Exact per-group stats of this node's rows for `plan` (groups with rows only, or `()`)."""
        return self.aggregate_arrays(plan, layout).to_stats(layout)

    def aggregate_arrays(self, plan: QueryPlan, layout: Layout) -> GroupArrays:
        """`aggregate` as arrays, one row per group with rows (`encode_arrays` lays them out without a Python loop
        over groups): DuckDB splits Σq and Σq² into limbs itself, so no quantity leaves it as a float."""
        sql = self.build_sql(plan, layout)
        with self._lock:
            cur = self._con.cursor()
        try:
            got = cur.execute(sql).fetchnumpy()
        except (duckdb.OutOfRangeException, duckdb.ConversionException):  # a sum, or q itself (spans over 2^126)
            raise PolicyViolation(
                "an aggregate overflowed the 127-bit range on this node; narrow the contract's column bounds or split the query"
            ) from None
        except duckdb.Error as e:
            raise InvalidInput(f"the query failed on this node's data ({type(e).__name__}); check the plan against the schema") from None
        finally:
            cur.close()

        def col(name: str) -> np.ndarray:
            return np.asarray(got[name], dtype=np.int64)

        rows = col("n_rows")
        index = np.zeros(len(rows), dtype=np.int64)
        for i, g in enumerate(plan.group_by):  # layout.groups is the product of the domains, in plan order
            index = index * len(self.schema.column(g).values) + col(f"g{i}")
        c = len(layout.columns)
        sums = np.zeros((len(rows), c, LIMBS), dtype=np.int64)
        sumsqs = np.zeros_like(sums)
        for j, cs in enumerate(layout.columns):
            sums[:, j] = np.stack([col(f"c{j}_s{k}") for k in range(LIMBS)], axis=1)
            if cs.sumsq is not None:
                sumsqs[:, j] = np.stack([col(f"c{j}_ss{k}") for k in range(LIMBS)], axis=1)
        counts = np.stack([col(f"c{j}_n") for j in range(c)], axis=1) if c else np.zeros((len(rows), 0), np.int64)
        return GroupArrays(index, rows, counts, sums, sumsqs)


def _limbs(total: exp.Expr, name: str) -> list[exp.Expr]:
    """`LIMBS` BIGINT items `name0…` holding the LIMB_BITS-bit limbs of the HUGEINT `total` (NULL counts as 0), least
    significant first; the top limb is not masked, so a negative total shows as a negative limb."""
    s = exp.func("COALESCE", exp.Cast(this=total, to=exp.DataType.build("HUGEINT")), exp.Literal.number(0))
    out: list[exp.Expr] = []
    for k in range(LIMBS):
        part: exp.Expr = s.copy()
        if k:
            part = exp.BitwiseRightShift(this=part, expression=exp.Literal.number(LIMB_BITS * k))
        if k < LIMBS - 1:
            part = exp.BitwiseAnd(this=exp.Paren(this=part), expression=exp.Literal.number(LIMB_MASK))
        out.append(exp.alias_(exp.Cast(this=exp.Paren(this=part), to=exp.DataType.build("BIGINT")), f"{name}{k}",
                              quoted=True))
    return out
