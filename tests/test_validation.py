"""Bad input to ``solve_joint`` / ``solve_nested``: clear errors naming the argument, and status
codes (not exceptions) for samples that fail numerically.
"""

from __future__ import annotations

import pytest
import torch

import jiio_ext
from jiio_ext import Box, Constant, JointSolveError, L2Ball, LinfBall, Status

D = torch.float64
B = 4


def f(z, x):
    return 0.5 * torch.tanh(z) + x


def objective(z, x, target):
    return (z - target).pow(2).sum(dim=1)


def tuple_f(z, x):
    a, b = z
    return 0.5 * torch.tanh(a) + x, 0.5 * torch.tanh(b) + a[:, :2]


def tuple_objective(z, x, target):
    return (z[1] - target[:, :2]).pow(2).sum(dim=1)


def make_x0() -> torch.Tensor:
    return torch.zeros(B, 3, dtype=D)


def make_z0() -> torch.Tensor:
    return torch.zeros(B, 3, dtype=D)


TARGET = torch.full((B, 3), 0.5, dtype=D)

# Settings that converge quickly on the problem above (all samples CONVERGED).
JOINT_OK = {"step_size": 0.3, "max_iter": 300}
NESTED_OK = {"optimizer": "sgd", "step_size": 0.3, "max_iter": 30}


def call(entry: str, *, f=f, objective=objective, x0=None, z0=None, **kwargs):
    """Call one entry point with small defaults (short runs: errors only need to surface)."""
    x0 = make_x0() if x0 is None else x0
    z0 = make_z0() if z0 is None else z0
    kwargs.setdefault("targets", TARGET)
    if entry == "joint":
        kwargs.setdefault("max_iter", 5)
        return jiio_ext.solve_joint(f, objective, x0, z0=z0, **kwargs)
    kwargs.setdefault("max_iter", 2)
    kwargs.setdefault("inner_max_iter", 5)
    return jiio_ext.solve_nested(f, objective, x0, z0=z0, **kwargs)


BOTH = pytest.mark.parametrize("entry", ["joint", "nested"])


# --------------------------------------------------------------------------- x0 and z0


@BOTH
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x0": torch.zeros(B, 3, dtype=torch.long)}, TypeError, "x0"),
        ({"x0": torch.zeros(B, 3, dtype=torch.bool)}, TypeError, "x0"),
        ({"x0": [[0.0] * 3] * B}, TypeError, "x0"),
        ({"x0": torch.tensor(0.0, dtype=D)}, ValueError, "x0"),
        ({"z0": torch.zeros(B, 3, dtype=torch.int32)}, TypeError, "z0"),
        ({"z0": torch.zeros(B + 1, 3, dtype=D)}, ValueError, "z0"),
        ({"z0": torch.zeros(B - 1, 3, dtype=D)}, ValueError, "z0"),
        ({"x0": torch.zeros(B + 2, 3, dtype=D)}, ValueError, "z0"),
        ({"z0": torch.zeros(B, 3, dtype=torch.float32)}, TypeError, "z0"),
        ({"x0": torch.zeros(B, 3, dtype=torch.float32)}, TypeError, "z0"),
        ({"z0": ()}, TypeError, "z0"),
        ({"z0": "zeros"}, TypeError, "z0"),
        ({"z0": torch.tensor(0.0, dtype=D)}, ValueError, "z0"),
    ],
    ids=[
        "x0-int",
        "x0-bool",
        "x0-list",
        "x0-scalar",
        "z0-int",
        "z0-batch-bigger",
        "z0-batch-smaller",
        "x0-batch-bigger",
        "z0-float32-x0-float64",
        "x0-float32-z0-float64",
        "z0-empty-tuple",
        "z0-str",
        "z0-scalar",
    ],
)
def test_bad_x0_or_z0(entry, kwargs, error, match):
    with pytest.raises(error, match=match):
        call(entry, **kwargs)


@BOTH
@pytest.mark.parametrize(
    ("z", "error", "match"),
    [
        ((torch.zeros(B, 3, dtype=D), torch.zeros(B + 1, 2, dtype=D)), ValueError, r"z0\[1\]"),
        ((torch.zeros(B - 1, 3, dtype=D), torch.zeros(B, 2, dtype=D)), ValueError, r"z0\[0\]"),
        (
            (torch.zeros(B, 3, dtype=D), torch.zeros(B, 2, dtype=torch.float32)),
            TypeError,
            r"z0\[1\]",
        ),
        ((torch.zeros(B, 3, dtype=D), torch.zeros(B, 2, dtype=torch.long)), TypeError, r"z0\[1\]"),
        ((torch.zeros(B, 3, dtype=D), "b"), TypeError, r"z0\[1\]"),
    ],
    ids=["part-batch-bigger", "part-batch-smaller", "part-float32", "part-int", "part-str"],
)
def test_bad_tuple_z0(entry, z, error, match):
    with pytest.raises(error, match=match):
        call(entry, f=tuple_f, objective=tuple_objective, z0=z)


@BOTH
def test_list_z0_is_accepted_as_a_tuple(entry):
    z = [torch.zeros(B, 3, dtype=D), torch.zeros(B, 2, dtype=D)]
    sol = call(entry, f=tuple_f, objective=tuple_objective, z0=z)
    assert isinstance(sol.z, tuple) and len(sol.z) == 2


@BOTH
def test_z0_on_another_device(entry):
    try:
        meta = torch.zeros(B, 3, dtype=D, device="meta")
    except (RuntimeError, NotImplementedError) as err:  # pragma: no cover
        pytest.skip(f"meta tensors unavailable: {err}")
    with pytest.raises(ValueError, match="z0: on device meta"):
        call(entry, z0=meta)
    with pytest.raises(ValueError, match=r"z0\[1\]: on device meta"):
        call(entry, f=tuple_f, objective=tuple_objective, z0=(make_z0(), meta[:, :2]))


# --------------------------------------------------------------------------- objective and f


@BOTH
@pytest.mark.parametrize(
    "bad_objective",
    [
        lambda z, x, t: (z - t).pow(2).sum(dim=1, keepdim=True),
        lambda z, x, t: (z - t).pow(2).sum(),
        lambda z, x, t: (z - t).pow(2),
        lambda z, x, t: float((z - t).detach().pow(2).sum()),
        lambda z, x, t: (z - t).pow(2).sum(dim=1)[:-1],
    ],
    ids=["B-by-1", "scalar", "B-by-3", "python-float", "B-minus-1"],
)
def test_objective_of_wrong_shape(entry, bad_objective):
    with pytest.raises(ValueError, match="objective"):
        call(entry, objective=bad_objective)


BAD_F = pytest.mark.parametrize(
    "bad_f",
    [
        lambda z, x: (0.5 * torch.tanh(z) + x)[:, :1],
        lambda z, x: (0.5 * torch.tanh(z) + x).sum(),
        lambda z, x: (0.5 * torch.tanh(z) + x)[:-1],
    ],
    ids=["B-by-1", "scalar", "B-minus-1"],
)


def _extra_dim_f(z, x):
    return (0.5 * torch.tanh(z) + x).unsqueeze(1)


@BAD_F
def test_f_of_wrong_shape_joint(bad_f):
    with pytest.raises(ValueError, match="f: expected"):
        call("joint", f=bad_f)


@BOTH
def test_f_with_an_extra_dimension(entry):
    # Same number of elements per sample: the nested solver only notices in its final check.
    with pytest.raises(ValueError, match="f: expected"):
        call(entry, f=_extra_dim_f)


def test_f_returning_a_tuple_for_a_tensor_state_joint():
    with pytest.raises(ValueError, match="f: expected"):
        call("joint", f=lambda z, x: (f(z, x), f(z, x)))


@BAD_F
def test_f_of_wrong_shape_nested(bad_f):
    with pytest.raises(ValueError, match="f: expected"):
        call("nested", f=bad_f)


# --------------------------------------------------------------------------- constraints


@BOTH
@pytest.mark.parametrize(
    "make",
    [
        lambda: LinfBall(0.0, center=make_x0()),
        lambda: LinfBall(-8 / 255, center=make_x0()),
        lambda: L2Ball(0.0, center=make_x0()),
        lambda: L2Ball(float("nan"), center=make_x0()),
        lambda: LinfBall(torch.tensor([0.1, 0.1, 0.0, 0.1], dtype=D), center=make_x0()),
        lambda: L2Ball(torch.tensor([0.1, -1.0, 0.1, 0.1], dtype=D), center=make_x0()),
    ],
    ids=["linf-0", "linf-negative", "l2-0", "l2-nan", "linf-per-sample-0", "l2-per-sample-neg"],
)
def test_constraint_with_eps_not_positive(entry, make):
    with pytest.raises(ValueError, match="radius"):
        call(entry, constraint=make())


@BOTH
@pytest.mark.parametrize(
    "make",
    [
        lambda: LinfBall(0.1, center=torch.zeros(B + 1, 3, dtype=D)),
        lambda: L2Ball(0.1, center=torch.zeros(B - 1, 3, dtype=D)),
        lambda: LinfBall(torch.full((B + 1,), 0.1, dtype=D), center=make_x0()),
        lambda: L2Ball(torch.full((2,), 0.1, dtype=D)),
        lambda: Box(torch.zeros(B + 1, 3, dtype=D), torch.ones(B + 1, 3, dtype=D)),
        lambda: L2Ball(0.1, center=torch.zeros(B + 1, 3, dtype=D)) & Box(-1.0, 1.0),
    ],
    ids=["linf-centre", "l2-centre", "linf-radius", "l2-radius", "box-bounds", "intersection"],
)
def test_constraint_with_wrong_batch_size(entry, make):
    with pytest.raises(ValueError, match="constraint: per-sample tensor has batch size"):
        call(entry, constraint=make())


@BOTH
def test_constraint_of_wrong_type(entry):
    with pytest.raises(TypeError, match="constraint"):
        call(entry, constraint=lambda x: x.clamp(0, 1))


@BOTH
def test_constraint_on_another_device(entry):
    try:
        meta = torch.zeros(B, 3, dtype=D, device="meta")
    except (RuntimeError, NotImplementedError) as err:  # pragma: no cover
        pytest.skip(f"meta tensors unavailable: {err}")
    with pytest.raises(ValueError, match="constraint: tensor on meta"):
        call(entry, constraint=LinfBall(0.1, center=meta))


# --------------------------------------------------------------------------- options


@BOTH
@pytest.mark.parametrize("rule", ["l1", "Sign", ""])
def test_unknown_step_rule(entry, rule):
    with pytest.raises(ValueError, match="step_rule"):
        call(entry, step_rule=rule)


@BOTH
@pytest.mark.parametrize(
    ("mu", "error", "match"),
    [
        (torch.zeros(B, 2, dtype=D), ValueError, "mu0: shape"),
        (torch.zeros(B + 1, 3, dtype=D), ValueError, "mu0: shape"),
        (torch.zeros(3, dtype=D), ValueError, "mu0: shape"),
        ((torch.zeros(B, 3, dtype=D), torch.zeros(B, 3, dtype=D)), ValueError, "mu0"),
        (torch.zeros(B, 3, dtype=torch.long), TypeError, "mu0"),
        (torch.zeros(B, 3, dtype=torch.float32), TypeError, "mu0"),
    ],
    ids=["features", "batch", "no-batch", "tuple-for-tensor", "int", "float32"],
)
def test_bad_mu0(entry, mu, error, match):
    with pytest.raises(error, match=match):
        call(entry, mu0=mu)


@pytest.mark.parametrize("name", ["anderson2", "Anderson", "newton", ""])
def test_unknown_solver(name):
    with pytest.raises(ValueError, match="solver"):
        call("joint", solver=name)


@pytest.mark.parametrize("grad", ["exact", "ift", "Implicit", ""])
def test_unknown_grad(grad):
    with pytest.raises(ValueError, match="grad"):
        call("joint", grad=grad)


@pytest.mark.parametrize("rule", ["sign", "l2"])
def test_implicit_grad_needs_raw_steps(rule):
    with pytest.raises(ValueError, match="grad: 'implicit'"):
        call("joint", grad="implicit", step_rule=rule)


@pytest.mark.parametrize("name", ["alpha_z", "alpha_mu"])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0.0, ValueError),
        (-0.1, ValueError),
        (1.0000001, ValueError),
        (2, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("0.5", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_damping_outside_unit_interval(name, value, error):
    with pytest.raises(error, match=name):
        call("joint", **{name: value})


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0.0, ValueError),
        (-0.01, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("0.1", TypeError),
        (True, TypeError),
    ],
)
def test_step_size_not_positive(value, error):
    with pytest.raises(error, match="step_size"):
        call("joint", step_size=value)


@pytest.mark.parametrize(
    ("value", "error"),
    [(0.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError), ("0.1", TypeError)],
)
def test_nested_lr_not_positive(value, error):
    with pytest.raises(error, match="step_size"):
        call("nested", step_size=value)


@pytest.mark.parametrize(("entry", "name"), [("joint", "step_size"), ("nested", "step_size")])
def test_bad_schedule_names_the_argument(entry, name):
    with pytest.raises(ValueError, match=name):
        call(entry, **{name: Constant(-0.1)})


@BOTH
def test_bad_schedule_is_rejected(entry):
    name = "step_size"
    with pytest.raises(ValueError, match="must be finite and > 0"):
        call(entry, **{name: Constant(-0.1)})


@pytest.mark.parametrize("value", [0, -1, 2.5, 10.0, True, None])
def test_max_iter_not_a_positive_integer(value):
    with pytest.raises(ValueError, match="max_iter"):
        call("joint", max_iter=value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rtol", -1e-4),
        ("rtol", float("nan")),
        ("atol", -1.0),
        ("atol", float("inf")),
        ("check_every", 0),
        ("check_every", 1.5),
    ],
)
def test_tolerances_and_check_every(name, value):
    with pytest.raises(ValueError, match=name):
        call("joint", **{name: value})


@pytest.mark.parametrize(
    "value",
    [
        (torch.zeros(B, 3, dtype=D), torch.zeros(B, 3, dtype=D)),
        {"z": torch.zeros(B, 3, dtype=D)},
        torch.zeros(B, 3, dtype=D),
    ],
    ids=["tuple", "dict", "tensor"],
)
def test_warm_start_of_wrong_type(value):
    with pytest.raises(TypeError, match="warm_start"):
        call("joint", warm_start=value)


def test_warm_start_from_a_solution_is_accepted():
    tight = {**JOINT_OK, "rtol": 1e-8, "atol": 1e-10}
    first = call("joint", **tight)
    second = call("joint", warm_start=first, **tight)
    assert second.success
    torch.testing.assert_close(second.x, first.x, rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("name", ["adagrad", "Adam", "SGD", ""])
def test_unknown_nested_optimizer(name):
    with pytest.raises(ValueError, match="optimizer"):
        call("nested", optimizer=name)


@pytest.mark.parametrize("value", [0, -3, 1.5, True, None])
def test_nested_steps_not_a_positive_integer(value):
    with pytest.raises(ValueError, match="max_iter"):
        call("nested", max_iter=value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("inner_max_iter", 0),
        ("inner_rtol", -1.0),
        ("inner_atol", float("nan")),
        ("inner_solver", "newton"),
    ],
)
def test_nested_inner_options_name_the_argument(name, value):
    with pytest.raises(ValueError, match=name):
        call("nested", **{name: value})


@pytest.mark.parametrize(("name", "value"), [("rtol", -1.0), ("atol", float("nan"))])
def test_nested_tolerances_are_validated(name, value):
    with pytest.raises(ValueError, match=name):
        call("nested", **{name: value})


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_divergence_factor_is_validated(value):
    with pytest.raises(ValueError, match="divergence"):
        call("joint", divergence=value)


@BOTH
def test_targets_of_wrong_batch_size(entry):
    with pytest.raises(ValueError, match="targets"):
        call(entry, targets=TARGET[:-1])


# --------------------------------------------------------------------------- failing samples


NAN_IN_SAMPLE_1 = [
    int(s) for s in (Status.CONVERGED, Status.NONFINITE, Status.CONVERGED, Status.CONVERGED)
]


def _nan_in_sample_1() -> torch.Tensor:
    x = make_x0()
    x[1, 0] = float("nan")
    return x


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(JOINT_OK),
        dict(JOINT_OK, subset=False),
        dict(JOINT_OK, solver="damped", step_size=0.05),
    ],
    ids=["anderson", "anderson-no-subset", "damped"],
)
def test_nan_in_x0_joint_marks_only_that_sample(kwargs):
    sol = call("joint", x0=_nan_in_sample_1(), **kwargs)
    assert sol.status.tolist() == NAN_IN_SAMPLE_1
    assert not sol.success
    good = torch.tensor([0, 2, 3])
    assert torch.isfinite(sol.x[good]).all() and torch.isfinite(sol.z[good]).all()
    assert sol.objective[good].max() < 1e-6
    with pytest.raises(JointSolveError, match="1: NONFINITE") as info:
        call("joint", x0=_nan_in_sample_1(), throw=True, **kwargs)
    assert info.value.solution is not None
    assert info.value.solution.status.tolist() == sol.status.tolist()


def test_nan_in_x0_nested_marks_only_that_sample():
    sol = call("nested", x0=_nan_in_sample_1(), **NESTED_OK)
    assert sol.status.tolist() == NAN_IN_SAMPLE_1
    good = torch.tensor([0, 2, 3])
    assert torch.isfinite(sol.x[good]).all() and sol.objective[good].max() < 1e-6
    with pytest.raises(JointSolveError, match="1: NONFINITE"):
        call("nested", x0=_nan_in_sample_1(), throw=True, **NESTED_OK)


@BOTH
def test_clean_problem_converges(entry):
    """The settings of the failure tests do converge without the fault (no false alarm)."""
    sol = call(entry, throw=True, **(JOINT_OK if entry == "joint" else NESTED_OK))
    assert sol.success


def diverging_f(z, x):
    return 3 * z + x


FAILED = (int(Status.DIVERGED), int(Status.NONFINITE))


def test_diverging_f_joint():
    # Damped iteration: z grows by 2.6x per step. (Anderson would find the repelling fixed
    # point z = -x/2 of this linear map, which is a legitimate solution.)
    kwargs = {"solver": "damped", "max_iter": 100, "x0": make_x0() + 0.1, "z0": make_z0() + 1.0}
    sol = call("joint", f=diverging_f, **kwargs)
    assert all(code in FAILED for code in sol.status.tolist()), sol.status
    assert int(sol.nstep.max()) < 100  # stopped early, not at the budget
    with pytest.raises(JointSolveError):
        call("joint", f=diverging_f, throw=True, **kwargs)


NESTED_DIVERGING = {"inner_solver": "damped", "inner_max_iter": 50, "max_iter": 5}


def test_diverging_f_nested_fails():
    kwargs = dict(NESTED_DIVERGING, x0=make_x0() + 0.1, z0=make_z0() + 1.0)
    sol = call("nested", f=diverging_f, **kwargs)
    assert not sol.converged.any(), sol.status
    with pytest.raises(JointSolveError):
        call("nested", f=diverging_f, throw=True, **kwargs)


def test_diverging_f_nested_is_reported_as_diverged():
    kwargs = dict(NESTED_DIVERGING, x0=make_x0() + 0.1, z0=make_z0() + 1.0)
    sol = call("nested", f=diverging_f, **kwargs)
    assert all(code in FAILED for code in sol.status.tolist()), sol.status
