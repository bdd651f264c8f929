"""Public schema of a listed dataset: column types, numeric bounds, category domains.

The bounds and domains are public (they are part of the product credential);
nodes clip to them and lay results out over them, so nothing about a node's
data is revealed by the shape of what it releases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtrust.config import read_toml
from fedtrust.errors import ConfigError

COLUMN_TYPES = ("category", "float", "int", "key")
#: "key": a join identifier for vertical contracts (e.g. a salted hash); never aggregated, filtered,
#: grouped, trained on or released — only a node's PSI handler reads it


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = field(default_factory=tuple)

    @property
    def numeric(self) -> bool:
        return self.type in ("float", "int")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.type == "key":
            pass
        elif self.numeric:
            # decimal strings: fractional values are never floats in signed JSON
            d["min"] = _num_str(self.min)
            d["max"] = _num_str(self.max)
        else:
            d["values"] = list(self.values)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Column":
        try:
            name, typ = str(d["name"]), str(d["type"])
        except (KeyError, TypeError) as e:
            raise ConfigError(f"column entry is missing {e}; each column needs a name and a type") from None
        if typ not in COLUMN_TYPES:
            raise ConfigError(f"column {name!r} has type {typ!r}; use one of {', '.join(COLUMN_TYPES)}")
        if typ == "key":
            return cls(name, typ, None, None, ())
        if typ == "category":
            values = d.get("values")
            if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) for v in values):
                raise ConfigError(f"category column {name!r} needs a non-empty list of string `values` (its public domain)")
            if len(set(values)) != len(values):
                raise ConfigError(f"category column {name!r} lists a value twice; list each value once")
            return cls(name, typ, None, None, tuple(values))
        try:
            lo, hi = float(d["min"]), float(d["max"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"numeric column {name!r} needs public `min` and `max` bounds") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ConfigError(f"numeric column {name!r} needs finite bounds with min < max")
        if typ == "int" and (lo != int(lo) or hi != int(hi)):
            raise ConfigError(f"int column {name!r} needs whole-number bounds")
        return cls(name, typ, lo, hi, ())


def _num_str(x: float | None) -> str:
    assert x is not None
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class Schema:
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ConfigError("schema declares a column twice; declare each column once")
        # SQL (and DuckDB) fold the case of names: `Salary` and `salary` would be one column to a query
        # but two to the rules, so a contract could sell one and deliver the other
        seen: dict[str, str] = {}
        for n in names:
            other = seen.setdefault(n.lower(), n)
            if other != n:
                raise ConfigError(
                    f"schema declares columns `{other}` and `{n}`, whose names differ only in case; SQL folds case, "
                    "so rename one"
                )

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(c.name == name for c in self.columns)

    def resolve(self, name: str) -> str | None:
        """The schema's name for a SQL identifier, case folded as SQL does (names never collide when folded)."""
        if self.has(name):
            return name
        return next((c.name for c in self.columns if c.name.lower() == name.lower()), None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schema":
        cols = d.get("columns") if isinstance(d, dict) else None
        if not isinstance(cols, list) or not cols:
            raise ConfigError("schema has no columns; declare at least one [columns.NAME] table")
        return cls(tuple(Column.from_dict(c) for c in cols))


def load_schema_toml(path: str | Path) -> Schema:
    """Read SCHEMA.toml: `[columns.NAME] type = ..., min/max or values`."""
    p = Path(path)
    data = read_toml(p, "schema file")
    cols = data.get("columns")
    if not isinstance(cols, dict) or not cols:
        raise ConfigError(f"schema file {p} has no [columns.NAME] tables; declare each column")
    return Schema(tuple(Column.from_dict({"name": n, **spec}) for n, spec in cols.items()))
