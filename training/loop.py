"""Local training and evaluation of a registry model on preprocessed rows (torch).

Used by the built-in ClientApp on every node, by the demo's central baseline
and by the benchmarks, so all three run the very same loop. The whole
preprocessed dataset is moved to the device once; minibatches are index
slices of a seeded permutation. Loss: binary cross-entropy on one logit for
two classes, cross-entropy over the class scores otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

__all__ = ["Outcome", "resolve_device", "fit", "evaluate", "predict_scores"]

EVAL_BATCH = 8192


@dataclass(frozen=True)
class Outcome:
    examples: int
    loss: float  # mean over examples
    accuracy: float


def resolve_device(setting: str) -> str:
    """NODE.toml `device`: "auto" is CUDA when torch sees a GPU, CPU otherwise."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def _loss_and_correct(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if out.shape[1] == 1:
        logit = out[:, 0]
        loss = nn.functional.binary_cross_entropy_with_logits(logit, y.to(logit.dtype), reduction="sum")
        correct = ((logit > 0).to(torch.int64) == y).sum()
    else:
        loss = nn.functional.cross_entropy(out, y, reduction="sum")
        correct = (out.argmax(dim=1) == y).sum()
    return loss, correct


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, learning_rate: float,
        optimizer: str = "sgd", device: str = "cpu", seed: int = 0, proximal_mu: float = 0.0) -> Outcome:
    """Train in place; the outcome is the mean loss and accuracy over the last epoch's minibatches."""
    n = int(len(y))
    model.to(device)
    model.train()
    if n == 0:
        return Outcome(0, 0.0, 0.0)
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    yt = torch.from_numpy(np.ascontiguousarray(y)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=learning_rate)
    else:
        opt = torch.optim.SGD(params, lr=learning_rate)
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else None
    gen = torch.Generator().manual_seed(seed)
    total_loss = torch.zeros((), device=device)
    total_correct = torch.zeros((), dtype=torch.int64, device=device)
    for _ in range(epochs):
        total_loss.zero_()
        total_correct.zero_()
        perm = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            out = model(xt[idx])
            loss_sum, correct = _loss_and_correct(out, yt[idx])
            loss = loss_sum / len(idx)
            if anchor is not None:
                loss = loss + (proximal_mu / 2) * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss_sum.detach()
            total_correct += correct
    return Outcome(n, float(total_loss) / n, int(total_correct) / n)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, device: str = "cpu") -> Outcome:
    n = int(len(y))
    if n == 0:
        return Outcome(0, 0.0, 0.0)
    model.to(device)
    model.eval()
    loss = 0.0
    correct = 0
    for start in range(0, n, EVAL_BATCH):
        xb = torch.from_numpy(np.ascontiguousarray(x[start:start + EVAL_BATCH])).to(device)
        yb = torch.from_numpy(np.ascontiguousarray(y[start:start + EVAL_BATCH])).to(device)
        batch_loss, c = _loss_and_correct(model(xb), yb)
        loss += float(batch_loss)
        correct += int(c)
    return Outcome(n, loss / n, correct / n)


@torch.no_grad()
def predict_scores(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Probability of class 1 (one output) or softmax class scores (rows × classes)."""
    model.eval()
    outs: Iterable[torch.Tensor] = (model(torch.from_numpy(np.ascontiguousarray(x[s:s + EVAL_BATCH])))
                                    for s in range(0, len(x), EVAL_BATCH))
    parts = [torch.sigmoid(o[:, 0]) if o.shape[1] == 1 else torch.softmax(o, dim=1) for o in outs]
    if not parts:
        return np.zeros((0,), dtype=np.float64)
    return torch.cat(parts).double().numpy()
