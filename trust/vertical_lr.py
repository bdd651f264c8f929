"""Vertical logistic regression: the job the buyer signs (kind "vertical-lr") and the rules every owner checks.

Features of two owners and a binary label held by one of them, joined row by
row through a finished PSI job's alignment, train one logistic regression by
SGD inside MPC (`fedtrust.training.vertical_lr`); only the buyer learns the
weights. job.toml::

    [job]
    kind = "vertical-lr"
    alignment = "3f2a…"                   # the PSI job whose alignment joins the rows (`fedtrust psi`)
    features = ["bank.income", "bank.segment", "telco.arpu", "telco.tenure_months"]  # product.column
    label = "bank.defaulted"              # the label's owner (its product) and column: binary
    epochs = 5
    learning_rate = 0.5
    batch_size = 64

The contract sells it under `[vertical]` (`kinds` includes "vertical-lr")
with its caps in `[vertical.lr]`::

    [vertical.lr]
    max_epochs = 20        # most passes over the joined rows one job may make
    max_features = 8       # most feature columns one job may name (across both owners)

Every named column must be listed for its product in `[vertical.columns]`.
Under `[privacy]` the job is refused: a vertical contract with `[privacy]`
runs no PSI (an exact intersection size is not differentially private), so
no alignment exists to train on, and fixed-epoch SGD in MPC has no sensitivity
bound on the revealed weights that DP noise could be calibrated to (DP-SGD
inside MPC, clipping per-row gradients on shares, is not built).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedtrust.config import read_toml
from fedtrust.errors import ConfigError, InvalidInput, PolicyViolation
from fedtrust.trust.canonical import Fields
from fedtrust.trust.kinds import JOB_ID, check_output_key, register_payload

if TYPE_CHECKING:  # trust.contracts imports trust.vertical, which imports this module
    from fedtrust.trust.contracts import Contract
    from fedtrust.trust.schema import Column

__all__ = ["KIND", "VerticalLRRules", "VerticalLRSpec", "check_vertical_lr", "is_vertical_lr_toml",
           "load_vertical_lr_toml", "split_name"]

KIND = "vertical-lr"
MAX_EPOCHS = 1000
MAX_FEATURES = 256
MAX_BATCH = 1 << 16
_NAME = re.compile(r"[^.,\s]+\.[^.,\s]+")


def split_name(qualified: str) -> tuple[str, str]:
    """("bank", "income") from "bank.income"."""
    dataset, column = qualified.split(".", 1)
    return dataset, column


def _int(v: Any, what: str, lo: int, hi: int, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidInput(f"{where}: `{what}` must be a whole number")
    if not lo <= v <= hi:
        raise InvalidInput(f"{where}: `{what}` must be between {lo} and {hi}")
    return v


@dataclass(frozen=True)
class VerticalLRRules:
    """`[vertical.lr]`: the caps of vertical logistic regression jobs under a contract."""

    max_epochs: int
    max_features: int

    def to_dict(self) -> dict[str, Any]:
        return {"max_epochs": self.max_epochs, "max_features": self.max_features}

    @classmethod
    def from_dict(cls, d: Any) -> VerticalLRRules:
        if not isinstance(d, dict):
            raise ConfigError("rules: [vertical.lr] must be a table")
        unknown = sorted(set(d) - {"max_epochs", "max_features"})
        if unknown:
            raise ConfigError(f"rules: [vertical.lr] has unknown setting `{unknown[0]}`; use max_epochs and max_features")
        out = {}
        for name, hi in (("max_epochs", MAX_EPOCHS), ("max_features", MAX_FEATURES)):
            v = d.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise ConfigError(f"rules: [vertical.lr] needs `{name}` as a whole number from 1 to {hi}")
            out[name] = v
        return cls(**out)


@dataclass(frozen=True)
class VerticalLRSpec:
    """What the buyer asks a vertical-lr job to train (signed inside the JobSpec under `vertical_lr`)."""

    alignment: str
    features: tuple[str, ...]  # product-qualified, in the buyer's order
    label: str  # product-qualified
    epochs: int
    learning_rate: float
    batch_size: int
    #: in a signed job: the buyer's per-job X25519 key (base64) the owners seal their model shares to; not part of
    #: job.toml or of the model file (`to_dict`), which describe the training only
    output_key: str = ""

    kind: ClassVar[str] = KIND
    #: many epochs in MPC: the buyer's signature stays valid as long as a training job's
    ttl: ClassVar[timedelta] = timedelta(hours=24)

    def to_fields(self) -> dict[str, Any]:
        return {"vertical_lr": self.to_dict(), "output_key": self.output_key}

    @classmethod
    def from_fields(cls, f: Fields) -> VerticalLRSpec:
        spec = cls.from_dict(f.obj("vertical_lr"), where="job spec: vertical_lr")
        return replace(spec, output_key=f.text("output_key"))

    def check_payload(self, dataset: str) -> None:
        """The spec's form is checked by `from_dict`, the contract's rules by `check_vertical_lr`; here the key the
        owners seal their shares of the model to."""
        check_output_key(self.output_key)

    def describe(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {"alignment": self.alignment, "features": list(self.features), "label": self.label, "epochs": self.epochs,
                "learning_rate": repr(float(self.learning_rate)), "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, d: Any, *, where: str = "vertical-lr spec") -> VerticalLRSpec:
        if not isinstance(d, dict):
            raise InvalidInput(f"{where} must be a table / JSON object")
        known = {"alignment", "features", "label", "epochs", "learning_rate", "batch_size"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidInput(f"{where}: unknown key `{unknown[0]}`; see the README's vertical job.toml")
        missing = sorted(known - set(d))
        if missing:
            raise InvalidInput(f"{where}: `{missing[0]}` is missing")
        alignment = d["alignment"]
        if not isinstance(alignment, str) or not JOB_ID.fullmatch(alignment):
            raise InvalidInput(f"{where}: `alignment` must be the job id `fedtrust psi` printed")
        features = d["features"]
        if not isinstance(features, list) or not 1 <= len(features) <= MAX_FEATURES:
            raise InvalidInput(f"{where}: `features` must list 1 to {MAX_FEATURES} columns as product.column")
        for name in [*features, d["label"]]:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise InvalidInput(f"{where}: columns are named product.column (e.g. \"bank.income\"), "
                                   "with one dot and no spaces or commas")
        lr = d["learning_rate"]
        try:
            rate = float(lr) if not isinstance(lr, bool) and isinstance(lr, (int, float, str)) else math.nan
        except ValueError:
            rate = math.nan
        if not (math.isfinite(rate) and 0 < rate <= 10):
            raise InvalidInput(f"{where}: `learning_rate` must be a number in (0, 10]")
        spec = cls(alignment, tuple(features), d["label"], _int(d["epochs"], "epochs", 1, MAX_EPOCHS, where), rate,
                   _int(d["batch_size"], "batch_size", 1, MAX_BATCH, where))
        if len(set(spec.features)) != len(spec.features):
            raise InvalidInput(f"{where}: `features` lists a column twice")
        if spec.label in spec.features:
            raise InvalidInput(f"{where}: the label column cannot also be a feature")
        return spec

    @property
    def label_dataset(self) -> str:
        return split_name(self.label)[0]

    def features_of(self, dataset: str) -> tuple[str, ...]:
        """The bare column names this job reads from `dataset`, in the job's order."""
        return tuple(c for d, c in map(split_name, self.features) if d == dataset)


register_payload(VerticalLRSpec.kind, VerticalLRSpec.from_fields)


def is_vertical_lr_toml(path: str | Path) -> bool:
    """Whether job.toml's `[job]` names kind = "vertical-lr" (else it is a federated training job)."""
    job = read_toml(Path(path), "job file").get("job")
    return isinstance(job, dict) and job.get("kind") == KIND


def load_vertical_lr_toml(path: str | Path) -> VerticalLRSpec:
    """job.toml's `[job]` with kind = "vertical-lr"."""
    p = Path(path)
    job = read_toml(p, "job file").get("job")
    if not isinstance(job, dict):
        raise ConfigError(f"job file {p} has no [job] table; see the README's job.toml section")
    if job.get("kind") != KIND:
        raise ConfigError(f"job file {p} is not a vertical-lr job (set kind = \"{KIND}\" in [job])")
    return VerticalLRSpec.from_dict({k: v for k, v in job.items() if k != "kind"}, where=f"job file {p}")


def _column(contract: Contract, qualified: str) -> Column:
    dataset, column = split_name(qualified)
    products = {h.product.dataset: h.product for h in contract.owners}
    if dataset not in products:
        raise PolicyViolation(f"column {qualified!r} names product {dataset!r}, which is not in this contract "
                              f"(products: {', '.join(sorted(products))})")
    rules = contract.rules.vertical
    assert rules is not None
    if column not in rules.usable(dataset):
        raise PolicyViolation(f"column {qualified!r} is not in the contract's [vertical.columns] for {dataset!r}; "
                              "use only the columns the contract lists")
    schema = products[dataset].schema
    if not schema.has(column):
        raise PolicyViolation(f"column {qualified!r} is not in product {dataset!r}'s schema")
    return schema.column(column)


def check_vertical_lr(contract: Contract, spec: VerticalLRSpec) -> None:
    """A vertical-lr job under `contract`'s rules (buyer first, then every owner); PolicyViolation naming the rule."""
    rules = contract.rules.vertical
    if rules is None:
        raise PolicyViolation("this contract sells no vertical jobs (its rules have no [vertical] table)")
    if KIND not in rules.kinds:
        raise PolicyViolation(f"this contract's [vertical] kinds do not include {KIND!r} (allowed: "
                              f"{', '.join(rules.kinds)})")
    if contract.rules.privacy is not None:
        raise PolicyViolation("this contract has [privacy]: vertical logistic regression is refused under it (no PSI "
                              "alignment exists under [privacy], and the revealed weights of SGD in MPC have no bound "
                              "DP noise could be calibrated to)")
    caps = rules.lr
    if caps is None:
        raise PolicyViolation(f"this contract sells {KIND!r} without its caps; the exchange must add [vertical.lr]")
    if spec.epochs > caps.max_epochs:
        raise PolicyViolation(f"the job asks for {spec.epochs} epochs but the contract's [vertical.lr] max_epochs is "
                              f"{caps.max_epochs}")
    if len(spec.features) > caps.max_features:
        raise PolicyViolation(f"the job names {len(spec.features)} features but the contract's [vertical.lr] "
                              f"max_features is {caps.max_features}")
    for name in spec.features:
        col = _column(contract, name)
        if col.type not in ("float", "int", "category"):
            raise PolicyViolation(f"feature {name!r} has type {col.type!r}; features are float, int or category")
    label = _column(contract, spec.label)
    classes = (len(label.values) if label.type == "category"
               else int(label.max) - int(label.min) + 1 if label.type == "int" and label.min is not None
               and label.max is not None else 0)
    if classes != 2:
        raise PolicyViolation(f"label {spec.label!r} is not binary (an int column with bounds 0..1 or a category "
                              "with two values); vertical logistic regression trains a binary model")
