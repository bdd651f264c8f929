"""A node's training rows, preprocessed from the public schema, for the ClientApps it runs.

The node daemon registers the sandboxed DuckDB `Dataset` it verified against
the product's commitment at start-up (`register_dataset`); `local_data`
serves ClientApps from it, so an app trains on exactly the committed rows and
needs no file access of its own. (Outside a node daemon, e.g. when an app is
tried out locally, `local_data` opens the file itself in the same sandbox.)
Preprocessed arrays are cached per (file, features, label).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedtrust.training.context import NodeJob
from fedtrust.training.preprocess import Preprocessor
from fedtrust.trust.schema import Schema

__all__ = ["LocalData", "register_dataset", "local_data", "load_rows"]


class _Columns(Protocol):
    def columns(self, names: tuple[str, ...]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LocalData:
    x: np.ndarray  # float32, rows × inputs
    y: np.ndarray  # int64 class ids
    preprocessor: Preprocessor

    @property
    def examples(self) -> int:
        return int(self.y.shape[0])


_lock = threading.Lock()
_datasets: dict[str, _Columns] = {}
_cache: OrderedDict[tuple, LocalData] = OrderedDict()
_CACHE_ENTRIES = 8


def register_dataset(path: str, dataset: _Columns) -> None:
    """Serve `path` from an already opened, verified dataset (the node daemon calls this)."""
    with _lock:
        _datasets[str(path)] = dataset
        for key in [k for k in _cache if k[0] == str(path)]:
            del _cache[key]


def load_rows(dataset: _Columns, pre: Preprocessor, max_examples: int | None = None) -> LocalData:
    names = tuple(dict.fromkeys([*(f.name for f in pre.features), pre.label.name]))
    cols = dataset.columns(names)
    x = pre.transform(cols)
    y, usable = pre.labels(cols[pre.label.name])
    x, y = x[usable], y[usable]
    if max_examples is not None and len(y) > max_examples:
        x, y = x[:max_examples], y[:max_examples]
    return LocalData(np.ascontiguousarray(x), np.ascontiguousarray(y), pre)


def local_data(context: Any) -> LocalData:
    """The node's usable rows for the job in `context.node_config` (see `fedtrust.training.context`)."""
    job = NodeJob.from_config(context.node_config)
    key = (job.dataset_path, job.features, job.label, repr(sorted(job.schema.items())))
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
        dataset = _datasets.get(job.dataset_path)
    schema = Schema.from_dict(job.schema)
    pre = Preprocessor.build(schema, job.features, job.label)
    if dataset is None:
        from fedtrust.query.dataset import Dataset

        with Dataset.open(job.dataset_path, schema) as ds:
            data = load_rows(ds, pre, job.max_examples)
    else:
        data = load_rows(dataset, pre, job.max_examples)
    with _lock:
        _cache[key] = data
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return data
