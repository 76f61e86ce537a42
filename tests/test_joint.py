"""solve_joint against dense references and against solve_nested (float64)."""

from __future__ import annotations

import pytest
import torch
from problems import DTYPE, dense_reference, forward_fixed_point, make_problem

from jiio_ext import (
    Anderson,
    Box,
    DampedIteration,
    L2Ball,
    LinfBall,
    Status,
    StepSwitch,
    solve_joint,
    solve_nested,
)

TIGHT = dict(rtol=1e-11, atol=1e-13, max_iter=600)


@pytest.mark.parametrize("solver", ["anderson", "damped"])
def test_solution_satisfies_three_optimality_conditions(solver):
    p = make_problem()
    # the damped iteration needs a smaller step (two time scales); Anderson is stable at 1/L
    step, max_iter = (0.3, 600) if solver == "anderson" else (0.1, 3000)
    sol = solve_joint(
        p.f,
        p.objective,
        p.x0(),
        z0=p.z0(),
        step_size=step,
        solver=solver,
        rtol=1e-11,
        atol=1e-13,
        max_iter=max_iter,
    )
    assert sol.success, sol.summary()
    z_ref, mu_ref, grad_ref = dense_reference(p, sol.z, sol.x)
    # forward residual
    torch.testing.assert_close(sol.z, z_ref, atol=1e-9, rtol=0)
    # adjoint against an independent dense linear solve
    torch.testing.assert_close(sol.mu, mu_ref, atol=1e-8, rtol=1e-7)
    # stationarity of x (unconstrained): the full IFT gradient vanishes
    assert grad_ref.abs().max() < 1e-8
    assert sol.info["solver"] == ("anderson" if solver == "anderson" else "damped")


def test_projected_stationarity_with_constraint():
    p = make_problem(seed=1)
    ball = L2Ball(radius=0.3)
    sol = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, constraint=ball, **TIGHT)
    assert sol.success, sol.summary()
    assert bool(ball.contains(sol.x, tol=1e-12).all())
    _, _, grad_ref = dense_reference(p, sol.z, sol.x)
    for alpha in (0.05, 0.2, 1.0):  # projected stationarity holds for any step size
        moved = ball.project(sol.x - alpha * grad_ref) - sol.x
        assert moved.abs().max() < 1e-8
    # the constraint is active: the unconstrained gradient does not vanish
    assert grad_ref.norm(dim=1).min() > 1e-3


@pytest.mark.parametrize(
    "constraint",
    [None, L2Ball(radius=0.3), LinfBall(0.2), LinfBall(0.5) & Box(-0.1, 1.0)],
    ids=["none", "l2", "linf", "linf&box"],
)
def test_joint_and_nested_agree(constraint):
    p = make_problem(seed=2, reg=0.2)
    joint = solve_joint(
        p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, constraint=constraint, **TIGHT
    )
    nested = solve_nested(
        p.f,
        p.objective,
        p.x0(),
        z0=p.z0(),
        constraint=constraint,
        optimizer="sgd",
        step_size=0.3,
        max_iter=400,
        inner_rtol=1e-12,
        inner_atol=1e-14,
        inner_max_iter=200,
    )
    assert joint.success
    torch.testing.assert_close(joint.x, nested.x, atol=1e-7, rtol=0)
    torch.testing.assert_close(joint.z, nested.z, atol=1e-7, rtol=0)
    torch.testing.assert_close(joint.objective, nested.objective, atol=1e-9, rtol=1e-7)


def test_nested_adam_reaches_the_same_minimum():
    p = make_problem(seed=3, reg=0.2)
    joint = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, **TIGHT)
    nested = solve_nested(
        p.f,
        p.objective,
        p.x0(),
        z0=p.z0(),
        optimizer="adam",
        step_size=0.02,
        max_iter=600,
        inner_rtol=1e-10,
    )
    torch.testing.assert_close(joint.objective, nested.objective, atol=1e-5, rtol=1e-4)
    assert nested.f_evals > joint.f_evals


def test_frozen_samples_match_solo_solves_and_cost_nothing():
    p = make_problem(batch=5, seed=4)
    # make sample 0 converge early: start it at the joint optimum
    first = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, **TIGHT)
    x0, z0 = p.x0(), p.z0()
    x0[0], z0[0] = first.x[0], first.z[0]
    mu0 = torch.zeros_like(z0)
    mu0[0] = first.mu[0]
    batch = solve_joint(
        p.f, p.objective, x0, z0=z0, mu0=mu0, step_size=0.3, rtol=1e-9, atol=1e-12, max_iter=400
    )
    assert batch.success
    assert int(batch.nstep[0]) < int(batch.nstep[1:].min())
    for i in range(p.batch):
        target = p.target[i : i + 1]
        solo = solve_joint(
            p.f,
            lambda z, x, t=target: (z - t).pow(2).sum(1) + p.reg * x.pow(2).sum(1),
            x0[i : i + 1],
            z0=z0[i : i + 1],
            mu0=mu0[i : i + 1],
            step_size=0.3,
            rtol=1e-9,
            atol=1e-12,
            max_iter=400,
        )
        assert int(solo.nstep[0]) == int(batch.nstep[i])
        torch.testing.assert_close(solo.x[0], batch.x[i], atol=1e-10, rtol=0)
        torch.testing.assert_close(solo.z[0], batch.z[i], atol=1e-10, rtol=0)
    # frozen samples are not evaluated: total sample-evaluations equal the sum of nsteps
    seen = []
    solve_joint(
        p.f,
        p.objective,
        x0,
        z0=z0,
        mu0=mu0,
        step_size=0.3,
        rtol=1e-9,
        atol=1e-12,
        max_iter=400,
        callback=lambda k, info: seen.append(info["index"].numel()),
    )
    assert sum(seen) == int(batch.nstep.sum())


def test_subset_false_gives_same_answer():
    p = make_problem(seed=5)
    a = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, **TIGHT)
    b = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, subset=False, **TIGHT)
    torch.testing.assert_close(a.x, b.x, atol=1e-10, rtol=0)
    assert torch.equal(a.nstep, b.nstep)


def test_targets_are_sliced_with_active_samples():
    p = make_problem(seed=6)

    def objective(z, x, target):
        return (z - target).pow(2).sum(1) + p.reg * x.pow(2).sum(1)

    a = solve_joint(p.f, objective, p.x0(), z0=p.z0(), targets=p.target, step_size=0.3, **TIGHT)
    b = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, subset=False, **TIGHT)
    torch.testing.assert_close(a.x, b.x, atol=1e-9, rtol=0)


def test_multi_tensor_state():
    p = make_problem(seed=8, reg=0.3)
    dz = p.W.shape[0]

    def f2(z, x):
        a, c = z
        a_new = torch.tanh(a @ p.W.T + x @ p.U + p.b + 0.1 * c.mean(dim=(1, 2)).unsqueeze(1))
        c_new = 0.5 * torch.tanh(c) + 0.1 * a_new.sum(1).view(-1, 1, 1)
        return (a_new, c_new)

    def objective(z, x):
        return (z[0] - p.target).pow(2).sum(1) + z[1].pow(2).sum((1, 2)) + p.reg * x.pow(2).sum(1)

    z0 = (p.z0(), torch.zeros(p.batch, 2, 3, dtype=DTYPE))
    sol = solve_joint(f2, objective, p.x0(), z0=z0, step_size=0.3, **TIGHT)
    assert sol.success, sol.summary()
    assert isinstance(sol.z, tuple) and sol.z[1].shape == (p.batch, 2, 3)
    assert isinstance(sol.mu, tuple) and sol.mu[0].shape == (p.batch, dz)
    nested = solve_nested(
        f2,
        objective,
        p.x0(),
        z0=z0,
        optimizer="sgd",
        step_size=0.3,
        max_iter=150,
        inner_rtol=1e-10,
        inner_atol=1e-13,
        inner_max_iter=200,
    )
    torch.testing.assert_close(sol.x, nested.x, atol=1e-5, rtol=0)
    torch.testing.assert_close(sol.z[1], nested.z[1], atol=1e-7, rtol=0)


def test_warm_start_reduces_iterations():
    p = make_problem(seed=9)
    cold = solve_joint(
        p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, rtol=1e-8, atol=1e-10, max_iter=400
    )
    p.target = p.target + 1e-3  # a slightly different problem, as in consecutive epochs
    again = solve_joint(
        p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, rtol=1e-8, atol=1e-10, max_iter=400
    )
    warm = solve_joint(
        p.f,
        p.objective,
        cold.x,
        z0=p.z0(),
        warm_start=cold,
        step_size=0.3,
        rtol=1e-8,
        atol=1e-10,
        max_iter=400,
    )
    assert warm.success and again.success
    assert bool((warm.nstep <= again.nstep).all())
    assert warm.nstep.float().mean() < 0.9 * again.nstep.float().mean()
    torch.testing.assert_close(warm.x, again.x, atol=1e-6, rtol=0)


def test_anderson_needs_fewer_iterations_than_damped():
    p = make_problem(seed=10)
    kw = dict(step_size=0.1, rtol=1e-8, atol=1e-10, max_iter=3000)
    anderson = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), solver=Anderson(memory=5), **kw)
    damped = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), solver=DampedIteration(), **kw)
    assert anderson.success and damped.success
    assert int(anderson.nstep.max()) * 2 < int(damped.nstep.min())
    # one batched map per iteration, plus the evaluation of the objective at the answer
    assert anderson.f_evals == anderson.vjps == int(anderson.nstep.max()) + 1


def test_returned_x_always_in_set_even_when_not_converged():
    p = make_problem(seed=11)
    images = torch.rand(p.batch, p.U.shape[0], dtype=DTYPE)
    threat = LinfBall(0.05, center=images) & Box(0.0, 1.0)
    sol = solve_joint(
        p.f,
        lambda z, x: -(z - p.target).pow(2).sum(1),
        images,
        z0=p.z0(),
        constraint=threat,
        step_size=0.02,
        step_rule="sign",
        max_iter=7,
    )
    assert (sol.status == Status.MAX_ITER).all()
    assert bool(threat.contains(sol.x, tol=0.0).all())


def test_traces_progress_and_trajectory(capsys):
    p = make_problem(seed=12)
    sol = solve_joint(
        p.f,
        p.objective,
        p.x0(),
        z0=p.z0(),
        step_size=0.3,
        max_iter=40,
        rtol=1e-12,
        atol=0.0,
        trajectory=[3, 10],
        progress=True,
        solver=Anderson(memory=3),
    )
    assert sol.traces["objective"].shape == (40, p.batch)
    assert set(sol.traces) >= {"residual_z", "residual_x", "residual_mu", "objective"}
    assert set(sol.trajectory) == {3, 10}
    z3, x3 = sol.trajectory[3]
    assert z3.shape == p.z0().shape and not torch.equal(x3, sol.x)
    assert "jiio" in capsys.readouterr().err


def test_step_switch_schedule_runs_to_the_same_point():
    p = make_problem(seed=13)
    a = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, **TIGHT)
    b = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_size=StepSwitch(0.25, 0.1), **TIGHT)
    torch.testing.assert_close(a.x, b.x, atol=1e-8, rtol=0)


def test_float32_supported():
    p = make_problem(seed=14)
    f32 = lambda z, x: torch.tanh(z @ p.W.T.float() + x @ p.U.float() + p.b.float())  # noqa: E731
    tgt = p.target.float()
    sol = solve_joint(
        f32,
        lambda z, x: (z - tgt).pow(2).sum(1) + p.reg * x.pow(2).sum(1),
        p.x0().float(),
        z0=p.z0().float(),
        step_size=0.3,
        max_iter=200,
    )
    ref = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, **TIGHT)
    assert sol.x.dtype == torch.float32 and sol.success
    torch.testing.assert_close(sol.x.double(), ref.x, atol=1e-3, rtol=0)


def test_best_iterate_returns_lowest_objective_of_budgeted_run():
    p = make_problem(seed=31)
    kw = dict(step_size=1.2, max_iter=40, rtol=0.0, atol=0.0)  # a step too large: oscillates
    last = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), best_iterate=False, **kw)
    best = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), best_iterate=True, **kw)
    assert (best.status == Status.MAX_ITER).all()
    trace = last.traces["objective"]  # (T, B): same trajectory, both runs are deterministic
    torch.testing.assert_close(best.traces["objective"], trace)
    # the iterate chosen has a traced objective no worse than the last iterate's
    chosen, final = best.info["objective_last_iterate"], last.info["objective_last_iterate"]
    matches = torch.isclose(trace, chosen.unsqueeze(0), rtol=0, atol=1e-14).any(dim=0)
    assert bool(matches.all())
    assert bool((chosen <= final).all())
    assert bool((chosen < final).any())
    # and the reported objective is the one at the returned x, with z at its fixed point
    z_star = forward_fixed_point(p.f, best.x, best.z)
    torch.testing.assert_close(best.objective, p.objective(z_star, best.x), rtol=1e-6, atol=1e-9)


def test_bf16_autocast_keeps_the_state_in_float32_and_solves():
    torch.manual_seed(0)
    W = 0.4 * torch.randn(6, 6) / 6**0.5
    f = lambda z, x: torch.tanh(z @ W + x)  # noqa: E731
    target = 0.3 * torch.rand(5, 6)
    objective = lambda z, x: (z - target).pow(2).sum(1)  # noqa: E731
    x0 = torch.zeros(5, 6)
    exact = solve_joint(f, objective, x0, z0=torch.zeros_like(x0), step_size=0.3, max_iter=300)
    mixed = solve_joint(
        f,
        objective,
        x0,
        z0=torch.zeros_like(x0),
        step_size=0.3,
        max_iter=300,
        autocast=torch.bfloat16,
        rtol=1e-2,
    )
    assert mixed.x.dtype == mixed.z.dtype == torch.float32
    assert float(mixed.objective.max()) < 1e-3 and float(exact.objective.max()) < 1e-6
    with pytest.raises(ValueError, match="autocast"):
        solve_joint(f, objective, x0, z0=torch.zeros_like(x0), autocast=torch.float64)


def test_best_iterate_never_returns_worse_than_the_last_iterate():
    # z0 = 0 is the exact fixed point at x0 = 0: the starting point is a "consistent" iterate
    # with a high objective; it must not replace a better last iterate
    torch.manual_seed(0)
    W = 0.5 * torch.eye(8)
    f = lambda z, x: torch.tanh(z @ W + x)  # noqa: E731
    target = torch.rand(16, 8)
    objective = lambda z, x: (z - target).pow(2).sum(1)  # noqa: E731
    x0 = torch.zeros(16, 8)
    runs = [
        solve_joint(
            f,
            objective,
            x0,
            z0=torch.zeros_like(x0),
            step_size=0.5,
            max_iter=100,
            best_iterate=best,
        )
        for best in (True, False)
    ]
    assert bool((runs[0].objective <= runs[1].objective + 1e-7).all())


def _fixed_budget(p, max_iter: int, dtype: torch.dtype = DTYPE):
    """An attack-style solve, no tolerance (rtol = atol = 0): constant sign steps, which keep
    circling an interior minimum, so no sample ever converges."""
    W, U, b, target = (t.to(dtype) for t in (p.W, p.U, p.b, p.target))

    def f(z, x):
        return torch.tanh(z @ W.T + x @ U + b)

    def objective(z, x):
        return (z - target).pow(2).sum(1) + p.reg * x.pow(2).sum(1)

    x0, z0 = p.x0().to(dtype), p.z0().to(dtype)
    sol = solve_joint(
        f,
        objective,
        x0,
        z0=z0,
        constraint=LinfBall(5.0, center=x0),
        step_rule="sign",
        step_size=0.05,
        solver="damped",
        alpha_z=0.5,
        max_iter=max_iter,
        rtol=0.0,
        atol=0.0,
    )
    return sol, f, objective


@pytest.mark.parametrize("dtype, floor", [(torch.float32, 1e-4), (torch.float64, 2**-26)])
def test_a_fixed_budget_settle_stops_at_its_floor_on_a_contractive_layer(dtype, floor):
    p = make_problem(batch=6, seed=11)
    sol, _, _ = _fixed_budget(p, 200, dtype)  # the settle's budget: max(20, 200 // 4) = 50
    assert not bool((sol.status == Status.CONVERGED).any())  # every sample is settled
    assert sol.info["settle_rtol"] == pytest.approx(floor)
    settle_evals = sol.f_evals - sol.vjps  # forward-only evaluations of the settle
    assert 0 < settle_evals < 25, settle_evals
    # it stopped because each sample met the floor, relative to the state's RMS
    z_rms = sol.z.pow(2).mean(dim=1).sqrt()
    assert bool((sol.residuals["z"] <= floor * z_rms).all()), sol.residuals["z"]


def test_a_fixed_budget_reports_the_objective_at_the_returned_x():
    p = make_problem(batch=6, seed=12)
    sol, f, objective = _fixed_budget(p, 40, torch.float32)
    z_star = forward_fixed_point(f, sol.x, sol.z)  # plain iteration to float32 round-off
    tight = objective(z_star, sol.x)
    # z within the floor (1e-4 of its RMS, times 1 / (1 - Lipschitz 0.5)) of its fixed point
    torch.testing.assert_close(sol.z, z_star, rtol=0, atol=5e-4)
    torch.testing.assert_close(sol.objective, tight, rtol=1e-3, atol=1e-6)
    # the last joint iterate's value is another number (the test is not vacuous)
    last = sol.info["objective_last_iterate"]
    assert not torch.allclose(last, tight, rtol=1e-3, atol=1e-6)


def test_the_settle_keeps_the_solve_tolerance_when_there_is_one():
    p = make_problem(batch=4, seed=13)
    sol = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), max_iter=10, rtol=1e-9)
    assert sol.info["settle_rtol"] == 1e-9
    z_star = forward_fixed_point(p.f, sol.x, sol.z)
    torch.testing.assert_close(sol.z, z_star, rtol=0, atol=1e-8)
