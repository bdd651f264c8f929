"""Preprocessing from the *public* schema only, so every node and `fedtrust predict` agree exactly.

No statistic of any node's data enters the transformation, so nothing about
a node's rows leaks through it, and the buyer can reproduce it on new rows.

Features, in the order the job lists them:

* numeric (`float`, `int`) column with public bounds [min, max]:
  ``x' = clip((x - min) / (max - min), 0, 1)`` — one input; a missing value
  (NULL, NaN) becomes 0;
* category column with public domain [v1, …, vk]: one-hot over the domain, in
  the schema's order — k inputs; a missing or unknown value is all zeros.

Label:

* category column: the class index of the value in its public domain;
* int column with bounds min..max: class index ``value - min`` (the demo's
  `defaulted`, 0..1, is a binary label);
* rows whose label is missing or outside the domain are not used for training.

A model has one output (a logit, probability = sigmoid) for two classes and
one output per class (scores, softmax) otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from fedtrust.errors import InvalidInput
from fedtrust.trust.schema import Column, Schema

__all__ = ["Feature", "Preprocessor", "input_width"]


@dataclass(frozen=True)
class Feature:
    name: str
    type: str  # "float" | "int" | "category"
    min: float = 0.0
    max: float = 1.0
    values: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return len(self.values) if self.type == "category" else 1

    @classmethod
    def of(cls, c: Column) -> Feature:
        if c.type == "category":
            return cls(c.name, c.type, values=tuple(c.values))
        assert c.min is not None and c.max is not None
        return cls(c.name, c.type, float(c.min), float(c.max))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.type == "category":
            d["values"] = list(self.values)
        else:
            d["min"], d["max"] = repr(self.min), repr(self.max)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Feature:
        try:
            if d["type"] == "category":
                return cls(str(d["name"]), "category", values=tuple(str(v) for v in d["values"]))
            if d["type"] not in ("float", "int"):
                raise ValueError(d["type"])
            return cls(str(d["name"]), str(d["type"]), float(d["min"]), float(d["max"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidInput("the model's preprocessing metadata is malformed; use a model file fedtrust wrote") from None


def input_width(schema: Schema, features: Sequence[str]) -> int:
    return sum(Feature.of(schema.column(f)).width for f in features)


@dataclass(frozen=True)
class Preprocessor:
    features: tuple[Feature, ...]
    label: Feature
    classes: tuple[str, ...]  # class names, index = class id

    @classmethod
    def build(cls, schema: Schema, features: Sequence[str], label: str) -> Preprocessor:
        lab = schema.column(label)
        if lab.type == "category":
            classes = tuple(lab.values)
        elif lab.type == "int":
            assert lab.min is not None and lab.max is not None
            classes = tuple(str(v) for v in range(int(lab.min), int(lab.max) + 1))
        else:
            raise InvalidInput(f"label `{label}` is a float column; train on a category or int column")
        if len(classes) < 2:
            raise InvalidInput(f"label `{label}` has fewer than two classes")
        return cls(tuple(Feature.of(schema.column(f)) for f in features), Feature.of(lab), classes)

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def outputs(self) -> int:
        """Model outputs: 1 logit for a binary label, one score per class otherwise."""
        return 1 if self.num_classes == 2 else self.num_classes

    # ---------------------------------------------------------------- apply
    def transform(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Feature matrix (rows × width, float32) from raw columns (masked arrays allowed for NULLs)."""
        n = len(next(iter(columns.values()))) if columns else 0
        out = np.zeros((n, self.width), dtype=np.float32)
        pos = 0
        for f in self.features:
            if f.name not in columns:
                raise InvalidInput(f"column `{f.name}` is missing from the data")
            col = columns[f.name]
            if f.type == "category":
                vals, missing = _objects(col)
                for j, v in enumerate(f.values):
                    out[:, pos + j] = ((vals == v) & ~missing).astype(np.float32)
            else:
                x, missing = _floats(col)
                scaled = np.clip((x - f.min) / (f.max - f.min), 0.0, 1.0)
                scaled[missing | np.isnan(x)] = 0.0
                out[:, pos] = scaled.astype(np.float32)
            pos += f.width
        return out

    def labels(self, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class ids as int64, mask of usable rows): rows with a missing or out-of-domain label are unusable."""
        lab = self.label
        if lab.type == "category":
            vals, missing = _objects(column)
            ids = np.full(len(vals), -1, dtype=np.int64)
            for j, v in enumerate(lab.values):
                ids[(vals == v) & ~missing] = j
        else:
            x, missing = _floats(column)
            ok = ~missing & np.isfinite(x) & (x == np.round(x)) & (x >= lab.min) & (x <= lab.max)
            ids = np.where(ok, np.nan_to_num(x) - lab.min, -1).astype(np.int64)
        usable = ids >= 0
        return ids, usable

    def to_dict(self) -> dict[str, Any]:
        return {"features": [f.to_dict() for f in self.features], "label": self.label.to_dict(),
                "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: Any) -> Preprocessor:
        if not isinstance(d, dict) or not isinstance(d.get("features"), list) or not isinstance(d.get("classes"), list):
            raise InvalidInput("the model's preprocessing metadata is malformed; use a model file fedtrust wrote")
        return cls(tuple(Feature.from_dict(f) for f in d["features"]), Feature.from_dict(d.get("label")),
                   tuple(str(c) for c in d["classes"]))


def _objects(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.ma.getmaskarray(col) if isinstance(col, np.ma.MaskedArray) else np.zeros(len(col), dtype=bool)
    data = np.asarray(np.ma.getdata(col), dtype=object)
    missing = mask | np.array([v is None for v in data], dtype=bool)
    return np.array([str(v) if v is not None else "" for v in data], dtype=object), missing


def _floats(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.ma.getmaskarray(col) if isinstance(col, np.ma.MaskedArray) else np.zeros(len(col), dtype=bool)
    data = np.ma.getdata(col)
    if data.dtype == object:
        missing = mask | np.array([v is None for v in data], dtype=bool)
        data = np.array([float(v) if v is not None else np.nan for v in data], dtype=np.float64)
    else:
        missing = mask.copy()
        data = data.astype(np.float64)
    return data, missing
