"""The training spec: what a buyer asks a federated training job to do (job.toml `[job]`).

A `TrainingSpec` is the payload of a buyer-signed `JobSpec` of kind "train"
(key "training" in the JSON; registered with `fedtrust.trust.jobs` on import),
so every node checks it against the contract's `[training]` rules by itself
(`fedtrust.training.policy`). This module only parses and checks the *form*
of a spec (types, ranges, known names); it imports neither torch nor Flower,
so every role can parse signed jobs cheaply.

Fractional numbers travel as decimal strings in signed JSON (`"0.05"`), like
every other fractional value fedtrust signs.

job.toml::

    [job]
    dataset = "loans"
    model = "logreg"                # logreg | mlp | cnn | an approved ClientApp
    features = ["income", "age", "region"]
    label = "defaulted"
    strategy = "fedavg"             # fedavg | fedprox | fedadam | fedyogi | fedavgm
    rounds = 5
    local_epochs = 1
    batch_size = 64
    learning_rate = 0.1
    optimizer = "sgd"               # sgd | adam
    secure_aggregation = "masking"  # or "none", only where the contract allows it
    evaluate = true                 # federated evaluation after every round

    [job.strategy_options]          # e.g. proximal_mu (fedprox); eta, beta_1, beta_2, tau (fedadam, fedyogi);
    proximal_mu = 0.01              # server_learning_rate, server_momentum (fedavgm)

    [job.model_options]             # hidden = [32, 16] (mlp); image = [C, H, W] (cnn);
    hidden = [32, 16]               # architecture = "mlp" (the registry model an approved ClientApp trains)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from fedtrust.config import read_toml
from fedtrust.errors import ConfigError, InvalidInput, PolicyViolation
from fedtrust.trust.canonical import Fields
from fedtrust.trust.jobs import TRAINING_TTL, register_payload

__all__ = [
    "ARCHITECTURES", "STRATEGIES", "ROBUST_STRATEGIES", "OPTIMIZERS", "AGGREGATIONS",
    "ModelOptions", "TrainingSpec", "load_training_toml",
]

#: vetted model registry (`fedtrust.training.models`)
ARCHITECTURES = ("logreg", "mlp", "cnn")
#: strategy -> the options it accepts and their allowed range (lo, hi, hi inclusive)
STRATEGIES: dict[str, dict[str, tuple[float, float, bool]]] = {
    "fedavg": {},
    "fedprox": {"proximal_mu": (0.0, 1e6, True)},
    "fedadam": {"eta": (0.0, 1e3, True), "eta_l": (0.0, 1e3, True), "beta_1": (0.0, 1.0, False),
                "beta_2": (0.0, 1.0, False), "tau": (0.0, 1e3, True)},
    "fedyogi": {"eta": (0.0, 1e3, True), "eta_l": (0.0, 1e3, True), "beta_1": (0.0, 1.0, False),
                "beta_2": (0.0, 1.0, False), "tau": (0.0, 1e3, True)},
    "fedavgm": {"server_learning_rate": (0.0, 1e3, True), "server_momentum": (0.0, 1.0, False)},
}
#: aggregators that need every node's individual update, which secure aggregation never reveals
ROBUST_STRATEGIES = ("krum", "multikrum", "median", "fedmedian", "trimmedavg", "fedtrimmedavg", "bulyan")
OPTIMIZERS = ("sgd", "adam")
AGGREGATIONS = ("masking", "none")

MAX_FEATURES = 4096
MAX_ROUNDS = 100_000
MAX_EPOCHS = 1000
MAX_BATCH = 1 << 16
MAX_HIDDEN_LAYERS = 8
MAX_WIDTH = 8192


def _num(x: float) -> str:
    """A float as the decimal string signed JSON carries (shortest repr that round-trips)."""
    return repr(float(x))


def _float(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise InvalidInput(f"training spec: `{what}` must be a number")
    try:
        x = float(v)
    except ValueError:
        raise InvalidInput(f"training spec: `{what}` must be a number") from None
    if not math.isfinite(x):
        raise InvalidInput(f"training spec: `{what}` must be finite")
    return x


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidInput(f"training spec: `{what}` must be an integer")
    if not lo <= v <= hi:
        raise InvalidInput(f"training spec: `{what}` must be between {lo} and {hi}")
    return v


def _name(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 128 or any(c in v for c in ",\n\r\0"):
        raise InvalidInput(f"training spec: `{what}` must be a non-empty name without commas")
    return v


@dataclass(frozen=True)
class ModelOptions:
    """`[job.model_options]`; only the options the model uses may be set."""

    hidden: tuple[int, ...] | None = None  # mlp: hidden layer widths (default 32, 16)
    image: tuple[int, int, int] | None = None  # cnn: (channels, height, width) of the feature tensor
    architecture: str | None = None  # approved ClientApp: the registry model it trains

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.hidden is not None:
            d["hidden"] = list(self.hidden)
        if self.image is not None:
            d["image"] = list(self.image)
        if self.architecture is not None:
            d["architecture"] = self.architecture
        return d

    @classmethod
    def from_dict(cls, d: Any) -> ModelOptions:
        if not isinstance(d, dict):
            raise InvalidInput("training spec: `model_options` must be a table")
        unknown = sorted(set(d) - {"hidden", "image", "architecture"})
        if unknown:
            raise InvalidInput(f"training spec: unknown model option `{unknown[0]}`; use hidden, image or architecture")
        hidden = image = None
        if "hidden" in d:
            h = d["hidden"]
            if not isinstance(h, list) or not 1 <= len(h) <= MAX_HIDDEN_LAYERS:
                raise InvalidInput(f"training spec: `hidden` must list 1 to {MAX_HIDDEN_LAYERS} layer widths")
            hidden = tuple(_int(w, "hidden", 1, MAX_WIDTH) for w in h)
        if "image" in d:
            im = d["image"]
            if not isinstance(im, list) or len(im) != 3:
                raise InvalidInput("training spec: `image` must be [channels, height, width]")
            image = (_int(im[0], "image channels", 1, 64), _int(im[1], "image height", 4, 512),
                     _int(im[2], "image width", 4, 512))
        arch = d.get("architecture")
        if arch is not None and arch not in ARCHITECTURES:
            raise InvalidInput(f"training spec: `architecture` must be one of {', '.join(ARCHITECTURES)}")
        return cls(hidden, image, arch)


@dataclass(frozen=True)
class TrainingSpec:
    dataset: str
    model: str
    features: tuple[str, ...]
    label: str
    strategy: str
    rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str = "sgd"
    secure_aggregation: str = "masking"
    evaluate: bool = True
    strategy_options: tuple[tuple[str, float], ...] = ()  # sorted by name
    model_options: ModelOptions = ModelOptions()

    kind: ClassVar[str] = "train"
    ttl: ClassVar[timedelta] = TRAINING_TTL

    def to_fields(self) -> dict[str, Any]:
        return {"training": self.to_dict()}

    @classmethod
    def from_fields(cls, f: Fields) -> TrainingSpec:
        return cls.from_dict(f.obj("training"))

    def check_payload(self, dataset: str) -> None:
        self.check_form()
        if self.dataset != dataset:
            raise InvalidInput("job spec: the training spec names another dataset than the job")

    def describe(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def architecture(self) -> str:
        """The registry model whose arrays travel: the model itself, or an approved app's architecture."""
        if self.model in ARCHITECTURES:
            return self.model
        assert self.model_options.architecture is not None  # checked in check_form
        return self.model_options.architecture

    @property
    def options(self) -> dict[str, float]:
        return dict(self.strategy_options)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "features": list(self.features),
            "label": self.label,
            "strategy": self.strategy,
            "strategy_options": {k: _num(v) for k, v in self.strategy_options},
            "rounds": self.rounds,
            "local_epochs": self.local_epochs,
            "batch_size": self.batch_size,
            "learning_rate": _num(self.learning_rate),
            "optimizer": self.optimizer,
            "secure_aggregation": self.secure_aggregation,
            "evaluate": self.evaluate,
            "model_options": self.model_options.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any, *, defaults: bool = False) -> TrainingSpec:
        """Parse a spec. `defaults=True` (job.toml) fills optional fields; signed JSON must be complete."""
        if not isinstance(d, dict):
            raise InvalidInput("training spec must be a table / JSON object")
        known = {"dataset", "model", "features", "label", "strategy", "strategy_options", "rounds", "local_epochs",
                 "batch_size", "learning_rate", "optimizer", "secure_aggregation", "evaluate", "model_options"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidInput(f"training spec: unknown key `{unknown[0]}`; see the README's job.toml section")
        optional = {"strategy_options": {}, "optimizer": "sgd", "secure_aggregation": "masking", "evaluate": True,
                    "model_options": {}, "local_epochs": 1, "batch_size": 32, "strategy": "fedavg"}
        for key in sorted(known):
            if key not in d and not (defaults and key in optional):
                raise InvalidInput(f"training spec: `{key}` is missing")
        get = lambda k: d[k] if k in d else optional[k]  # noqa: E731
        features = get("features")
        if not isinstance(features, list) or not 1 <= len(features) <= MAX_FEATURES:
            raise InvalidInput(f"training spec: `features` must list 1 to {MAX_FEATURES} column names")
        strategy = _name(get("strategy"), "strategy").lower()
        opts = get("strategy_options")
        if not isinstance(opts, dict):
            raise InvalidInput("training spec: `strategy_options` must be a table")
        evaluate = get("evaluate")
        if not isinstance(evaluate, bool):
            raise InvalidInput("training spec: `evaluate` must be true or false")
        spec = cls(
            dataset=_name(get("dataset"), "dataset"),
            model=_name(get("model"), "model"),
            features=tuple(_name(f, "features") for f in features),
            label=_name(get("label"), "label"),
            strategy=strategy,
            rounds=_int(get("rounds"), "rounds", 1, MAX_ROUNDS),
            local_epochs=_int(get("local_epochs"), "local_epochs", 1, MAX_EPOCHS),
            batch_size=_int(get("batch_size"), "batch_size", 1, MAX_BATCH),
            learning_rate=_float(get("learning_rate"), "learning_rate"),
            optimizer=_name(get("optimizer"), "optimizer").lower(),
            secure_aggregation=_name(get("secure_aggregation"), "secure_aggregation").lower(),
            evaluate=evaluate,
            strategy_options=tuple(sorted((_name(k, "strategy option"), _float(v, k)) for k, v in opts.items())),
            model_options=ModelOptions.from_dict(get("model_options")),
        )
        spec.check_form()
        return spec

    def check_form(self) -> None:
        """Everything that does not depend on the contract; InvalidInput / PolicyViolation naming the field."""
        if self.strategy in ROBUST_STRATEGIES:
            raise PolicyViolation(
                f"strategy {self.strategy} needs every node's individual update, which secure aggregation never "
                f"reveals to anyone; use one of {', '.join(STRATEGIES)}"
            )
        if self.strategy not in STRATEGIES:
            raise InvalidInput(f"training spec: strategy {self.strategy!r} is not supported; use one of "
                               f"{', '.join(STRATEGIES)}")
        allowed = STRATEGIES[self.strategy]
        for k, v in self.strategy_options:
            if k not in allowed:
                hint = ", ".join(allowed) if allowed else "none"
                raise InvalidInput(f"training spec: strategy {self.strategy} has no option `{k}` (options: {hint})")
            lo, hi, hi_inclusive = allowed[k]
            if not (lo <= v and (v <= hi if hi_inclusive else v < hi)):
                raise InvalidInput(f"training spec: strategy option `{k}` is out of its range")
        if not 0 < self.learning_rate <= 10:
            raise InvalidInput("training spec: `learning_rate` must be in (0, 10]")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInput(f"training spec: `optimizer` must be one of {', '.join(OPTIMIZERS)}")
        if self.secure_aggregation not in AGGREGATIONS:
            raise InvalidInput("training spec: `secure_aggregation` must be \"masking\" or \"none\"")
        if len(set(self.features)) != len(self.features):
            raise InvalidInput("training spec: `features` lists a column twice")
        if self.label in self.features:
            raise InvalidInput("training spec: the label column cannot also be a feature")
        mo = self.model_options
        if self.model in ARCHITECTURES:
            if mo.architecture is not None:
                raise InvalidInput("training spec: `architecture` is only for approved ClientApps; "
                                   f"model {self.model} is itself a registry model")
        elif mo.architecture is None:
            raise InvalidInput(
                f"training spec: model {self.model!r} is not a registry model ({', '.join(ARCHITECTURES)}); for an "
                "approved ClientApp set [job.model_options] architecture to the registry model it trains"
            )
        arch = self.architecture
        if mo.hidden is not None and arch != "mlp":
            raise InvalidInput("training spec: `hidden` applies to the mlp model only")
        if arch == "cnn" and mo.image is None:
            raise InvalidInput("training spec: the cnn model needs [job.model_options] image = [channels, height, width]")
        if mo.image is not None and arch != "cnn":
            raise InvalidInput("training spec: `image` applies to the cnn model only")


def load_training_toml(path: str | Path) -> TrainingSpec:
    """Read job.toml's `[job]` table (ConfigError for file problems, InvalidInput for a bad spec)."""
    p = Path(path)
    data = read_toml(p, "job file")
    job = data.get("job")
    if not isinstance(job, dict):
        raise ConfigError(f"job file {p} has no [job] table; see the README's job.toml section")
    return TrainingSpec.from_dict(job, defaults=True)


register_payload(TrainingSpec.kind, TrainingSpec.from_fields)
