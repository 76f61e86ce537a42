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
        solve_joint(_f, _objective, x0, z0=z0, step_rule=lambda g: g[:, :1], step_size=0.1)
    with pytest.raises(ValueError, match="step_rule"):
        solve_joint(_f, _objective, x0, z0=z0, step_rule=lambda g: g.sum(), step_size=0.1)
    fine = solve_joint(_f, _objective, x0, z0=z0, step_rule=lambda g: 0.5 * g, step_size=0.2)
    assert bool((fine.status == 0).all())


# ---- B = 0 (item 13)


def test_empty_batch_is_named_by_every_entry_point():
    from jiio_ext import solve_nested

    x0, z0 = torch.zeros(0, 2), torch.zeros(0, 2)
    for entry in (solve_joint, solve_nested):
        with pytest.raises(ValueError, match=r"x0: empty batch \(B = 0\)"):
            entry(_f, _objective, x0, z0=z0)


def test_empty_batch_in_the_torchdeq_adapter():
    pytest.importorskip("torchdeq")
    from jiio_ext.adapters.torchdeq import jiio_solver

    from jiio_ext.apps.models import DEQClassifier

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
            solve_joint(bad, _objective, x0, z0=z0, max_iter=3)


def test_integer_objective_is_named():
    with pytest.raises(TypeError, match="objective: expected floating-point losses"):
        solve_joint(_f, lambda z, x: z.sum(1).long(), torch.zeros(3, 2), z0=torch.zeros(3, 2))


# ---- settings (item 16)


def test_jiio_solver_names_its_own_arguments():
    pytest.importorskip("torchdeq")
    from jiio_ext.adapters.torchdeq import jiio_solver

    with pytest.raises(ValueError, match="^tol: "):
        jiio_solver(lambda z: 0.5 * z, torch.zeros(2, 3), tol=-1)
    with pytest.raises(ValueError, match="^max_iter: "):
        jiio_solver(lambda z: 0.5 * z, torch.zeros(2, 3), max_iter=0)


# ---- Anderson type I (item 8)


def test_torchdeq_solver_defaults_to_type_ii_and_latent_inference_to_the_library_defaults():
    import inspect

    pytest.importorskip("torchdeq")
    from jiio_ext.adapters.torchdeq import jiio_solver

    from jiio_ext.apps.tasks import latent

    assert inspect.signature(jiio_solver).parameters["kind"].default == "II"
    captured: dict = {}

    class Decoder:
        def optimize_input(self, x0, objective, **options):
            captured.update(options)

    latent.infer_jiio(Decoder(), _objective, torch.zeros(1, 2))
    # no step and no solver: the library's adaptive update; a fixed budget of 40
    assert captured == {"max_iter": 40, "rtol": 0.0, "atol": 0.0}


def test_solve_joint_settings_are_named():
    x0, z0 = torch.zeros(3, 2), torch.zeros(3, 2)
    for points in ([100000], [-1]):
        with pytest.raises(ValueError, match=r"trajectory: iterations \[-?\d+\] lie outside"):
            solve_joint(_f, _objective, x0, z0=z0, max_iter=10, trajectory=points)
    with pytest.raises(TypeError, match="trajectory"):
        solve_joint(_f, _objective, x0, z0=z0, max_iter=10, trajectory=[1.5])
    with pytest.raises(TypeError, match="progress: expected True, False, None or a tqdm bar"):
        solve_joint(_f, _objective, x0, z0=z0, max_iter=10, progress="yes")


def test_innerloop_ctx_settings_are_named():
    pytest.importorskip("higher")
    pytest.importorskip("torchdeq")
    from jiio_ext.adapters.higher import innerloop_ctx

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for kwargs, name in (({"rtol": -1}, "rtol"), ({"backward_max_iter": 0}, "backward_max_iter")):
        with pytest.raises(ValueError, match=f"^{name}: "):
            with innerloop_ctx(net, opt, **kwargs):
                pass


# ---- constraints (item 15)


def test_constraint_shapes_and_types_are_named():
    from jiio_ext import Box, L2Ball

    with pytest.raises(ValueError, match=r"constraint: tensors of shapes \[\(4, 7\)\] do not fit"):
        solve_joint(
            _f,
            _objective,
            torch.zeros(4, 5),
            z0=torch.zeros(4, 5),
            constraint=L2Ball(1.0, center=torch.zeros(4, 7)),
        )
    with pytest.raises(TypeError, match="Box: lower: expected a number or a tensor, got str"):
        Box("a", "b")
    with pytest.raises(TypeError, match="x: L2Ball.project needs a floating-point tensor"):
        L2Ball(1.0).project(torch.zeros(2, 3, dtype=torch.long))


# ---- CLI and training settings (item 17)


@pytest.mark.parametrize(
    "flag,name",
    [
        ("--k-shot", "k_shot"),
        ("--n-way", "n_way"),
        ("--eval-tasks", "eval_tasks"),
        ("--tasks-per-batch", "tasks_per_batch"),
    ],
)
def test_meta_cli_zero_settings_are_named(tmp_path, flag, name):
    pytest.importorskip("higher")
    pytest.importorskip("torchdeq")
    from jiio_ext.apps.cli import main

    argv = ["train", "meta", "--task", "digits", flag, "0", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=f"{name}: expected an integer >= 1"):
        main(argv)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "argv",
    [["bench", "latent", "--quick"], ["train", "adversarial"], ["train", "generative"]],
    ids=["bench", "adversarial", "generative"],
)
def test_meta_device_is_refused_without_a_traceback(tmp_path, argv):
    from jiio_ext.apps.cli import main

    with pytest.raises(SystemExit, match="meta"):
        main([*argv, "--device", "meta"])


def test_meta_device_is_refused_by_the_trainers():
    from jiio_ext.apps.distributed import init_from_env

    with pytest.raises(ValueError, match="device: 'meta'"):
        init_from_env("meta")


# ---- solve_nested statuses (item 5)


def _runaway(kind: str):
    """f on a state whose last column flags the sample that has no fixed point."""

    def f(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        flag = z[:, 2:3]
        good = 0.5 * z[:, :2] + x
        bad = z[:, :2] + 1 if kind == "shift" else torch.exp(3 * z[:, :2]) + 1
        return torch.cat([torch.where(flag > 0, bad, good), flag], 1)

    return f


@pytest.mark.parametrize("kind", ["shift", "exp"])
def test_solve_nested_reports_a_sample_without_fixed_point_as_solve_joint_does(kind):
    from jiio_ext import solve_nested
    from jiio_ext.solution import Status

    z0 = torch.cat([torch.full((3, 2), 0.1), torch.tensor([[0.0], [1.0], [0.0]])], 1)
    objective = lambda z, x: (z[:, :2] - 1.0).pow(2).sum(1)  # noqa: E731
    joint = solve_joint(_runaway(kind), objective, torch.zeros(3, 2), z0=z0, step_size=0.1)
    nested = solve_nested(_runaway(kind), objective, torch.zeros(3, 2), z0=z0, max_iter=5)
    failed = (int(Status.DIVERGED), int(Status.NONFINITE))
    assert int(joint.status[1]) in failed and int(nested.status[1]) in failed
    if kind == "shift":
        assert int(nested.status[1]) == int(joint.status[1]) == int(Status.DIVERGED)
    assert int(nested.status[0]) not in failed and int(nested.status[2]) not in failed
