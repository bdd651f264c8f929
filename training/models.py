"""The vetted model registry: the only architectures whose arrays travel in a fedtrust training job.

* ``logreg`` — one linear layer (logistic / softmax regression);
* ``mlp`` — linear layers with ReLU; `hidden` widths (default 32, 16);
* ``cnn`` — a small CNN for image-shaped features (`image` = C, H, W, read
  row-major from the preprocessed feature vector): conv 3×3 (8) → ReLU →
  max-pool 2 → conv 3×3 (16) → ReLU → max-pool 2 → linear.

No normalisation layers with running statistics (BatchNorm): they carry
per-node statistics outside the weights, and Opacus (DP-SGD, a later issue)
refuses them. Every model is checked for that and for its size
(`MAX_PARAMETERS`). Parameters are float32 and named as in the module's
`state_dict`, which is also how they are named in the safetensors file.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedtrust.errors import InvalidInput, PolicyViolation
from fedtrust.training.spec import TrainingSpec

if TYPE_CHECKING:  # torch is imported lazily: parsing specs must stay cheap
    import torch

__all__ = ["MAX_PARAMETERS", "build_model", "initial_arrays", "model_arrays", "expected_shapes", "parameter_count",
           "check_parameter_count"]

#: the largest model a job may train (float32 parameters); a masked update is 8 bytes per parameter
MAX_PARAMETERS = 10_000_000
DEFAULT_HIDDEN = (32, 16)


def parameter_count(spec: TrainingSpec, inputs: int, outputs: int) -> int:
    """The registry model's parameter count, by arithmetic: nothing is built or allocated."""
    arch = spec.architecture
    if arch == "logreg":
        widths = [inputs, outputs]
    elif arch == "mlp":
        widths = [inputs, *(spec.model_options.hidden or DEFAULT_HIDDEN), outputs]
    elif arch == "cnn":
        assert spec.model_options.image is not None
        c, h, w = spec.model_options.image
        return (c * 8 * 9 + 8) + (8 * 16 * 9 + 16) + (16 * (h // 4) * (w // 4) * outputs + outputs)
    else:
        raise InvalidInput(f"model {arch!r} is not in the vetted registry (logreg, mlp, cnn)")
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


def check_parameter_count(spec: TrainingSpec, inputs: int, outputs: int) -> None:
    """Refuse, before any model is built, a spec whose model exceeds MAX_PARAMETERS."""
    count = parameter_count(spec, inputs, outputs)
    if count > MAX_PARAMETERS:
        raise PolicyViolation(f"the model has {count:,} parameters, over the limit of {MAX_PARAMETERS:,}; choose "
                              "smaller hidden layers or fewer features")


def build_model(spec: TrainingSpec, inputs: int, outputs: int) -> "torch.nn.Module":
    """The spec's registry model for `inputs` features and `outputs` logits (seed torch first for a fixed init)."""
    import torch
    from torch import nn

    check_parameter_count(spec, inputs, outputs)  # arithmetic first: an oversized spec allocates nothing
    arch = spec.architecture
    if arch == "logreg":
        model: nn.Module = nn.Sequential(nn.Linear(inputs, outputs))
    elif arch == "mlp":
        layers: list[nn.Module] = []
        width = inputs
        for h in spec.model_options.hidden or DEFAULT_HIDDEN:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, outputs))
        model = nn.Sequential(*layers)
    elif arch == "cnn":
        assert spec.model_options.image is not None
        c, h, w = spec.model_options.image
        if c * h * w != inputs:
            raise InvalidInput(f"the cnn's image {c}x{h}x{w} needs {c * h * w} inputs but the features give {inputs}")
        model = nn.Sequential(
            nn.Unflatten(1, (c, h, w)),
            nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * (h // 4) * (w // 4), outputs),
        )
    else:
        raise InvalidInput(f"model {arch!r} is not in the vetted registry (logreg, mlp, cnn)")
    check_model(model)
    return model.to(torch.float32)


def check_model(model: "torch.nn.Module") -> None:
    """No BatchNorm-style layers; at most MAX_PARAMETERS float parameters; no buffers."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            raise PolicyViolation("models with BatchNorm/InstanceNorm layers are refused (per-node running "
                                  "statistics; DP-SGD cannot train them)")
    if any(True for _ in model.buffers()):
        raise PolicyViolation("models with buffers (state outside the trained weights) are refused")
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise PolicyViolation(f"the model has {count:,} parameters, over the limit of {MAX_PARAMETERS:,}")


def model_arrays(model: "torch.nn.Module") -> dict[str, np.ndarray]:
    """The model's parameters as float32 NumPy arrays, by state_dict name (copies)."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


def initial_arrays(spec: TrainingSpec, inputs: int, outputs: int, seed: int) -> dict[str, np.ndarray]:
    """The global model of round 1: the registry model initialised from `seed` (derived from the job digest).

    Every node and the coordinator compute it and must get the same bits, so
    it draws from a generator of its own (PyTorch's default initialisation:
    Kaiming-uniform weights, uniform biases within ±1/√fan_in), never from
    torch's process-global one, which other threads (ClientApps, other
    in-process nodes) may be using at the same time.
    """
    import math

    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    model = build_model(spec, inputs, outputs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
            elif any(True for _ in m.parameters(recurse=False)):
                raise InvalidInput(f"model layer {type(m).__name__} has no seeded initialisation")
    return model_arrays(model)


def expected_shapes(spec: TrainingSpec, inputs: int, outputs: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array of the spec's model (what nodes accept as a global model)."""
    model = build_model(spec, inputs, outputs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
