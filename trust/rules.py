"""Contract rules that every node enforces by itself (RULES.toml)."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrust.errors import ConfigError

AGGREGATES = ("COUNT", "SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP")


@dataclass(frozen=True)
class QueryRules:
    aggregates: tuple[str, ...]
    columns: tuple[str, ...]
    filters: tuple[str, ...]
    group_by: tuple[str, ...]
    min_group_size: int
    max_queries: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "aggregates": list(self.aggregates),
            "columns": list(self.columns),
            "filters": list(self.filters),
            "group_by": list(self.group_by),
            "min_group_size": self.min_group_size,
            "max_queries": self.max_queries,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QueryRules":
        def names(key: str, default: Any = None) -> tuple[str, ...]:
            v = d.get(key, default)
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"rules: `{key}` must be a list of names")
            return tuple(v)

        aggs = tuple(a.upper() for a in names("aggregates"))
        bad = [a for a in aggs if a not in AGGREGATES]
        if bad:
            raise ConfigError(f"rules: aggregate {bad[0]} is not supported; use a subset of {', '.join(AGGREGATES)}")
        group_by = names("group_by", [])
        filters = names("filters", list(group_by))
        try:
            mgs = int(d.get("min_group_size", 1))
            mq = int(d["max_queries"])
        except KeyError:
            raise ConfigError("rules: `max_queries` is required (the number of queries the contract sells)") from None
        except (TypeError, ValueError):
            raise ConfigError("rules: `min_group_size` and `max_queries` must be integers") from None
        if mgs < 1 or mq < 1:
            raise ConfigError("rules: `min_group_size` and `max_queries` must be at least 1")
        return cls(aggs, names("columns", []), filters, group_by, mgs, mq)


@dataclass(frozen=True)
class Rules:
    """Everything RULES.toml says; `[training]` and `[privacy]` join later."""

    query: QueryRules | None
    valid_days: int

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query.to_dict() if self.query else None, "valid_days": self.valid_days}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Rules":
        q = d.get("query")
        return cls(QueryRules.from_dict(q) if q else None, int(d.get("valid_days", 30)))


def load_rules_toml(path: str | Path) -> Rules:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"rules file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"rules file {p} is not valid TOML: {e}") from None
    q = data.get("query")
    if not isinstance(q, dict):
        raise ConfigError(f"rules file {p} has no [query] table; add one with aggregates, columns and max_queries")
    valid_days = q.get("valid_days", data.get("valid_days", 30))
    try:
        valid_days = int(valid_days)
    except (TypeError, ValueError):
        raise ConfigError("rules: `valid_days` must be an integer") from None
    if valid_days < 1:
        raise ConfigError("rules: `valid_days` must be at least 1")
    return Rules(QueryRules.from_dict(q), valid_days)
