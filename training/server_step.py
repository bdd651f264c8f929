"""The strategy's server step, computed bit for bit the same by the coordinator and by every node.

Why this is safe: nodes never take the coordinator's word for a global model.
Round 1's global is the registry model seeded from the job digest
(`initial_seed`); every later one is what `Derivation.fold` computes from
the exact integer sum of *all* participants' signed masked vectors (masks
cancel only in the full sum, so nothing but the sum is ever read). A
coordinator that plants weights (hidden units that fire on one slab of one
feature) would need nodes to train from a global they did not compute, and
they refuse.

Why every machine gets the same bits: the sum of vectors mod 2^63 is exact
integer arithmetic, whatever the order. From it, everything is elementwise
IEEE-754 arithmetic on float64 arrays — conversion from int64, +, −, ×, ÷ and
sqrt, each correctly rounded by the standard on every CPU, SIMD or not — and a
final rounding to float32. There is no reduction whose order could vary (no
BLAS, no `sum` over an axis, no torch kernel), and no libm call whose last bit
differs between libraries (β^t is a product of t factors, not `pow`).
`tests/test_server_step.py` checks the bits against an independent scalar
reference.

The strategies (Flower's FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, with
their server optimiser state) follow Flower's formulas, with the mean update
Δ = Σ n·δ / Σ n taken from the exact sum:

* FedAvg, FedProx: g' = g + Δ;
* FedAvgM: m = μ·m + (−Δ) (m starts at −Δ), g' = g − η·m;
* FedAdam: m = β1·m + (1−β1)·Δ, v = β2·v + (1−β2)·Δ², g' = g + η·√(1−β2^(t+1))/(1−β1^(t+1))·m/(√v+τ);
* FedYogi: m as FedAdam, v = v − (1−β2)·Δ²·sign(v − Δ²), g' = g + η·m/(√v+τ).

The global model travels as float32; the optimiser state stays float64.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from fedtrust.errors import InvalidInput
from fedtrust.training import quantize
from fedtrust.training.arrays import arrays_digest

__all__ = ["DEFAULTS", "ServerState", "server_step", "initial_seed", "Derivation", "phase_sequence"]

#: Flower's defaults for the options a spec may leave out
DEFAULTS: dict[str, dict[str, float]] = {
    "fedavg": {},
    "fedprox": {"proximal_mu": 0.0},
    "fedavgm": {"server_learning_rate": 1.0, "server_momentum": 0.0},
    "fedadam": {"eta": 0.1, "eta_l": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedyogi": {"eta": 0.01, "eta_l": 0.0316, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
}


def initial_seed(job_digest: str) -> int:
    """The seed of round 1's global model (and the Flower run id): fixed by the signed job's digest."""
    return int(job_digest[:15], 16)


@dataclass(frozen=True)
class ServerState:
    arrays: dict[str, np.ndarray]  # the global model, float32, by name (sorted)
    steps: int = 0  # server steps taken (train rounds aggregated)
    first: dict[str, np.ndarray] | None = None  # FedAdam/FedYogi m, FedAvgM momentum (float64)
    second: dict[str, np.ndarray] | None = None  # FedAdam/FedYogi v (float64)


def _power(base: float, exp: int) -> float:
    """base**exp as exp correctly rounded multiplications (libm's pow may differ in the last bit)."""
    out = 1.0
    for _ in range(exp):
        out *= base
    return out


def server_step(strategy: str, options: Mapping[str, float], state: ServerState, delta: np.ndarray) -> ServerState:
    """The next global model from the mean update `delta` (float64, in sorted-name order of the arrays)."""
    if strategy not in DEFAULTS:
        raise InvalidInput(f"strategy {strategy} has no deterministic server step; use one of {', '.join(DEFAULTS)}")
    opt = {**DEFAULTS[strategy], **options}
    d = np.asarray(delta, dtype=np.float64)
    sizes = [a.size for a in state.arrays.values()]
    if d.shape != (sum(sizes),):
        raise InvalidInput("the summed update does not match the model's size")
    parts, pos = {}, 0
    for name, a in state.arrays.items():
        parts[name] = d[pos:pos + a.size].reshape(a.shape)
        pos += a.size
    t = state.steps + 1
    first, second = state.first, state.second
    new: dict[str, np.ndarray] = {}
    if strategy in ("fedavg", "fedprox"):
        # float64(g) + Δ, rounded to float32 as it is written: the same bits as the float64 sum's astype
        plain = {k: np.add(g, parts[k], dtype=np.float64, out=np.empty(g.shape, np.float32), casting="same_kind")
                 for k, g in state.arrays.items()}
        return _checked(ServerState(plain, t, first, second))
    elif strategy == "fedavgm":
        lr, mu = opt["server_learning_rate"], opt["server_momentum"]
        pseudo = {k: -p for k, p in parts.items()}  # old − new = −Δ
        if mu > 0.0:
            first = pseudo if first is None else {k: mu * first[k] + pseudo[k] for k in pseudo}
            pseudo = first
        for k, g in state.arrays.items():
            new[k] = g.astype(np.float64) - lr * pseudo[k]
    else:
        b1, b2, eta, tau = opt["beta_1"], opt["beta_2"], opt["eta"], opt["tau"]
        if first is None:
            first = {k: np.zeros_like(p) for k, p in parts.items()}
        if second is None:
            second = {k: np.zeros_like(p) for k, p in parts.items()}
        first = {k: b1 * first[k] + (1.0 - b1) * parts[k] for k in parts}
        squared = {k: parts[k] * parts[k] for k in parts}
        if strategy == "fedadam":
            second = {k: b2 * second[k] + (1.0 - b2) * squared[k] for k in parts}
            scale = eta * math.sqrt(1.0 - _power(b2, t + 1)) / (1.0 - _power(b1, t + 1))
        else:  # fedyogi
            second = {k: second[k] - (1.0 - b2) * squared[k] * np.sign(second[k] - squared[k]) for k in parts}
            scale = eta
        for k, g in state.arrays.items():
            new[k] = g.astype(np.float64) + scale * first[k] / (np.sqrt(second[k]) + tau)
    return _checked(ServerState({k: v.astype(np.float32) for k, v in new.items()}, t, first, second))


def _checked(state: ServerState) -> ServerState:
    if not all(np.isfinite(a).all() for a in state.arrays.values()):
        raise InvalidInput("the server step produced NaN or infinite weights; the job cannot continue")
    return state


def phase_sequence(rounds: int, evaluate: bool) -> tuple[tuple[str, int], ...]:
    """Every (phase, round) of a job, in the order the strategy runs them."""
    return tuple((p, r) for r in range(1, rounds + 1) for p in (("train", "evaluate") if evaluate else ("train",)))


@dataclass
class Derivation:
    """One job's chain of global models and aggregate metrics, folded from each phase's summed vectors.

    `position` counts the phases folded so far; the global model a phase must
    start from is `digests[i]` for the phase at index i of `sequence`.
    """

    strategy: str
    options: dict[str, float]
    sequence: tuple[tuple[str, int], ...]
    state: ServerState
    digests: list[str] = field(default_factory=list)  # global digest at each position (0 = round 1's)
    folded: list[str] = field(default_factory=list)  # sha256 over each folded phase's vector digests
    train: dict[int, tuple[float, float]] = field(default_factory=dict)  # round -> (loss, accuracy)
    evaluate: dict[int, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def start(cls, spec, initial: Mapping[str, np.ndarray]) -> "Derivation":
        arrays = {k: np.ascontiguousarray(initial[k], dtype=np.float32) for k in sorted(initial)}
        d = cls(spec.strategy, dict(spec.options), phase_sequence(spec.rounds, spec.evaluate), ServerState(arrays))
        d.digests.append(arrays_digest(arrays))
        return d

    @property
    def position(self) -> int:
        return len(self.folded)

    @property
    def complete(self) -> bool:
        return self.position == len(self.sequence)

    @property
    def params(self) -> int:
        return sum(int(a.size) for a in self.state.arrays.values())

    def index(self, phase: str, rnd: int) -> int:
        try:
            return self.sequence.index((phase, rnd))
        except ValueError:
            raise InvalidInput(f"{phase} round {rnd} is not a phase of this job") from None

    def vector_length(self, phase: str) -> int:
        return (self.params if phase == "train" else 0) + quantize.TAIL

    def fold(self, phase: str, rnd: int, total: np.ndarray, vector_digests: tuple[str, ...]) -> quantize.Decoded:
        """Fold the next phase's sum (mod 2^63, masks cancelled) into the chain."""
        if self.complete or self.sequence[self.position] != (phase, rnd):
            raise InvalidInput(f"{phase} round {rnd} is not the next phase of this job")
        decoded = quantize.decode(total, self.params if phase == "train" else None)
        if phase == "train":
            assert decoded.delta is not None
            self.state = server_step(self.strategy, self.options, self.state, decoded.delta)
            self.train[rnd] = (decoded.loss, decoded.accuracy)
        else:
            self.evaluate[rnd] = (decoded.loss, decoded.accuracy)
        self.digests.append(arrays_digest(self.state.arrays) if phase == "train" else self.digests[-1])
        self.folded.append(hashlib.sha256("".join(vector_digests).encode()).hexdigest())
        return decoded

    @property
    def model_digest(self) -> str:
        """The digest of the current global model (`arrays_digest`): the final model once complete."""
        return self.digests[-1]

    def metrics(self) -> tuple:
        """Per-round aggregate metrics as the receipt states them (six-place decimal strings)."""
        from fedtrust.trust.receipts import RoundMetric, fmt_metric

        out = []
        for r in sorted(self.train):
            ev = self.evaluate.get(r)
            out.append(RoundMetric(r, fmt_metric(self.train[r][0]), fmt_metric(self.train[r][1]),
                                   fmt_metric(ev[0]) if ev else None, fmt_metric(ev[1]) if ev else None))
        return tuple(out)
