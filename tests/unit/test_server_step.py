"""The server step that the coordinator and every node compute must give the same bits everywhere.

The vectorised step (`fedtrust.training.server_step`) is checked against an
independent scalar reference written from the formulas in its docstring with
Python floats (IEEE doubles) and `struct`'s float32 rounding, element by
element; and against itself across array layouts (contiguous, one element at
a time, strided views) and threads. The reference's sha256 is pinned, so a
platform whose arithmetic differs fails here rather than in a job where
nodes would disagree.
"""
from __future__ import annotations

import hashlib
import math
import struct
import threading

import numpy as np
import pytest

from fedtrust.training import quantize
from fedtrust.training.server_step import DEFAULTS, Derivation, ServerState, server_step
from fedtrust.training.spec import TrainingSpec

SHAPES = {"a.weight": (5, 7), "a.bias": (5,), "b.weight": (1, 5), "b.bias": (1,)}  # 46 parameters: odd SIMD tails
OPTIONS = {"fedavg": {}, "fedprox": {"proximal_mu": 0.1}, "fedavgm": {"server_learning_rate": 0.7,
                                                                     "server_momentum": 0.9},
           "fedadam": {"eta": 0.05, "beta_1": 0.85, "beta_2": 0.97, "tau": 0.001},
           "fedyogi": {"eta": 0.02, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.01}}
#: sha256 of the final float32 weights after three rounds, from the scalar reference on the inputs below
GOLDEN = {
    "fedadam": "5e37da7a534fd5ca69462ee756e6e0de23a32d2a57632a85c553c0d2e1af0964",
    "fedavg": "785004383a27f4e21615485f91ada2520bd72ffb35fb5964dcf1a3160647b47b",
    "fedavgm": "f338ee39aa3398bbf254388a202040c491cd7a4adc96cb026237cb8857caaf58",
    "fedprox": "785004383a27f4e21615485f91ada2520bd72ffb35fb5964dcf1a3160647b47b",
    "fedyogi": "7182adae9332871f7a7d1142f1b8d551f0b14ac8969c030bccad641525211267",
}


def _inputs():
    rng = np.random.default_rng(20261202)
    init = {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in sorted(SHAPES.items())}
    params = sum(int(np.prod(s)) for s in SHAPES.values())
    n = 1237
    # three rounds of exact summed vectors (signed, as decode reads them), then written mod 2^63
    sums = []
    for _ in range(3):
        q = rng.integers(-(1 << 40), 1 << 40, params, dtype=np.int64)
        q[::7] = 0  # zero updates exercise sign(0) and sqrt(0)
        tail = np.array([n, n * 700, n * 9_000_000], dtype=np.int64)
        sums.append(np.concatenate([q, tail]).view(np.uint64) & np.uint64((1 << 63) - 1))
    return init, sums, params, n


def _spec(strategy: str) -> TrainingSpec:
    return TrainingSpec.from_dict({"dataset": "loans", "model": "logreg", "features": ["age"], "label": "y",
                                   "strategy": strategy, "strategy_options": OPTIONS[strategy], "rounds": 3,
                                   "learning_rate": 0.1, "evaluate": False}, defaults=True)


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _reference(strategy: str, init: dict, sums: list, n: int) -> bytes:
    """The step, element by element, in Python floats: an independent reading of the documented formulas."""
    opt = {**DEFAULTS[strategy], **OPTIONS[strategy]}
    names = sorted(init)
    g = [float(x) for k in names for x in init[k].ravel().tolist()]
    m: list[float] | None = None
    v: list[float] | None = None
    for t, total in enumerate(sums, start=1):
        raw = [int(x) for x in total[:len(g)].tolist()]
        d = [(float(x - (1 << 63)) if x >= 1 << 62 else float(x)) / 65536.0 / n for x in raw]
        new = []
        if strategy in ("fedavg", "fedprox"):
            new = [gi + di for gi, di in zip(g, d)]
        elif strategy == "fedavgm":
            lr, mu = opt["server_learning_rate"], opt["server_momentum"]
            p = [-di for di in d]
            m = p if m is None else [mu * mi + pi for mi, pi in zip(m, p)]
            new = [gi - lr * mi for gi, mi in zip(g, m)]
        else:
            b1, b2, eta, tau = opt["beta_1"], opt["beta_2"], opt["eta"], opt["tau"]
            m = [0.0] * len(g) if m is None else m
            v = [0.0] * len(g) if v is None else v
            m = [b1 * mi + (1.0 - b1) * di for mi, di in zip(m, d)]
            sq = [di * di for di in d]
            if strategy == "fedadam":
                v = [b2 * vi + (1.0 - b2) * si for vi, si in zip(v, sq)]
                p1 = p2 = 1.0
                for _ in range(t + 1):
                    p1 *= b1
                    p2 *= b2
                scale = eta * math.sqrt(1.0 - p2) / (1.0 - p1)
            else:
                v = [vi - (1.0 - b2) * si * float(np.sign(vi - si)) for vi, si in zip(v, sq)]
                scale = eta
            new = [gi + scale * mi / (math.sqrt(vi) + tau) for gi, mi, vi in zip(g, m, v)]
        g = [_f32(x) for x in new]
    return struct.pack(f"<{len(g)}f", *g)


def _derive(strategy: str, init: dict, sums: list) -> bytes:
    d = Derivation.start(_spec(strategy), init)
    for r, total in enumerate(sums, start=1):
        d.fold("train", r, total, (f"{r:064x}",))
    return b"".join(np.ascontiguousarray(d.state.arrays[k], dtype="<f4").tobytes() for k in sorted(init))


@pytest.mark.parametrize("strategy", sorted(OPTIONS))
def test_the_step_equals_an_independent_scalar_reference_bit_for_bit(strategy):
    init, sums, _, n = _inputs()
    want = _reference(strategy, init, sums, n)
    got = _derive(strategy, init, sums)
    assert got == want, f"{strategy}: the vectorised step differs from the scalar reference"


def test_the_reference_bits_are_pinned():
    init, sums, _, n = _inputs()
    got = {s: hashlib.sha256(_reference(s, init, sums, n)).hexdigest() for s in sorted(OPTIONS)}
    assert got == GOLDEN


@pytest.mark.parametrize("strategy", sorted(OPTIONS))
def test_the_step_is_the_same_for_every_layout_and_thread(strategy):
    init, sums, params, n = _inputs()
    want = _derive(strategy, init, sums)
    # one element at a time: numpy's scalar loops instead of its SIMD ones
    opts = dict(_spec(strategy).options)
    states = [ServerState({"x": init[k].ravel()[i:i + 1].copy()}) for k in sorted(init)
              for i in range(init[k].size)]
    for total in sums:
        delta = quantize.decode(total, params).delta
        states = [server_step(strategy, opts, s, delta[i:i + 1]) for i, s in enumerate(states)]
    assert struct.pack(f"<{params}f", *[float(s.arrays["x"][0]) for s in states]) == want
    # strided (reversed) views of the same numbers
    state = ServerState({k: init[k][::-1].copy()[::-1] for k in sorted(init)})
    for total in sums:
        delta = quantize.decode(total, params).delta
        state = server_step(strategy, opts, state, np.ascontiguousarray(delta[::-1])[::-1])
    assert b"".join(np.ascontiguousarray(state.arrays[k]).tobytes() for k in sorted(init)) == want
    # many threads at once, as nodes and the coordinator run it next to other work
    out, threads = [], [threading.Thread(target=lambda: out.append(_derive(strategy, init, sums))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [want] * 4


def test_metrics_and_digests_follow_the_folded_phases():
    init, sums, params, n = _inputs()
    spec = TrainingSpec.from_dict({**_spec("fedavg").to_dict(), "evaluate": True, "rounds": 1})
    d = Derivation.start(spec, init)
    with pytest.raises(Exception, match="not the next phase"):
        d.fold("evaluate", 1, sums[0][params:], ("e",))
    d.fold("train", 1, sums[0], ("t",))
    assert d.digests[1] != d.digests[0] and not d.complete
    d.fold("evaluate", 1, sums[0][params:], ("e",))
    assert d.complete and d.digests[2] == d.digests[1]
    (m,) = d.metrics()
    assert (m.round, m.train_loss, m.train_accuracy) == (1, "0.683594", "0.536442")
    assert m.eval_loss == m.train_loss
