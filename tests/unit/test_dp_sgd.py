"""DP-SGD at the node: planned from public numbers, noise from a CSPRNG, BatchNorm refused."""
from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
import torch

from fedtrust.errors import PolicyViolation
from fedtrust.training.dp_sgd import Csprng, check_model, dp_train_round, plan_dp_sgd


def test_plan_uses_the_declared_minimum_and_stays_within_the_target():
    plan = plan_dp_sgd(Decimal("1"), Decimal("1e-6"), min_rows=1000, batch_size=50, local_epochs=2, rounds=5)
    assert plan.sample_rate == 50 / 1000 and plan.steps_per_round == 2 * 20
    assert Decimal(0) < plan.epsilon <= Decimal("1")
    assert plan.noise_multiplier > 0.5
    # more rounds at the same target need more noise
    more = plan_dp_sgd(Decimal("1"), Decimal("1e-6"), min_rows=1000, batch_size=50, local_epochs=2, rounds=20)
    assert more.noise_multiplier > plan.noise_multiplier
    with pytest.raises(PolicyViolation, match="declared minimum row count"):
        plan_dp_sgd(Decimal("1"), Decimal("1e-6"), min_rows=None, batch_size=50, local_epochs=1, rounds=1)


def test_csprng_noise_has_the_stated_scale():
    g = Csprng()
    like = torch.zeros(1)
    z = g.secure_normal(torch.Size([200_000]), 3.0, like).numpy()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 3.0) < 0.05
    u = g.uniform(100_000)
    assert u.min() > 0 and u.max() <= 1 and abs(u.mean() - 0.5) < 0.01
    assert not np.array_equal(Csprng().uniform(8), Csprng().uniform(8))  # fresh key each time


def test_batchnorm_is_refused():
    with pytest.raises(PolicyViolation, match="BatchNorm"):
        check_model(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1)))


def test_dp_training_learns_and_keeps_plain_parameter_names():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(2000, 3)), dtype=torch.float32)
    y = (x[:, 0] - x[:, 1] > 0).float().unsqueeze(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 1))
    names = [n for n, _ in model.named_parameters()]
    plan = plan_dp_sgd(Decimal("4"), Decimal("1e-5"), min_rows=1500, batch_size=100, local_epochs=3, rounds=1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    with torch.no_grad():
        before = float(loss_fn(model(x), y))
    dp_train_round(model, x, y, plan, learning_rate=0.5, loss_fn=loss_fn)
    with torch.no_grad():
        after = float(loss_fn(model(x), y))
    assert after < before
    assert [n for n, _ in model.named_parameters()] == names
    assert list(model.state_dict()) == ["0.weight", "0.bias"]
