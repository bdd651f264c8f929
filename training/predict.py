"""Apply a delivered model to new rows with exactly the preprocessing the nodes used.

The safetensors file carries the signed training spec and the public
preprocessing (`fedtrust.training.preprocess`); the rows are read with the
same sandboxed DuckDB loader the nodes use, typed by the features' public
schema. The output has one row per input row, in order:

* binary label: `probability` (of the label's second class, e.g.
  `defaulted` = 1) and `predicted` (the class with probability ≥ 0.5);
* otherwise: `score_<class>` for every class (softmax) and `predicted`.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedtrust.errors import ConfigError
from fedtrust.training.arrays import read_model
from fedtrust.training.preprocess import Preprocessor
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.schema import Column, Schema

if TYPE_CHECKING:
    from fedtrust.trust.vertical_lr import VerticalLRSpec

__all__ = ["Predictions", "load_model", "predict_rows", "write_predictions"]


@dataclass(frozen=True)
class Predictions:
    columns: tuple[str, ...]
    rows: list[list[str]]
    scores: np.ndarray  # probability of class 1 (binary) or rows × classes


def load_model(data: bytes, job: TrainingSpec | None = None):
    """(torch model, spec, preprocessor); ConfigError when job.toml describes another model."""
    import torch

    from fedtrust.training.models import build_model

    arrays, spec_d, pre_d, _ = read_model(data)
    spec = TrainingSpec.from_dict(spec_d)
    if job is not None:
        for field in ("model", "features", "label", "model_options"):
            if getattr(job, field) != getattr(spec, field):
                raise ConfigError(f"job.toml's `{field}` differs from the model file's; pass the job.toml the model "
                                  "was trained with")
    pre = Preprocessor.from_dict(pre_d)
    model = build_model(spec, pre.width, pre.outputs)
    try:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True)
    except RuntimeError:
        raise ConfigError("the model file's arrays do not fit its architecture; it is damaged") from None
    return model, spec, pre


def predict_rows(data: bytes, rows_path: Path, job: TrainingSpec | VerticalLRSpec | None = None, *, encoding: str = "utf-8",
                 null_values: tuple[str, ...] = ("",)) -> Predictions:
    from fedtrust.query.dataset import Dataset
    from fedtrust.training.loop import predict_scores

    _, spec_d, _, _ = read_model(data)
    if spec_d.get("kind") == "vertical-lr":
        return _predict_vertical(data, rows_path, job, encoding=encoding, null_values=null_values)
    if job is not None and not isinstance(job, TrainingSpec):
        raise ConfigError("job.toml is a vertical-lr job but the model file is a federated model; pass the job.toml "
                          "the model was trained with")
    model, _, pre = load_model(data, job)
    schema = Schema(tuple(Column(f.name, f.type, None if f.type == "category" else f.min,
                                 None if f.type == "category" else f.max, f.values) for f in pre.features))
    with Dataset.open(rows_path, schema, encoding=encoding, null_values=null_values) as ds:
        x = pre.transform(ds.columns(tuple(f.name for f in pre.features)))
    scores = predict_scores(model, x)
    cols: tuple[str, ...]
    if pre.outputs == 1:
        cols = ("probability", "predicted")
        rows = [[f"{p:.6f}", pre.classes[1] if p >= 0.5 else pre.classes[0]] for p in scores]
    else:
        cols = tuple(f"score_{c}" for c in pre.classes) + ("predicted",)
        rows = [[*(f"{v:.6f}" for v in s), pre.classes[int(np.argmax(s))]] for s in scores]
    return Predictions(cols, rows, scores)


def _predict_vertical(data: bytes, rows_path: Path, job, *, encoding: str,
                      null_values: tuple[str, ...]) -> Predictions:
    """A vertical-lr model (`fedtrust.training.vertical_lr`) on rows holding every feature, named `bank.income` or,
    where only one product has the column, `income`."""
    from fedtrust.query.dataset import Dataset
    from fedtrust.training.vertical_lr import features_for_prediction, predict_proba
    from fedtrust.trust.vertical_lr import VerticalLRSpec

    arrays, spec_d, pre_d, _ = read_model(data)
    spec = VerticalLRSpec.from_dict({k: v for k, v in spec_d.items() if k != "kind"}, where="the model file's spec")
    if job is not None and (not isinstance(job, VerticalLRSpec) or (job.features, job.label) != (spec.features,
                                                                                                   spec.label)):
        raise ConfigError("job.toml's features or label differ from the model file's; pass the job.toml the model "
                          "was trained with")
    pre = Preprocessor.from_dict(pre_d)
    weight, bias = arrays.get("weight"), arrays.get("bias")
    if weight is None or bias is None or weight.shape != (1, pre.width) or bias.shape != (1,):
        raise ConfigError("the model file's arrays do not fit its features; it is damaged")
    try:
        header = _header(rows_path, encoding)
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"cannot read the header of {rows_path}; pass a CSV or Parquet file with the model's "
                          "feature columns") from None
    cols = [c for c in header if any(c in (f.name, f.name.split(".", 1)[1]) for f in pre.features)]
    by_file = {c: next(f for f in pre.features if c in (f.name, f.name.split(".", 1)[1])) for c in cols}
    schema = Schema(tuple(Column(c, f.type, None if f.type == "category" else f.min,
                                 None if f.type == "category" else f.max, f.values) for c, f in by_file.items()))
    with Dataset.open(rows_path, schema, encoding=encoding, null_values=null_values) as ds:
        x = features_for_prediction(pre, ds.columns(tuple(cols)))
    p = predict_proba(weight[0], float(bias[0]), x)
    rows = [[f"{v:.6f}", pre.classes[1] if v >= 0.5 else pre.classes[0]] for v in p]
    return Predictions(("probability", "predicted"), rows, p)


def _header(path: Path, encoding: str) -> list[str]:
    if path.suffix.lower() == ".parquet":
        import duckdb

        with duckdb.connect() as con:
            return [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()]
    with open(path, newline="", encoding=encoding) as f:
        return next(csv.reader(f), [])


def write_predictions(pred: Predictions, out: Path) -> None:
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(pred.columns)
        w.writerows(pred.rows)
