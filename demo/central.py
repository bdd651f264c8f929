"""The model a trusted party would train on the pooled rows (for comparison only).

Same public preprocessing, same registry architecture, same local loop and
hyperparameters as the nodes, run for rounds × local_epochs epochs over the
union of all owners' files. The demo shows it next to the federated model;
the tests assert the federated model comes close. Nothing in fedtrust's
training path calls this.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fedtrust.training.data import LocalData, load_rows
from fedtrust.training.preprocess import Preprocessor
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.schema import Schema

__all__ = ["pooled_rows", "train_central", "score", "auc", "auc_of"]


def pooled_rows(files: Sequence[Path], schema: Schema, spec: TrainingSpec) -> LocalData:
    from fedtrust.query.dataset import Dataset

    pre = Preprocessor.build(schema, spec.features, spec.label)
    parts = []
    for f in files:
        with Dataset.open(f, schema) as ds:
            parts.append(load_rows(ds, pre))
    return LocalData(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), pre)


def train_central(files: Sequence[Path], schema: Schema, spec: TrainingSpec, seed: int = 0):
    """(torch model, preprocessor) trained on the pooled rows."""
    import torch

    from fedtrust.training.loop import fit
    from fedtrust.training.models import build_model

    data = pooled_rows(files, schema, spec)
    torch.manual_seed(seed)
    model = build_model(spec, data.preprocessor.width, data.preprocessor.outputs)
    fit(model, data.x, data.y, epochs=spec.rounds * spec.local_epochs, batch_size=spec.batch_size,
        learning_rate=spec.learning_rate, optimizer=spec.optimizer, seed=seed)
    return model, data.preprocessor


def score(model, data: LocalData) -> tuple[float, float]:
    """(accuracy, mean loss) of a torch model on preprocessed rows."""
    from fedtrust.training.loop import evaluate

    out = evaluate(model, data.x, data.y)
    return out.accuracy, out.loss


def auc(model, data: LocalData) -> float:
    """Area under the ROC curve of a binary model on preprocessed rows."""
    from fedtrust.training.loop import predict_scores

    p = predict_scores(model, data.x)
    return auc_of(data.y, p) if p.ndim == 1 else float("nan")


def auc_of(labels: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve of scores `p` for 0/1 `labels` (rank statistic; ties count one half)."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(p)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    i = 0
    while i < len(p):  # average ranks of ties
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))
