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


# ---- B = 0 (item 13)


def test_empty_batch_is_named_by_every_entry_point():
    from jiio_ext import solve_nested

    x0, z0 = torch.zeros(0, 2), torch.zeros(0, 2)
    for entry in (solve_joint, solve_nested):
        with pytest.raises(ValueError, match=r"x0: empty batch \(B = 0\)"):
            entry(_f, _objective, x0, z0)


def test_empty_batch_in_the_torchdeq_adapter():
    pytest.importorskip("torchdeq")
    from jiio_ext.adapters.torchdeq import jiio_solver

    from jiio_ext.bench.adversarial import DEQClassifier

    with pytest.raises(ValueError, match="x0: expected a non-empty batch"):
        jiio_solver(lambda z: 0.5 * z, torch.zeros(0, 3))
    model = DEQClassifier()
    from jiio_ext.adapters.torchdeq import input_optimizable

    view = input_optimizable(model)
    with pytest.raises(ValueError, match=r"x0: empty batch"):
        view.optimize_input(torch.zeros(0, 1, 8, 8), lambda out, x: out.sum(1))


def test_empty_batch_irregular_inpainting_measures():
    pytest.importorskip("kornia")
    from jiio_ext.adapters.kornia import make_degradation

    op = make_degradation("inpaint-irregular", 16)
    measurement = op.measure(torch.zeros(0, 1, 16, 16), seed=0)
    assert measurement.observed.shape == (0, 1, 16, 16)


# ---- dtypes and devices (item 14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_states_with_anderson(dtype):
    from jiio_ext.solvers import Anderson, fixed_point

    result = fixed_point(
        lambda s, i, k: (0.5 * torch.tanh(s) + 1, {}),
        torch.zeros(3, 4, dtype=dtype),
        solver=Anderson(),
        max_iter=30,
        rtol=1e-2,
        atol=0.0,
    )
    assert result.state.dtype == dtype and bool((result.status == 0).all())


def test_f_of_another_dtype_or_device_is_named():
    x0, z0 = torch.zeros(3, 2), torch.zeros(3, 2)
    for bad, error in (
        (lambda z, x: _f(z, x).double(), TypeError),
        (lambda z, x: _f(z, x).round().long(), TypeError),
        (lambda z, x: torch.empty(3, 2, device="meta"), ValueError),
    ):
        with pytest.raises(error, match="f: returned"):
            solve_joint(bad, _objective, x0, z0, max_iter=3)


def test_integer_objective_is_named():
    with pytest.raises(TypeError, match="objective: expected floating-point losses"):
        solve_joint(_f, lambda z, x: z.sum(1).long(), torch.zeros(3, 2), torch.zeros(3, 2))


# ---- settings (item 16)


def test_jiio_solver_names_its_own_arguments():
    pytest.importorskip("torchdeq")
    from jiio_ext.adapters.torchdeq import jiio_solver

    with pytest.raises(ValueError, match="^tol: "):
        jiio_solver(lambda z: 0.5 * z, torch.zeros(2, 3), tol=-1)
    with pytest.raises(ValueError, match="^max_iter: "):
        jiio_solver(lambda z: 0.5 * z, torch.zeros(2, 3), max_iter=0)


# ---- Anderson type I (item 8)


def test_torchdeq_solver_and_latent_inference_default_to_type_ii():
    import inspect

    pytest.importorskip("torchdeq")
    from jiio_ext.adapters.torchdeq import jiio_solver

    from jiio_ext.tasks import latent

    assert inspect.signature(jiio_solver).parameters["kind"].default == "II"
    captured: dict = {}

    class Decoder:
        def optimize_input(self, x0, objective, **options):
            captured.update(options)

    latent.infer_jiio(Decoder(), _objective, torch.zeros(1, 2))
    assert captured["solver"].kind == "II"
