"""DP-SGD at the node (Opacus), planned from public bounds, with noise from a CSPRNG.

**Plan (public).** The sampling rate is q = batch_size / min_rows, where
`min_rows` is the minimum row count the owner *declared in the product
listing* — never the node's actual row count, which ε would otherwise reveal.
Each round runs local_epochs × ⌈min_rows / batch_size⌉ steps, so the whole
job is rounds × that many steps of the subsampled Gaussian mechanism. The
noise multiplier σ is the smallest that keeps the job within the target
(ε, δ) under Opacus's RDP accountant; the ε the accountant computes for the
whole planned job is what the node debits, before its first round.

**Training.** Per-sample gradients (Opacus `GradSampleModule`) are clipped to
`max_grad_norm`; Gaussian noise of std σ·max_grad_norm is added to their sum;
batches are Poisson samples with rate q. Opacus's `secure_mode` needs
torchcsprng, which does not build for this torch, so `CsprngDPOptimizer`
draws its noise (and `poisson_batches` its sampling) from AES-256-CTR keyed
by `os.urandom` — a CSPRNG — turned into normals by Box–Muller, four draws
summed and halved as Opacus's secure mode does against floating-point
attacks. Models with BatchNorm are refused (per-sample gradients are
undefined for it). The wrapped module prefixes parameter names with
`_module.`; `unwrap` returns the plain model so exchanged weights keep the
global model's names.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Iterator

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedtrust.errors import PolicyViolation

ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class DpSgdRun:
    """What one round of DP-SGD needs (passed to the ClientApp through node_config)."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps_per_round: int
    batch_size: int


@dataclass(frozen=True)
class DpSgdPlan:
    target_epsilon: Decimal
    delta: Decimal
    epsilon: Decimal  # what the accountant computes for the whole planned job (≤ target), rounded up
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    batch_size: int
    min_rows: int
    accountant: str = ACCOUNTANT

    @property
    def run(self) -> DpSgdRun:
        return DpSgdRun(self.noise_multiplier, self.max_grad_norm, self.sample_rate, self.steps_per_round,
                        self.batch_size)

    def to_dict(self) -> dict:
        return {"mechanism": "dp-sgd", "accountant": self.accountant, "target_epsilon": str(self.target_epsilon),
                "epsilon": str(self.epsilon), "delta": str(self.delta), "noise_multiplier": repr(self.noise_multiplier),
                "max_grad_norm": repr(self.max_grad_norm), "sample_rate": repr(self.sample_rate),
                "steps_per_round": self.steps_per_round, "rounds": self.rounds}


def plan_dp_sgd(target_epsilon: Decimal, delta: Decimal, *, min_rows: int | None, batch_size: int,
                local_epochs: int, rounds: int, max_grad_norm: float = 1.0) -> DpSgdPlan:
    """σ for the whole job from public numbers only; PolicyViolation when no plan fits."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    if not min_rows:
        raise PolicyViolation(
            "DP training needs the product's declared minimum row count (`min_rows` in the listing); "
            "ask the exchange to list the product with --min-rows"
        )
    if batch_size < 1 or batch_size > min_rows:
        raise PolicyViolation(f"batch_size must be between 1 and the product's declared minimum of {min_rows} rows")
    q = batch_size / min_rows
    steps_per_round = local_epochs * math.ceil(min_rows / batch_size)
    steps = steps_per_round * rounds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns about its alpha grid at extreme σ
        sigma = get_noise_multiplier(target_epsilon=float(target_epsilon), target_delta=float(delta), sample_rate=q,
                                     steps=steps, accountant=ACCOUNTANT, epsilon_tolerance=0.005)
        acc = RDPAccountant()
        acc.history = [(sigma, q, steps)]
        achieved = Decimal(repr(acc.get_epsilon(delta=float(delta))))
    spent = min(achieved.quantize(Decimal("0.000001"), rounding=ROUND_CEILING), Decimal(target_epsilon))
    return DpSgdPlan(Decimal(target_epsilon), Decimal(delta), spent, float(sigma), float(max_grad_norm), q,
                     steps_per_round, rounds, batch_size, min_rows)


class Csprng:
    """Uniforms and normals from AES-256-CTR keyed by os.urandom (fresh key per instance)."""

    def __init__(self) -> None:
        self._enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()

    def uniform(self, n: int) -> np.ndarray:
        """n floats uniform in (0, 1], 53 bits each."""
        words = np.frombuffer(self._enc.update(bytes(8 * n)), dtype=np.uint64)
        return ((words >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53

    def normal(self, n: int) -> np.ndarray:
        """n standard normals (Box–Muller)."""
        half = (n + 1) // 2
        u1, u2 = self.uniform(half), self.uniform(half)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
        return z[:n]

    def secure_normal(self, shape: torch.Size, std: float, like: torch.Tensor) -> torch.Tensor:
        """N(0, std²) as the sum of four normals halved (Opacus secure mode's floating-point defence)."""
        n = int(np.prod(shape)) if len(shape) else 1
        z = sum(self.normal(n) for _ in range(4)) / 2.0
        return torch.from_numpy(z * std).to(dtype=like.dtype, device=like.device).view(shape)


def make_dp_optimizer(optimizer: torch.optim.Optimizer, plan: DpSgdPlan | DpSgdRun, rng: Csprng):
    from opacus.optimizers import DPOptimizer

    class CsprngDPOptimizer(DPOptimizer):
        def add_noise(self) -> None:  # same as Opacus, with noise from our CSPRNG
            from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

            for p in self.params:
                _check_processed_flag(p.summed_grad)
                noise = rng.secure_normal(p.summed_grad.shape, self.noise_multiplier * self.max_grad_norm,
                                          p.summed_grad)
                p.grad = (p.summed_grad + noise).view_as(p)
                _mark_as_processed(p.summed_grad)

    return CsprngDPOptimizer(optimizer, noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                             expected_batch_size=plan.batch_size, loss_reduction="mean", secure_mode=False)


def check_model(model: torch.nn.Module) -> None:
    """Refuse models Opacus cannot make private (BatchNorm and friends)."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        names = sorted({type(e).__name__ for e in errors})
        raise PolicyViolation(
            f"model is not compatible with DP-SGD ({', '.join(names)}: e.g. BatchNorm mixes rows in a batch); "
            "use a vetted model without BatchNorm"
        )


def poisson_batches(n_rows: int, plan: DpSgdPlan | DpSgdRun, rng: Csprng) -> Iterator[np.ndarray]:
    """`steps_per_round` Poisson samples (each row in with probability q), as row indices."""
    for _ in range(plan.steps_per_round):
        yield np.flatnonzero(rng.uniform(n_rows) <= plan.sample_rate)


def wrap(model: torch.nn.Module):
    from opacus import GradSampleModule

    check_model(model)
    return GradSampleModule(model)


def unwrap(module) -> torch.nn.Module:
    """The plain model inside Opacus's wrapper (parameter names without `_module.`)."""
    return getattr(module, "_module", module)


def dp_train_round(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, plan: DpSgdPlan | DpSgdRun, *,
                   learning_rate: float, loss_fn, make_optimizer=None) -> float:
    """One round of DP-SGD on the node's rows; returns the mean training loss of the sampled batches."""
    gsm = wrap(model)
    base = (make_optimizer or (lambda params: torch.optim.SGD(params, lr=learning_rate)))(gsm.parameters())
    rng = Csprng()
    opt = make_dp_optimizer(base, plan, rng)
    losses = []
    gsm.train()
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # inputs need no grad: expected
    for idx in poisson_batches(len(x), plan, rng):
        opt.zero_grad()
        t = torch.from_numpy(idx).long()
        out = gsm(x[t])
        loss = loss_fn(out, y[t])
        loss.backward()
        opt.step()
        if len(idx):
            losses.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)
    gsm.remove_hooks()  # the caller's `model` was trained in place; leave it as a plain module
    gsm.cleanup()
    for p in model.parameters():
        if hasattr(p, "summed_grad"):
            del p.summed_grad
    return float(np.mean(losses)) if losses else float("nan")
