"""`[vertical]` contract rules: products of different owners joined on a shared key column.

A vertical contract sells computations over the *joined* rows of two owners'
products (a bank's loan outcomes and a telecom operator's attributes of many of
the same people), keyed by a column of schema type `"key"` (e.g. a salted hash
of the phone number) that is never aggregated, filtered, grouped or released.
Every node enforces these rules by itself:

    [vertical]
    key = "phone_key"            # the join column, type = "key" in every product's schema
    kinds = ["psi"]              # vertical job kinds sold: psi, joint, vertical-lr
    min_intersection = 100       # a job whose intersection is smaller fails before anything else is released
    max_keys = 1000000           # most keys either party's set may hold (caps what a peer can probe)
    max_jobs = 10                # vertical jobs of each kind each owner runs under this contract
    [vertical.columns]           # per product (dataset name): the columns joint jobs may use
    bank = ["segment", "defaulted"]
    telco = ["arpu"]
    [vertical.lr]                # caps of vertical logistic regression (trust.vertical_lr), when kinds has it
    max_epochs = 20
    max_features = 8

PSI is run between exactly two owners today. Kind "joint" (joint statistics
over the aligned rows) needs a `[vertical.joint]` table (`trust.joint_rules`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Sequence

from fedtrust.errors import ConfigError, InvalidInput, PolicyViolation
from fedtrust.trust.canonical import Fields
from fedtrust.trust.joint_rules import JointRules, check_joint_products
from fedtrust.trust.kinds import JOB_ID, MAX_SQL_CHARS, check_output_key, register_payload
from fedtrust.trust.vertical_lr import VerticalLRRules

__all__ = ["VERTICAL_KINDS", "JointJob", "VerticalJob", "VerticalRules", "check_vertical_job", "check_vertical_products"]

VERTICAL_KINDS = ("psi", "joint", "vertical-lr")
#: owners a vertical contract joins today (two-party PSI)
VERTICAL_OWNERS = 2


@dataclass(frozen=True)
class VerticalRules:
    key: str
    kinds: tuple[str, ...]
    min_intersection: int
    max_keys: int
    max_jobs: int
    columns: tuple[tuple[str, tuple[str, ...]], ...]  # (dataset, usable columns), sorted by dataset
    joint: JointRules | None = None  # [vertical.joint]: present exactly when kinds include "joint"
    lr: VerticalLRRules | None = None  # [vertical.lr]: caps of vertical-lr jobs

    def usable(self, dataset: str) -> tuple[str, ...]:
        return dict(self.columns).get(dataset, ())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "key": self.key,
            "kinds": list(self.kinds),
            "min_intersection": self.min_intersection,
            "max_keys": self.max_keys,
            "max_jobs": self.max_jobs,
            "columns": {d: list(c) for d, c in self.columns},
        }
        if self.joint is not None:  # absent otherwise: PSI-only contracts sign the same JSON as before
            d["joint"] = self.joint.to_dict()
        if self.lr is not None:  # absent otherwise: PSI-only contracts sign the same JSON as before
            d["lr"] = self.lr.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "VerticalRules":
        if not isinstance(d, dict):
            raise ConfigError("rules: [vertical] must be a table")
        unknown = sorted(set(d) - {"key", "kinds", "min_intersection", "max_keys", "max_jobs", "columns", "joint",
                                   "lr"})
        if unknown:
            raise ConfigError(f"rules: [vertical] has unknown setting `{unknown[0]}`; see the README for its keys")
        key = d.get("key")
        if not isinstance(key, str) or not key:
            raise ConfigError("rules: [vertical] needs `key`, the name of the join column (type \"key\" in each schema)")
        kinds = d.get("kinds", ["psi"])
        if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
            raise ConfigError("rules: [vertical] `kinds` must be a non-empty list of job kinds")
        bad = [k for k in kinds if k not in VERTICAL_KINDS]
        if bad:
            raise ConfigError(f"rules: [vertical] kind {bad[0]!r} is not offered; use a subset of {', '.join(VERTICAL_KINDS)}")
        ints = {}
        for name in ("min_intersection", "max_keys", "max_jobs"):
            v = d.get(name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"rules: [vertical] needs `{name}` as a whole number")
            if v < 1:
                raise ConfigError(f"rules: [vertical] `{name}` must be at least 1")
            ints[name] = v
        if ints["min_intersection"] > ints["max_keys"]:
            raise ConfigError("rules: [vertical] `min_intersection` exceeds `max_keys`; no job could succeed")
        cols = d.get("columns", {})
        if not isinstance(cols, dict):
            raise ConfigError("rules: [vertical.columns] must map each product (dataset name) to a list of columns")
        columns = []
        for dataset, names in sorted(cols.items()):
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"rules: [vertical.columns] `{dataset}` must be a list of column names")
            if key in names:
                raise ConfigError(f"rules: [vertical.columns] `{dataset}` lists the join key {key!r}; the key is never used as a value")
            columns.append((dataset, tuple(names)))
        joint = None
        if "joint" in kinds:
            if "joint" not in d:
                raise ConfigError("rules: [vertical] kinds include \"joint\" but there is no [vertical.joint] table; "
                                  "add it with aggregates, group_by and min_group_size")
            joint = JointRules.from_dict(d["joint"])
        elif "joint" in d:
            raise ConfigError("rules: [vertical.joint] is set but [vertical] kinds do not include \"joint\"; add it")
        lr = None
        if "vertical-lr" in kinds:
            if "lr" not in d:
                raise ConfigError("rules: [vertical] kinds include \"vertical-lr\" but [vertical.lr] (max_epochs, "
                                  "max_features) is missing")
            lr = VerticalLRRules.from_dict(d["lr"])
        elif "lr" in d:
            raise ConfigError("rules: [vertical.lr] is set but [vertical] kinds do not include \"vertical-lr\"; add it")
        return cls(key, tuple(kinds), ints["min_intersection"], ints["max_keys"], ints["max_jobs"], tuple(columns),
                   joint, lr)


def check_vertical_products(rules: VerticalRules, products: Sequence[Any]) -> None:
    """The products a vertical contract joins: distinct datasets, each with the key column typed "key".

    `products` are `trust.products.Product`s; ConfigError naming the rule otherwise.
    """
    if len(products) != VERTICAL_OWNERS:
        raise ConfigError(f"a vertical contract joins exactly {VERTICAL_OWNERS} owners' products today; pass two --product")
    datasets = [p.dataset for p in products]
    if len(set(datasets)) != len(datasets):
        raise ConfigError("the products of a vertical contract must name different datasets (they are joined, not pooled)")
    for p in products:
        if not p.schema.has(rules.key) or p.schema.column(rules.key).type != "key":
            raise ConfigError(
                f"product {p.dataset!r} has no column {rules.key!r} of type \"key\"; declare the join column as type = \"key\""
            )
        for name in rules.usable(p.dataset):
            if not p.schema.has(name):
                raise ConfigError(f"rules: [vertical.columns] column {name!r} is not in the schema of product {p.dataset!r}")
    extra = sorted(set(dict(rules.columns)) - set(datasets))
    if extra:
        raise ConfigError(f"rules: [vertical.columns] names {extra[0]!r}, which is not a product of this contract")
    if rules.joint is not None:
        check_joint_products(rules.joint, dict(rules.columns), products)


@dataclass(frozen=True)
class VerticalJob:
    """The payload of a PSI job spec (kind "psi"): the join column it runs on (key "vertical" in the JSON)."""

    key: str

    kind: ClassVar[str] = "psi"
    ttl: ClassVar[timedelta] = timedelta(hours=1)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key}

    def to_fields(self) -> dict[str, Any]:
        return {"vertical": self.to_dict()}

    @classmethod
    def from_fields(cls, f: Fields) -> "VerticalJob":
        return cls.from_dict(f.obj("vertical"))

    def check_payload(self, dataset: str) -> None:
        """The key's form is checked by `from_dict`; the contract's rules by `check_vertical_job`."""

    def describe(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> "VerticalJob":
        if not isinstance(d, dict) or set(d) != {"key"} or not isinstance(d["key"], str) or not d["key"]:
            raise InvalidInput("job spec: a psi job's `vertical` payload is {\"key\": <the join column>}; it names "
                               "neither sql nor alignment (those are a joint job's)")
        return cls(d["key"])


@dataclass(frozen=True)
class JointJob:
    """The payload of a joint-statistics job spec (kind "joint"): the join column, the SQL over the joined rows
    and `alignment`, the id of the PSI job (under the same contract) whose rows it joins (key "vertical" in the
    JSON, beside the PSI payload's key)."""

    key: str
    sql: str
    alignment: str
    #: a base64 raw X25519 public key the buyer made for this job: the owners seal their output shares to it
    output_key: str

    kind: ClassVar[str] = "joint"
    ttl: ClassVar[timedelta] = timedelta(hours=1)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "sql": self.sql, "alignment": self.alignment}

    def to_fields(self) -> dict[str, Any]:
        return {"vertical": self.to_dict(), "output_key": self.output_key}

    @classmethod
    def from_fields(cls, f: Fields) -> "JointJob":
        d = f.obj("vertical")
        if (set(d) != {"key", "sql", "alignment"} or not all(isinstance(v, str) and v for v in d.values())):
            raise InvalidInput("job spec: a joint job's vertical payload names its key, sql and alignment (the PSI "
                               "job id); a psi job's names neither sql nor alignment")
        return cls(d["key"], d["sql"], d["alignment"], f.text("output_key"))

    def check_payload(self, dataset: str) -> None:
        if len(self.sql) > MAX_SQL_CHARS or not JOB_ID.fullmatch(self.alignment):
            raise InvalidInput(f"job spec: a joint job's sql is at most {MAX_SQL_CHARS} characters and its "
                               "alignment a PSI job id")
        check_output_key(self.output_key)

    def describe(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


register_payload(VerticalJob.kind, VerticalJob.from_fields)
register_payload(JointJob.kind, JointJob.from_fields)


def check_vertical_job(rules: "VerticalRules | None", kind: str, job: "VerticalJob | JointJob") -> None:
    """A vertical job of `kind` under a contract's rules; PolicyViolation naming the rule."""
    if rules is None:
        raise PolicyViolation("this contract sells no vertical jobs (its rules have no [vertical] table)")
    if kind not in rules.kinds:
        raise PolicyViolation(f"this contract's [vertical] kinds do not include {kind!r} (allowed: {', '.join(rules.kinds)})")
    if job.key != rules.key:
        raise PolicyViolation(f"the job joins on {job.key!r} but the contract's join key is {rules.key!r}")
