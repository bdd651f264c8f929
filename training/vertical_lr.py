"""Vertical logistic regression in MPC: two owners' features and one owner's label, trained on secret shares.

Why this is safe: each owner's feature matrix (its rows in the PSI alignment's
order, preprocessed from the *public* schema only) and the label owner's
labels enter CrypTen as additive secret shares; every step of SGD — the
linear score, CrypTen's sigmoid (exp and reciprocal by Newton iterations,
`reciprocal` method), the residual, the gradient and the update — runs on
shares, so no party sees another's rows, residuals or gradients, and nobody
sees the weights: each party returns only its share of them, which the
runtime seals to the buyer, who adds them (`finish`). What is public: the
shapes (intersection size, each owner's input width from the schema), the
hyperparameters and the row order of each epoch (a permutation drawn from the
signed job's nonce; it says nothing about the data).

The algorithm, identical in MPC (`compute`) and in plaintext (`fit_plain`,
the central reference the tests and the demo compare against):

    w, b = 0, 0
    for epoch in 1..epochs:            # rows in a public permutation per epoch
        for each batch B of batch_size rows:
            p = sigmoid(X_B w + b)
            g = (p - y_B) * usable_B   # rows whose label is missing or out of domain count zero
            w -= lr / |B| * X_B^T g
            b -= lr / |B| * sum(g)

Features are ordered by owner (the job's participants, sorted), then in the
job's order: the model file's preprocessing lists them in that order, with
product-qualified names (`bank.income`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from fedtrust.errors import InvalidInput
from fedtrust.training.preprocess import Preprocessor
from fedtrust.trust.schema import Column, Schema
from fedtrust.trust.vertical_lr import KIND, VerticalLRSpec, split_name

__all__ = ["Plan", "VerticalModel", "plan_for", "local_inputs", "compute", "sgd", "finish", "model_file", "fit_plain",
           "predict_proba", "order_seed", "features_for_prediction", "input_names"]


@dataclass(frozen=True)
class Block:
    party: str  # node name
    dataset: str
    features: tuple[str, ...]  # qualified names, in the model's order
    width: int  # inputs after one-hot encoding


@dataclass(frozen=True)
class Plan:
    """Everything public about one vertical-lr job: who shares which inputs, in which order."""

    parties: tuple[str, ...]  # rank order: the job's participants
    blocks: tuple[Block, ...]  # one per party, in rank order (width 0: the party holds no feature)
    label_party: str
    preprocessor: Preprocessor  # qualified names, features in the model's order
    spec: VerticalLRSpec

    @property
    def width(self) -> int:
        return sum(b.width for b in self.blocks)

    def rank(self, party: str) -> int:
        return self.parties.index(party)


def _qualified(dataset: str, c: Column) -> Column:
    return Column(f"{dataset}.{c.name}", c.type, c.min, c.max, c.values)


def plan_for(contract: Any, participants: tuple[str, ...], spec: VerticalLRSpec) -> Plan:
    """The public plan of `spec` under `contract` (checked by `trust.vertical_lr.check_vertical_lr` first)."""
    datasets = {h.credential.name: h.product.dataset for h in contract.owners}
    schemas = {h.product.dataset: h.product.schema for h in contract.owners}
    order = [f"{datasets[p]}.{c}" for p in participants for c in spec.features_of(datasets[p])]
    columns = [_qualified(split_name(q)[0], schemas[split_name(q)[0]].column(split_name(q)[1]))
               for q in [*order, spec.label]]
    pre = Preprocessor.build(Schema(tuple(columns)), order, spec.label)
    blocks = []
    for p in participants:
        feats = tuple(f for f in pre.features if split_name(f.name)[0] == datasets[p])
        blocks.append(Block(p, datasets[p], tuple(f.name for f in feats), sum(f.width for f in feats)))
    owner = [p for p in participants if datasets[p] == spec.label_dataset]
    if len(owner) != 1:
        raise InvalidInput("the label's product is not held by exactly one of the job's participants")
    return Plan(tuple(participants), tuple(blocks), owner[0], pre, spec)


def order_seed(nonce: str) -> int:
    """The seed of each epoch's public row permutation, from the buyer-signed job nonce."""
    return int(nonce[:15], 16)


# -- node side, outside MPC ------------------------------------------------------------------------
def local_inputs(plan: Plan, me: str, dataset: Any, row_ids: list[int]) -> dict[str, Any]:
    """This owner's private inputs, rows in the alignment's order: `x` (rows × its width, float32) and, at the
    label's owner, `y` (0/1) and `usable` (0/1). `dataset` is the node's `query.dataset.Dataset`."""
    import torch

    block = plan.blocks[plan.rank(me)]
    bare = [split_name(q)[1] for q in block.features]
    label_col = split_name(plan.spec.label)[1] if me == plan.label_party else None
    cols = dataset.columns_at(bare + ([label_col] if label_col else []), row_ids)
    named = {f"{block.dataset}.{c}": cols[c] for c in bare}
    own = Preprocessor(tuple(f for f in plan.preprocessor.features if f.name in named), plan.preprocessor.label,
                       plan.preprocessor.classes)
    x = own.transform(named) if bare else np.zeros((len(row_ids), 0), dtype=np.float32)
    out = {"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))}
    if label_col is not None:
        ids, usable = plan.preprocessor.labels(cols[label_col])
        out["y"] = torch.from_numpy(np.where(usable, ids, 0).astype(np.float32))
        out["usable"] = torch.from_numpy(usable.astype(np.float32))
    return out


# -- inside MPC, identical on every party ------------------------------------------------------
def compute(plan: Plan, rank: int, inputs: Mapping[str, Any], seed: int, share: Callable | None = None,
            device: Any = None) -> tuple[Any, Any]:
    """Train on shares; returns the shared (weight, bias) as CrypTen tensors, never revealed. Run inside
    `crypten_shim.party(rank, len(plan.parties), link)`. `share(tensor or None, src, shape)` secret-shares party
    `src`'s input (default: `crypten.cryptensor`); `device` places the public zeros (CUDA where the inputs are)."""
    import torch

    from fedtrust.privacy import crypten_shim

    crypten = crypten_shim.load()
    if share is None:
        def share(t, src, shape):
            return crypten.cryptensor(t if t is not None else torch.zeros(shape), src=src)
    comm = crypten.communicator.get()
    n = int(inputs["x"].shape[0])
    sizes = comm.all_gather(torch.tensor([n], dtype=torch.int64))
    if any(int(s.item()) != n for s in sizes):
        raise InvalidInput("the owners' PSI alignments differ in size; run PSI again and train on its job")
    if n == 0:
        raise InvalidInput("the PSI alignment is empty; there are no joined rows to train on")
    label_rank = plan.rank(plan.label_party)
    parts = [share(inputs["x"] if r == rank else None, r, (n, block.width))
             for r, block in enumerate(plan.blocks) if block.width]
    x = parts[0] if len(parts) == 1 else crypten.cat(parts, dim=1)
    y = share(inputs["y"] if rank == label_rank else None, label_rank, (n,))
    usable = share(inputs["usable"] if rank == label_rank else None, label_rank, (n,))
    zeros = {"device": device} if device is not None else {}
    return sgd(x, y, usable, crypten.cryptensor(torch.zeros(plan.width, **zeros)),
               crypten.cryptensor(torch.zeros(1, **zeros)), plan.spec, seed)


def sgd(x: Any, y: Any, usable: Any, w: Any, b: Any, spec: VerticalLRSpec, seed: int) -> tuple[Any, Any]:
    """The training loop from (w, b), on CrypTen tensors (shares) or torch tensors (plaintext) alike."""
    import torch

    n = x.size(0)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(spec.epochs):
        perm = torch.randperm(n, generator=gen)
        if hasattr(x, "device") and str(x.device) != "cpu":
            perm = perm.to(x.device)
        xe, ye, ue = x[perm], y[perm], usable[perm]
        for start in range(0, n, spec.batch_size):
            end = start + spec.batch_size
            xs, ys, us = xe[start:end], ye[start:end], ue[start:end]
            step = spec.learning_rate / xs.size(0)
            g = ((xs.matmul(w) + b).sigmoid() - ys) * us
            w = w - xs.t().matmul(g) * step
            b = b - g.sum().unsqueeze(0) * step
    return w, b


# -- buyer side --------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerticalModel:
    weight: np.ndarray  # (width,) float32, in the plan's feature order
    bias: float


def finish(spec: VerticalLRSpec, outputs: Mapping[str, Any]) -> VerticalModel:
    """The model from the summed, decoded shares."""
    w = np.asarray(outputs["weight"], dtype=np.float32).reshape(-1)
    b = np.asarray(outputs["bias"], dtype=np.float32).reshape(-1)
    if b.shape != (1,) or not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise InvalidInput("the vertical model's outputs are malformed or not finite")
    return VerticalModel(w, float(b[0]))


def model_file(plan: Plan, job_id: str, model: VerticalModel) -> bytes:
    """safetensors bytes: `weight` (1 × width) and `bias` (1,), with the spec and the public preprocessing."""
    from fedtrust.training.arrays import write_model

    if model.weight.shape != (plan.width,):
        raise InvalidInput("the vertical model's weights do not match the job's features")
    return write_model({"weight": model.weight.reshape(1, -1), "bias": np.array([model.bias], dtype=np.float32)},
                       {"kind": KIND, **plan.spec.to_dict()}, plan.preprocessor.to_dict(), job_id)


def input_names(preprocessor: Preprocessor) -> list[str]:
    """One name per model input: `bank.income`, and `bank.segment=sme` for each value of a one-hot category."""
    return [n for f in preprocessor.features
            for n in ([f"{f.name}={v}" for v in f.values] if f.type == "category" else [f.name])]


def predict_proba(weight: np.ndarray, bias: float, x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64) @ np.asarray(weight, dtype=np.float64).reshape(-1) + float(bias)
    return 1.0 / (1.0 + np.exp(-z))


# -- the central reference ---------------------------------------------------------------------
def fit_plain(x: np.ndarray, y: np.ndarray, usable: np.ndarray, spec: VerticalLRSpec, seed: int) -> VerticalModel:
    """The same SGD in plaintext over joined rows (a trusted party's model; for comparison only)."""
    import torch

    xt, yt, ut = (torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in (x, y, usable))
    w, b = sgd(xt, yt, ut, torch.zeros(xt.shape[1]), torch.zeros(1), spec, seed)
    return VerticalModel(w.numpy().astype(np.float32), float(b[0]))


def features_for_prediction(preprocessor: Preprocessor, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The model's input matrix from columns named qualified (`bank.income`) or bare (`income`, when only one
    product has it)."""
    bare: dict[str, list[str]] = {}
    for f in preprocessor.features:
        bare.setdefault(split_name(f.name)[1], []).append(f.name)
    named = {}
    for f in preprocessor.features:
        col = split_name(f.name)[1]
        if f.name in columns:
            named[f.name] = columns[f.name]
        elif col in columns and len(bare[col]) == 1:
            named[f.name] = columns[col]
        else:
            raise InvalidInput(f"column `{f.name}` is missing from the data (name it `{f.name}`"
                               + (f" or `{col}`" if len(bare[col]) == 1 else "") + ")")
    return preprocessor.transform(named)

