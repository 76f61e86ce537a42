"""Bad input to the public entry points: each case names the argument, each status is honest."""

from __future__ import annotations

import pytest
import torch

from jiio_ext import solve_joint


def _f(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.tanh(z) + x


def _objective(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (z - 1.0).pow(2).sum(1)


def test_custom_step_rule_of_the_wrong_shape_raises():
    x0, z0 = torch.zeros(3, 2), torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"step_rule: .* returned \(3, 1\)"):
        solve_joint(_f, _objective, x0, z0, step_rule=lambda g: g[:, :1], step_size=0.1)
    with pytest.raises(ValueError, match="step_rule"):
        solve_joint(_f, _objective, x0, z0, step_rule=lambda g: g.sum(), step_size=0.1)
    fine = solve_joint(_f, _objective, x0, z0, step_rule=lambda g: 0.5 * g, step_size=0.2)
    assert bool((fine.status == 0).all())
