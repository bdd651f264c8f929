"""Contract rules that every node enforces by itself (RULES.toml)."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from fedtrust.config import read_toml
from fedtrust.errors import ConfigError
from fedtrust.trust.vertical import VerticalRules

AGGREGATES = ("COUNT", "SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP", "MIN", "MAX", "MEDIAN", "QUANTILE")


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


TRAINING_MODELS = ("logreg", "mlp", "cnn")
#: `[training] max_jobs` when a contract leaves it out
DEFAULT_MAX_TRAINING_JOBS = 10


@dataclass(frozen=True)
class TrainingRules:
    """`[training]`: what a federated training job may do under this contract."""

    models: tuple[str, ...]  # vetted model ids, or names of ClientApps the nodes approved
    max_rounds: int
    columns: tuple[str, ...]  # allowed features and labels
    min_nodes: int  # fewest owners a job may include (≥ 2)
    allow_plaintext_aggregation: bool = False
    max_jobs: int = DEFAULT_MAX_TRAINING_JOBS  # training jobs each node runs under the contract

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "max_rounds": self.max_rounds,
            "columns": list(self.columns),
            "min_nodes": self.min_nodes,
            "allow_plaintext_aggregation": self.allow_plaintext_aggregation,
            "max_jobs": self.max_jobs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainingRules":
        def names(key: str) -> tuple[str, ...]:
            v = d.get(key)
            if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"rules: [training] `{key}` must be a non-empty list of names")
            return tuple(v)

        try:
            max_rounds = int(d["max_rounds"])
            min_nodes = int(d.get("min_nodes", 2))
            max_jobs = d.get("max_jobs", DEFAULT_MAX_TRAINING_JOBS)
            if isinstance(max_jobs, bool) or not isinstance(max_jobs, int):
                raise TypeError
        except KeyError:
            raise ConfigError("rules: [training] needs `max_rounds`") from None
        except (TypeError, ValueError):
            raise ConfigError("rules: [training] `max_rounds`, `min_nodes` and `max_jobs` must be integers") from None
        if max_jobs < 1:
            raise ConfigError("rules: [training] `max_jobs` must be at least 1 (the training jobs each node runs)")
        if max_rounds < 1:
            raise ConfigError("rules: [training] `max_rounds` must be at least 1")
        if min_nodes < 2:
            raise ConfigError("rules: [training] `min_nodes` must be at least 2 (one owner's update alone is not hidden)")
        plain = d.get("allow_plaintext_aggregation", False)
        if not isinstance(plain, bool):
            raise ConfigError("rules: [training] `allow_plaintext_aggregation` must be true or false")
        return cls(names("models"), max_rounds, names("columns"), min_nodes, plain, max_jobs)


def _decimal(d: dict[str, Any], key: str, *, required: bool = True) -> Decimal | None:
    v = d.get(key)
    if v is None:
        if required:
            raise ConfigError(f"rules: [privacy] needs `{key}`")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ConfigError(f"rules: [privacy] `{key}` must be a number (a decimal string is exact)")
    try:
        x = Decimal(str(v))
    except InvalidOperation:
        raise ConfigError(f"rules: [privacy] `{key}` must be a number") from None
    if not x.is_finite() or x <= 0:
        raise ConfigError(f"rules: [privacy] `{key}` must be positive")
    return x


@dataclass(frozen=True)
class PrivacyRules:
    """`[privacy]`: the differential-privacy budget each owner grants for its own product.

    ε and δ are Decimals inside and decimal strings in signed JSON, so sums
    agree everywhere. Spent ε is the sum of the ε of the jobs a node ran for
    the contract (basic composition).
    """

    epsilon_total: Decimal
    delta: Decimal
    epsilon_per_query: Decimal
    training_epsilon: Decimal | None = None  # None: training refused under DP
    training_delta: Decimal | None = None

    @property
    def allows_training(self) -> bool:
        return self.training_epsilon is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon_total": str(self.epsilon_total),
            "delta": str(self.delta),
            "epsilon_per_query": str(self.epsilon_per_query),
            "training": "allow" if self.training_epsilon is not None else "refuse",
            "training_epsilon": None if self.training_epsilon is None else str(self.training_epsilon),
            "training_delta": None if self.training_delta is None else str(self.training_delta),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PrivacyRules":
        total = _decimal(d, "epsilon_total")
        delta = _decimal(d, "delta")
        per_query = _decimal(d, "epsilon_per_query")
        assert total is not None and delta is not None and per_query is not None
        if delta >= 1:
            raise ConfigError("rules: [privacy] `delta` must be below 1 (use at most 1/rows, e.g. 1e-6)")
        if per_query > total:
            raise ConfigError("rules: [privacy] `epsilon_per_query` exceeds `epsilon_total`; no query could run")
        training = d.get("training") or ("allow" if d.get("training_epsilon") is not None else "refuse")
        if training not in ("refuse", "allow"):
            raise ConfigError("rules: [privacy] `training` must be \"refuse\" or \"allow\" (with training_epsilon)")
        t_eps = t_delta = None
        if training == "allow":
            t_eps = _decimal(d, "training_epsilon")
            t_delta = _decimal(d, "training_delta", required=False) or delta
            assert t_eps is not None
            if t_eps > total:
                raise ConfigError("rules: [privacy] `training_epsilon` exceeds `epsilon_total`; no training job could run")
            if t_delta >= 1:
                raise ConfigError("rules: [privacy] `training_delta` must be below 1")
        return cls(total, delta, per_query, t_eps, t_delta)


#: the longest contract the exchange issues (30 years, the records' retention)
MAX_VALID_DAYS = 30 * 366


@dataclass(frozen=True)
class Rules:
    """Everything RULES.toml says: `[query]`, `[training]`, `[privacy]` and the validity."""

    query: QueryRules | None
    valid_days: int
    training: TrainingRules | None = None
    privacy: PrivacyRules | None = None  # None: exact answers under the aggregation rules alone
    vertical: VerticalRules | None = None  # None: horizontal contract; vertical jobs are refused

    def to_dict(self) -> dict[str, Any]:
        d = {
            "query": self.query.to_dict() if self.query else None,
            "valid_days": self.valid_days,
            "training": self.training.to_dict() if self.training else None,
            "privacy": self.privacy.to_dict() if self.privacy else None,
        }
        if self.vertical is not None:  # absent otherwise: horizontal contracts sign the same JSON as before
            d["vertical"] = self.vertical.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Rules":
        q, t, p, v = d.get("query"), d.get("training"), d.get("privacy"), d.get("vertical")
        return cls(
            QueryRules.from_dict(q) if q else None,
            int(d.get("valid_days", 30)),
            TrainingRules.from_dict(t) if t else None,
            PrivacyRules.from_dict(p) if p else None,
            VerticalRules.from_dict(v) if v is not None else None,
        )


def load_rules_toml(path: str | Path) -> Rules:
    p = Path(path)
    data = read_toml(p, "rules file")
    q, t, priv, vert = data.get("query"), data.get("training"), data.get("privacy"), data.get("vertical")
    for name, table in (("query", q), ("training", t), ("privacy", priv), ("vertical", vert)):
        if table is not None and not isinstance(table, dict):
            raise ConfigError(f"rules file {p}: [{name}] must be a table")
    if vert is not None and (q is not None or t is not None):
        raise ConfigError(f"rules file {p} mixes [vertical] with [query]/[training]; a vertical contract joins "
                          "different products, so issue horizontal jobs under a separate contract")
    if q is None and t is None and vert is None:
        raise ConfigError(f"rules file {p} has neither [query] nor [training]; a contract must sell one of them")
    valid_days = (q or {}).get("valid_days", data.get("valid_days", 30))
    try:
        valid_days = int(valid_days)
    except (TypeError, ValueError):
        raise ConfigError("rules: `valid_days` must be an integer") from None
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise ConfigError(f"rules: `valid_days` must be between 1 and {MAX_VALID_DAYS} (got {valid_days}); "
                          "contracts are issued for days to years, and a new one can follow")
    return Rules(
        QueryRules.from_dict(q) if q is not None else None,
        valid_days,
        TrainingRules.from_dict(t) if t is not None else None,
        PrivacyRules.from_dict(priv) if priv is not None else None,
        VerticalRules.from_dict(vert) if vert is not None else None,
    )
