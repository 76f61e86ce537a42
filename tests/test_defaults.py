"""Issue 13: tuning-free defaults, honest statuses and objectives at the returned answer."""

from __future__ import annotations

import pytest
import torch
from problems import DTYPE, dense_reference, forward_fixed_point, make_problem

from jiio_ext import Box, L2Ball, Status, solve_joint
from jiio_ext.updates import Adaptive, GradientStep


def _solve(problem, objective=None, **options):
    objective = problem.objective if objective is None else objective
    return solve_joint(problem.f, objective, problem.x0(), z0=problem.z0(), **options)


def test_default_reaches_the_optimum_of_the_dense_oracle():
    p = make_problem(seed=40)
    sol = _solve(p, max_iter=400)
    _, _, grad = dense_reference(p, sol.z, sol.x)
    _, _, grad0 = dense_reference(p, p.z0(), p.x0())
    assert bool((grad.norm(dim=1) < 1e-3 * grad0.norm(dim=1)).all())


@pytest.mark.parametrize("factor", [1e-3, 1e3])
def test_default_result_does_not_depend_on_the_objective_scale(factor):
    p = make_problem(seed=41)
    base = _solve(p)
    scaled = _solve(p, lambda z, x: factor * p.objective(z, x))
    torch.testing.assert_close(scaled.x, base.x, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(scaled.objective, factor * base.objective, rtol=1e-5, atol=0)
    assert torch.equal(scaled.status, base.status)


@pytest.mark.parametrize("units", [1e-3, 1e3])
def test_default_result_does_not_depend_on_the_units_of_x(units):
    p = make_problem(seed=42)
    x0 = 0.2 + 0.1 * torch.randn(
        p.batch, 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE
    )
    base = solve_joint(p.f, p.objective, x0, z0=p.z0())
    # the same problem with x measured in other units: x' = x / units
    f_scaled = lambda z, x: p.f(z, units * x)  # noqa: E731
    objective_scaled = lambda z, x: p.objective(z, units * x)  # noqa: E731
    scaled = solve_joint(f_scaled, objective_scaled, x0 / units, z0=p.z0())
    torch.testing.assert_close(units * scaled.x, base.x, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(scaled.objective, base.objective, rtol=1e-5, atol=1e-10)


def test_adaptive_keeps_constraints_and_stationarity_on_a_ball():
    p = make_problem(seed=43, reg=0.0)
    ball = L2Ball(radius=0.05)
    sol = _solve(p, constraint=ball, max_iter=600, rtol=1e-6)
    assert bool(ball.contains(sol.x, tol=1e-9).all())
    _, _, grad = dense_reference(p, sol.z, sol.x)
    # KKT on the sphere: the gradient points inwards along -x (it is parallel to x)
    cosine = torch.nn.functional.cosine_similarity(grad, -sol.x, dim=1)
    assert bool((cosine > 1 - 1e-4).all())


@pytest.mark.parametrize("solver", ["anderson", "damped"])
@pytest.mark.parametrize("step", [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
def test_converged_means_the_projected_gradient_is_small(step, solver):
    p = make_problem(seed=44)
    box = Box(-0.3, 0.3)
    sol = _solve(p, constraint=box, step_size=step, solver=solver, max_iter=300, rtol=1e-3)
    _, _, grad0 = dense_reference(p, p.z0(), p.x0())
    z_star, mu, grad = dense_reference(p, sol.z, sol.x)
    # the projected gradient (gradient mapping at unit step) against the one at the start
    mapping = (sol.x - box.project(sol.x - grad)).norm(dim=1)
    start = (p.x0() - box.project(p.x0() - grad0)).norm(dim=1)
    converged = sol.status == Status.CONVERGED
    assert bool((mapping[converged] <= 2e-2 * start[converged]).all())
    assert bool(((sol.z - z_star).norm(dim=1)[converged] <= 1e-3).all())
    if solver == "damped" and step <= 1e-3:
        # 300 plain steps this small cannot reach stationarity: never reported CONVERGED
        assert not bool(converged.any())
        assert bool((mapping > 0.1 * start).all())
    if solver == "anderson" and step >= 1e-2:  # the test is not vacuous: these converge
        assert bool(converged.all())


def test_objective_is_reported_at_the_returned_x_with_z_at_its_fixed_point():
    p = make_problem(seed=45)
    sol = _solve(p, max_iter=15)  # far from converged
    assert bool((sol.status == Status.MAX_ITER).all())
    z_star = forward_fixed_point(p.f, sol.x, sol.z)
    torch.testing.assert_close(sol.z, z_star, rtol=0, atol=1e-4)
    torch.testing.assert_close(sol.objective, p.objective(z_star, sol.x), rtol=1e-4, atol=1e-8)
    assert "objective_last_iterate" in sol.info


def test_adaptive_rejects_bad_settings_by_name():
    with pytest.raises(ValueError, match="Adaptive.lr"):
        Adaptive(lr=0.0)
    with pytest.raises(ValueError, match="Adaptive.final"):
        Adaptive(final=2.0)
    with pytest.raises(ValueError, match="Adaptive.beta2"):
        Adaptive(beta2=1.0)
    with pytest.raises(TypeError, match="Adaptive.eps"):
        Adaptive(eps="small")
    with pytest.raises(ValueError, match="Adaptive.backoff"):
        Adaptive(backoff=0.0)
    with pytest.raises(ValueError, match="Adaptive.recover"):
        Adaptive(recover=0.5)
    with pytest.raises(ValueError, match="Adaptive.rise"):
        Adaptive(rise=-1.0)
    for horizon in (0, 2.5, True):
        with pytest.raises(ValueError, match="Adaptive.horizon"):
            Adaptive(horizon=horizon)
    with pytest.raises(ValueError, match="Adaptive.tail"):
        Adaptive(tail=1.0)
    with pytest.raises(ValueError, match="Adaptive.end"):
        Adaptive(end=0.5)  # above final
    p = make_problem(seed=46)
    with pytest.raises(ValueError, match="step_size"):
        _solve(p, step_rule="sign")  # PGD-style rules need a hand-set alpha


def test_rate_backs_off_per_sample_when_its_objective_rises():
    update = Adaptive(lr=0.1, final=1.0, backoff=0.5, recover=1.25, rise=0.2)
    update.start(torch.zeros(3, 2, dtype=DTYPE), None)
    grad = torch.ones(3, 2, dtype=DTYPE)

    def step(objective, index=None):
        g = grad if index is None else grad[index]
        return update(g, index, 0, 100, objective=torch.tensor(objective, dtype=DTYPE))

    first = step([1.0, 1.0, -1.0])  # no history: the plain Adam step
    torch.testing.assert_close(first, torch.full((3, 2), 0.1, dtype=DTYPE), rtol=1e-3, atol=0)
    # sample 0 rises 50 % (backs off), sample 1 rises 10 % (within `rise`: recovers, capped
    # at 1), sample 2 rises from -1 to -0.7 (30 % of its magnitude: backs off)
    second = step([1.5, 1.1, -0.7])
    scale = second[:, 0] / first[:, 0]
    torch.testing.assert_close(scale, torch.tensor([0.5, 1.0, 0.5], dtype=DTYPE), rtol=1e-2, atol=0)
    # only the active rows move on; sample 0 falls again and recovers by 1.25
    third = step([1.0], index=torch.tensor([0]))
    assert float(third[0, 0] / first[0, 0]) == pytest.approx(0.625, rel=1e-2)
    assert float(update._factor[2]) == pytest.approx(0.5)  # untouched while inactive
    # the moments see the same gradients either way, so only the control differs
    off = Adaptive(lr=0.1, final=1.0, backoff=1.0)
    off.start(torch.zeros(3, 2, dtype=DTYPE), None)
    off(grad, None, 0, 100, objective=torch.tensor([1.0, 1.0, 1.0], dtype=DTYPE))
    plain = off(grad, None, 0, 100, objective=torch.tensor([9.0, 9.0, 9.0], dtype=DTYPE))
    torch.testing.assert_close(plain, torch.full((3, 2), 0.1, dtype=DTYPE), rtol=1e-3, atol=0)


def test_default_iterates_do_not_depend_on_the_budget():
    # the rate decays over a fixed horizon, not over max_iter: a larger budget runs the same
    # iterates until the closing anneal of its last `tail` (the benches time JIIO to a
    # quality, so a schedule stretched over the budget would reach it later the larger the
    # budget)
    p = make_problem(seed=47)
    default = Adaptive()
    short_budget, long_budget = default.horizon + 40, 3 * default.horizon
    traces = []
    for budget in (short_budget, long_budget):
        steps: list[torch.Tensor] = []
        record = steps.append
        _solve(
            p,
            max_iter=budget,
            rtol=0.0,
            callback=lambda k, s, keep=record: keep(s["state"].clone()),
        )
        traces.append(steps)
    short, long = traces
    assert len(short) == short_budget and len(long) == long_budget
    anneal_start = short_budget - round(default.tail * short_budget)
    assert anneal_start > default.horizon
    for k in range(anneal_start + 1):  # the rate of step k acts on iterate k + 1
        assert torch.equal(short[k], long[k]), k
    assert not torch.equal(short[-1], long[short_budget - 1])  # the anneal did start
    # a budget within the horizon decays within it, and ends at lr · end
    assert default.rate(default.horizon // 2 - 1, default.horizon // 2) == pytest.approx(
        default.lr * default.end
    )
    stretched = Adaptive(horizon=None)
    assert stretched.rate(default.horizon, long_budget) > default.rate(default.horizon, long_budget)


def test_closing_anneal_leaves_the_adjoint_settled():
    # docs/latent.md's decoder: without the closing anneal the input still moves at the floor
    # rate when the budget ends, and the adjoint of the nearly-solved objective lags it, so
    # samples end UNSETTLED; the anneal slows x down and the adjoint catches up
    from jiio_ext.adapters.torchdeq import input_optimizable
    from torchdeq import get_deq

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inject, self.cell = torch.nn.Linear(8, 32), torch.nn.Linear(32, 32)
            self.head = torch.nn.Linear(32, 64)
            self.deq = get_deq(f_solver="anderson", f_max_iter=40, f_tol=1e-4)

        def forward(self, x):
            u = self.inject(x)
            z, _ = self.deq(lambda z: torch.tanh(0.5 * self.cell(z) + u), torch.zeros_like(u))
            return self.head(z[-1])

    torch.manual_seed(0)
    model = input_optimizable(Decoder())
    with torch.no_grad():
        target = model(torch.randn(16, 8))
    objective = lambda out, x: (out - target).pow(2).mean(1)  # noqa: E731
    runs = {
        tail: model.optimize_input(
            torch.zeros(16, 8), objective, constraint=Box(-3.0, 3.0), step_size=Adaptive(tail=tail)
        )
        for tail in (0.0, Adaptive().tail)
    }
    assert int((runs[0.0].status == Status.UNSETTLED).sum()) >= 4
    assert not bool((runs[Adaptive().tail].status == Status.UNSETTLED).any())
    assert float(runs[Adaptive().tail].objective.mean()) < 1e-5


def test_hand_set_step_is_still_available():
    p = make_problem(seed=47)
    sol = _solve(p, step_size=GradientStep(0.3), solver="anderson", max_iter=300, rtol=1e-8)
    ref = _solve(p, step_size=0.3, max_iter=300, rtol=1e-8)
    torch.testing.assert_close(sol.x, ref.x)
    assert sol.success


def _non_contractive_problem():
    gen = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=DTYPE))[0]
    weight = 1.6 * rotation  # plain (damped) iteration of tanh(z W + x) does not converge
    target = 0.3 * torch.rand(4, 6, generator=gen, dtype=DTYPE)
    z0 = 0.5 * torch.randn(4, 6, generator=gen, dtype=DTYPE)
    return (
        lambda z, x: torch.tanh(z @ weight + x),
        lambda z, x: (z - target).pow(2).sum(1),
        torch.zeros(4, 6, dtype=DTYPE),
        z0,
    )


def test_a_forward_block_that_never_settles_is_unsettled_not_max_iter():
    f, objective, x0, z0 = _non_contractive_problem()
    sol = solve_joint(f, objective, x0, z0=z0, step_size=0.1, solver="damped", max_iter=50)
    unsettled = sol.status == Status.UNSETTLED
    assert bool(unsettled.any())
    scale = sol.z.pow(2).mean(1).sqrt()
    joint = sol.info["residual_z_joint"]
    assert bool((joint[unsettled] > 0.1 * scale[unsettled]).all())
    assert bool((sol.status[~unsettled] != Status.CONVERGED).all())
    # the returned z is still re-solved at the returned x, so the objective is honest
    assert bool((sol.residuals["z"] < 1e-3).all())
    assert "UNSETTLED" in sol.summary()
    # a contractive problem under the same budget is MAX_ITER, never UNSETTLED
    p = make_problem(seed=48)
    short = _solve(p, max_iter=20)
    assert not bool((short.status == Status.UNSETTLED).any())


def test_an_adjoint_that_never_settles_is_unsettled_too():
    # contractive f, so z settles; the adjoint barely moves (α_μ = 0.01), so the x-steps
    # follow gradients far from the true ones
    p = make_problem(seed=49)
    sol = _solve(p, alpha_mu=0.01, max_iter=40)
    scale_z = sol.z.pow(2).mean(1).sqrt()
    scale_mu = sol.mu.pow(2).mean(1).sqrt()
    assert bool((sol.info["residual_z_joint"] < 0.1 * scale_z).all())
    assert bool((sol.residuals["mu"] > 0.1 * scale_mu).all())
    assert bool((sol.status == Status.UNSETTLED).all())
    # the same budget with the default adjoint damping is not UNSETTLED
    assert not bool((_solve(p, max_iter=40).status == Status.UNSETTLED).any())


def test_progress_bar_shows_the_whole_batch_mean_objective():
    class Bar:
        def __init__(self):
            self.shown = []

        def set_postfix(self, values):
            self.shown.append(float(values["objective"]))

        def update(self, n=1):
            pass

    p = make_problem(seed=50)
    bar = Bar()
    # a hand-set step with Anderson: samples converge and freeze at different iterations
    sol = _solve(p, step_size=0.3, solver="anderson", max_iter=300, rtol=1e-6, progress=bar)
    assert sol.success and len(set(sol.nstep.tolist())) > 1
    trace = sol.traces["objective"]  # (T, B), NaN after a sample froze
    last = torch.stack([trace[: int(n), i][-1] for i, n in enumerate(sol.nstep)])
    assert bar.shown[-1] == pytest.approx(float(last.mean()), rel=1e-3)


@pytest.mark.parametrize("factor", [1e-3, 1e3])
def test_zoo_mdeq_result_does_not_depend_on_the_objective_scale(factor):
    # jiio bench zoo's MDEQ (weight norm, Broyden, list state, an absolute backward tolerance
    # b_tol=1e-3 of its own): its Adam baseline's IFT gradient changes with the objective's
    # scale, JIIO through optimize_input must not (docs/results.md, the zoo section)
    pytest.importorskip("torchdeq")
    from jiio_ext.adapters.torchdeq import input_optimizable

    from jiio_ext.apps.bench.zoo_models import MultiResolutionDEQ

    torch.manual_seed(0)
    model = MultiResolutionDEQ(channels=4, size=6).to(DTYPE).requires_grad_(False)
    x_true = 0.5 * torch.randn(2, 1, 6, 6, dtype=DTYPE)
    with torch.no_grad():
        targets = model(x_true)

    def solve(scale):
        objective = lambda out, x: scale * (out - targets).pow(2).mean(1)  # noqa: E731
        return input_optimizable(model).optimize_input(
            torch.zeros_like(x_true), objective, max_iter=40
        )

    base, scaled = solve(1.0), solve(factor)
    assert float(base.x.abs().amax()) > 1e-2  # x moved from x0 = 0
    torch.testing.assert_close(scaled.x, base.x, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(scaled.objective, factor * base.objective, rtol=1e-5, atol=0)
