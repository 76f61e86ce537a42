"""The steppable engine, the one Termination, the solver table, and the shared vocabulary."""

from __future__ import annotations

import inspect

import pytest
import torch
from problems import make_problem

from jiio_ext import solve_joint, solve_nested
from jiio_ext.solution import Status
from jiio_ext.solvers import (
    Anderson,
    BestSoFar,
    DampedIteration,
    FixedPointEngine,
    Termination,
    fixed_point,
    get_solver,
)

D = torch.float64
B, N = 4, 6


def _fixed_points(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, generator=gen, dtype=D)


def _linear():
    """``F(s) = s A + b`` with ``||A||₂ = 0.8``; fixed point ``b (I − A)⁻¹``."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(N, N, generator=gen, dtype=D)
    a = 0.8 * a / torch.linalg.matrix_norm(a, 2)
    b = torch.randn(B, N, generator=gen, dtype=D)
    star = torch.linalg.solve((torch.eye(N, dtype=D) - a).T, b.T).T
    return (lambda s, i, k: (s @ a + b[i], {})), star


def _elementwise():
    """``F(s) = s* + 0.6 tanh(s − s*)``: nonlinear, contraction 0.6, fixed point ``s*``."""
    star = _fixed_points(2)
    return (lambda s, i, k: (star[i] + 0.6 * torch.tanh(s - star[i]), {})), star


def _per_sample_rates():
    """``F(s) = s* + r_b (s − s*)`` with a different rate per sample (0.1 … 0.9)."""
    star = _fixed_points(3)
    rates = torch.tensor([0.1, 0.5, 0.8, 0.9], dtype=D).unsqueeze(1)
    return (lambda s, i, k: (star[i] + rates[i] * torch.sin(s - star[i]), {})), star


MAPS = {"linear": _linear, "elementwise": _elementwise, "per_sample_rates": _per_sample_rates}
SOLVERS = {
    "anderson_I": lambda: Anderson(memory=5, kind="I"),
    "anderson_I_no_safeguard": lambda: Anderson(memory=5, kind="I", safeguard=None),
    "anderson_II": lambda: Anderson(memory=5, kind="II"),
    "anderson_II_no_safeguard": lambda: Anderson(memory=5, kind="II", safeguard=None),
    "damped": DampedIteration,
}


@pytest.mark.parametrize("subset", [True, False], ids=["subset", "masked"])
@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("problem", sorted(MAPS))
def test_solver_table_reaches_the_known_fixed_point(problem, solver, subset):
    map_fn, star = MAPS[problem]()
    result = fixed_point(
        map_fn,
        torch.zeros(B, N, dtype=D),
        solver=SOLVERS[solver](),
        max_iter=500,
        rtol=1e-11,
        atol=1e-13,
        subset=subset,
    )
    assert result.status.tolist() == [int(Status.CONVERGED)] * B
    torch.testing.assert_close(result.state, star, rtol=0.0, atol=1e-8)
    if subset:  # a sample that converged early stopped costing evaluations
        assert int(result.nstep.min()) < result.n_calls or problem == "linear"


def _no_fixed_point(s, i, k):
    """``F(s) = 2|s| + 1 > s`` everywhere: no fixed point, and the iterates run away."""
    return 2.0 * s.abs() + 1.0, {}


def _translation(s, i, k):
    """``F(s) = s + 1``: no fixed point, the residual never shrinks."""
    return s + 1.0, {}


@pytest.mark.parametrize("subset", [True, False], ids=["subset", "masked"])
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_non_contractive_maps_do_not_report_convergence(solver, subset):
    for map_fn in (_no_fixed_point, _translation):
        result = fixed_point(
            map_fn,
            torch.zeros(B, N, dtype=D),
            solver=SOLVERS[solver](),
            max_iter=60,
            rtol=1e-8,
            atol=1e-10,
            subset=subset,
        )
        assert not bool((result.status == int(Status.CONVERGED)).any()), map_fn.__name__
    runaway = fixed_point(
        _no_fixed_point, torch.zeros(B, N, dtype=D), solver=DampedIteration(), max_iter=60
    )
    assert runaway.status.tolist() == [int(Status.DIVERGED)] * B


def test_nonfinite_sample_is_reported_and_the_rest_converge():
    def map_fn(s, i, k):
        out = 0.5 * s + 1.0
        return torch.where((i == 1).unsqueeze(1), out * float("nan"), out), {}

    result = fixed_point(map_fn, torch.zeros(3, 2, dtype=D), rtol=1e-10, atol=1e-12)
    assert result.status.tolist() == [0, int(Status.NONFINITE), 0]


@pytest.mark.parametrize("subset", [True, False])
def test_stepping_the_engine_from_outside_is_fixed_point(subset):
    """A caller's own loop over init/step/terminate/freeze gives fixed_point's result exactly."""
    map_fn, _ = _per_sample_rates()
    termination = Termination(rtol=1e-9, atol=0.0, blocks=(2, 4), block_scale=(0.5, 1.0))
    engine = FixedPointEngine(map_fn, termination=termination, subset=subset)
    state = engine.init(torch.zeros(B, N, dtype=D))
    for k in range(80):
        state = engine.step(state)
        state = engine.freeze(state, *engine.terminate(state, final=k == 79))
        if not engine.running(state):
            break
    mine = engine.result(state)
    ref = fixed_point(
        map_fn,
        torch.zeros(B, N, dtype=D),
        max_iter=80,
        rtol=1e-9,
        atol=0.0,
        blocks=(2, 4),
        block_scale=(0.5, 1.0),
        subset=subset,
    )
    for name in ("state", "residuals", "status", "nstep", "fallbacks"):
        assert torch.equal(getattr(mine, name), getattr(ref, name)), name
    assert mine.n_calls == ref.n_calls


def test_termination_counts_only_trusted_peaks():
    """A peak test's reference ignores iterates whose tested blocks were far from settled."""
    term = Termination(
        rtol=0.1, atol=0.0, blocks=(1, 1), tested_blocks=(True, False), peak_tests=("g",)
    )
    state = torch.ones(2, 2, dtype=D)
    ts = term.init(state)
    res = torch.tensor([[5.0, 0.0], [0.0, 0.0]], dtype=D)  # row 0 unsettled
    aux = {"g": torch.tensor([100.0, 100.0], dtype=D)}
    ts = term.observe(ts, state, res, res.norm(dim=1), aux)
    assert ts.peaks["g"].tolist() == [0.0, 100.0]
    later = {"g": torch.tensor([5.0, 5.0], dtype=D)}
    finite = torch.ones(2, dtype=torch.bool)
    assert term.converged(ts, torch.zeros(2, 2, dtype=D), later, finite).tolist() == [False, True]


def test_best_so_far_returns_the_best_iterate_of_unconverged_samples():
    best = BestSoFar(DampedIteration(), score=lambda res, state_rms, aux: res[:, 0])
    plain = fixed_point(
        lambda s, i, k: (-1.5 * s + 1, {}),
        torch.zeros(2, 1, dtype=D),
        solver=DampedIteration(),
        max_iter=6,
        divergence=1e30,
    )
    kept = fixed_point(
        lambda s, i, k: (-1.5 * s + 1, {}),
        torch.zeros(2, 1, dtype=D),
        solver=best,
        max_iter=6,
        divergence=1e30,
    )
    assert kept.status.tolist() == plain.status.tolist() == [1, 1]
    assert kept.state.flatten().tolist() == [1.0, 1.0]  # F(0): the lowest residual
    assert float(plain.state.abs().max()) > 3.0  # the last iterate: worse


def test_get_solver_rejects_options_the_solver_ignores():
    with pytest.raises(ValueError, match="memory"):
        get_solver("damped", memory=8)
    with pytest.raises(ValueError, match="^m: "):
        get_solver("anderson", m=8)
    with pytest.raises(ValueError, match="memory"):
        get_solver(Anderson(), memory=3)
    assert get_solver("anderson", memory=3, kind="I").kind == "I"


def test_the_default_anderson_kind_is_one():
    torchdeq_solver = pytest.importorskip("jiio_ext.adapters.torchdeq").jiio_solver
    default = inspect.signature(torchdeq_solver).parameters["kind"].default
    assert default == Anderson().kind == inspect.signature(Anderson).parameters["kind"].default


def test_z0_is_keyword_only():
    p = make_problem()
    for entry in (solve_joint, solve_nested):
        with pytest.raises(TypeError, match="positional"):
            entry(p.f, p.objective, p.x0(), p.z0())
    with pytest.raises(TypeError, match="z0"):
        solve_joint(p.f, p.objective, p.x0())


def test_warm_start_and_mu0_together_are_rejected():
    p = make_problem()
    first = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, max_iter=30)
    with pytest.raises(ValueError, match="mu0"):
        solve_joint(p.f, p.objective, p.x0(), warm_start=first, mu0=first.mu, max_iter=5)
    again = solve_joint(p.f, p.objective, first.x, warm_start=first, step_size=0.3, max_iter=5)
    assert again.z.shape == first.z.shape


def test_solve_joint_and_solve_nested_give_the_same_callback_keys():
    p = make_problem()
    keys = {}
    for name, entry, options in (
        ("joint", solve_joint, {"step_size": 0.3, "max_iter": 3}),
        ("nested", solve_nested, {"step_size": 0.3, "max_iter": 3}),
    ):
        seen = []
        entry(
            p.f,
            p.objective,
            p.x0(),
            z0=p.z0(),
            callback=lambda k, info, seen=seen: seen.append(info),
            **options,
        )
        keys[name] = set(seen[0])
        state = seen[0]["state"]
        assert state.shape == (p.batch, 5 + 3 + 5) and seen[0]["residuals"].shape == (p.batch, 3)
    assert keys["joint"] == keys["nested"]
    assert {"index", "state", "residuals", "objective", "stationarity"} <= keys["nested"]


def test_a_best_so_far_solver_is_accepted_by_both_entry_points():
    p = make_problem()
    best = BestSoFar(Anderson(), score=lambda res, state_rms, aux: res[:, 0])
    joint = solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), solver=best, step_size=0.3)
    nested = solve_nested(
        p.f, p.objective, p.x0(), z0=p.z0(), inner_solver=best, step_size=0.3, max_iter=5
    )
    assert joint.success and joint.info["solver"] == "anderson"
    assert nested.z.shape == joint.z.shape
