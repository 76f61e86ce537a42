"""The naive baseline, :func:`solve_nested`: a gradient step on ``x`` around full inner solves.

Each outer step solves the forward fixed point ``z*(x) = f(z*(x), x)`` and the adjoint fixed
point to tolerance (warm-started from the previous step), then takes one step on ``x``. It
has the contract of :func:`jiio_ext.solve.solve_joint` (per-sample objectives, constraints,
a :class:`~jiio_ext.solution.JointSolution` back) and is the oracle the joint solve is tested
against.

Example:
    >>> import torch
    >>> from jiio_ext import solve_nested
    >>> W = 0.5 * torch.eye(3, dtype=torch.float64)
    >>> f = lambda z, x: torch.tanh(z @ W + x)
    >>> target = torch.full((2, 3), 0.3, dtype=torch.float64)
    >>> objective = lambda z, x: (z - target).pow(2).sum(dim=1)
    >>> x0 = torch.zeros(2, 3, dtype=torch.float64)
    >>> sol = solve_nested(f, objective, x0, z0=torch.zeros_like(x0), step_size=0.5, max_iter=200)
    >>> bool(sol.objective.max() < 1e-5), sol.x.shape
    (True, torch.Size([2, 3]))
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from jiio_ext.augmented import (
    AugmentedMap,
    Objective,
    Targets,
    call_objective,
    check_f_output,
)
from jiio_ext.constraints import Constraint
from jiio_ext.layout import Layout, State, as_tuple
from jiio_ext.schedules import Schedule, as_schedule
from jiio_ext.solution import JointSolution, Status
from jiio_ext.solve import (
    Fn,
    _detach,
    _normalise_state,
    _progress_bar,
    _zeros_like_state,
)
from jiio_ext.solvers import (
    Anderson,
    BestSoFar,
    DampedIteration,
    Termination,
    fixed_point,
    get_solver,
    status_codes,
)
from jiio_ext.steps import StepRule, get_step_rule
from jiio_ext.updates import GradientStep
from jiio_ext.validate import (
    check_positive,
    check_problem,
    check_state_like,
    check_targets,
)

__all__ = ["solve_nested"]

# solve_nested's DIVERGED test: the state's RMS grew past this factor times (1 + its start)
_NESTED_DIVERGENCE = 1e4


def _inner_solve(
    solver: object,
    map_fn,
    start: torch.Tensor,
    *,
    max_iter: int,
    rtol: float,
    atol: float,
    subset: bool,
) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """One inner fixed point: ``(state, batched map calls, per-sample status, RMS residual)``.

    ``solver`` is one of this package's solvers, or a torchdeq-style solver function
    ``solver(func, z0, max_iter=..., tol=..., stop_mode="rel") -> (z, _, info)`` (for instance
    ``torchdeq.solver.get_solver("anderson")``), run with relative tolerance ``rtol``.
    """
    if isinstance(solver, (Anderson, DampedIteration, BestSoFar)):
        result = fixed_point(
            map_fn, start, solver=solver, max_iter=max_iter, rtol=rtol, atol=atol, subset=subset
        )
        return result.state, result.n_calls, result.status, result.residuals[:, 0]
    calls = 0
    index = torch.arange(start.shape[0], device=start.device)

    def func(v: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return map_fn(v.reshape(start.shape), index, calls)[0]

    z, _, info = solver(func, start, max_iter=max_iter, tol=rtol, stop_mode="rel")
    lowest = info.get("rel_lowest", torch.zeros(start.shape[0]))
    status = torch.where(
        lowest.to(start.device) <= rtol, int(Status.CONVERGED), int(Status.MAX_ITER)
    )
    # torchdeq's abs_lowest is a norm: its RMS, as the other solvers report
    lowest_abs = info.get("abs_lowest")
    residual = (
        torch.full((start.shape[0],), float("nan"), dtype=start.dtype, device=start.device)
        if lowest_abs is None
        else lowest_abs.to(start) / start.shape[1] ** 0.5
    )
    return z.reshape(start.shape), calls, status.long(), residual


def _adjoint_and_input_grad(
    f: Fn,
    objective: Objective,
    z: State,
    x: torch.Tensor,
    mu0: State,
    targets: Targets,
    engine: Anderson | DampedIteration,
    max_iter: int,
    rtol: float,
    atol: float,
    layout: Layout,
) -> tuple[State, torch.Tensor, torch.Tensor, int, int, torch.Tensor]:
    """Adjoint fixed point at ``(z, x)`` and the input gradient.

    Returns:
        ``(μ, g_x, L, f_evals, vjps, adjoint RMS residual)``.
    """
    z_req = tuple(p.detach().requires_grad_() for p in as_tuple(z))
    z_arg = z_req if layout.is_tuple else z_req[0]
    x_req = x.detach().requires_grad_()
    with torch.enable_grad():
        z_out = f(z_arg, x_req)
        loss = call_objective(objective, z_arg, x_req, targets, None)
        out_flat = layout.flatten(z_out)
        grads = torch.autograd.grad(
            loss.sum(), [*z_req, x_req], allow_unused=True, retain_graph=True
        )
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [*z_req, x_req])]
    dl_dz = layout.flatten(tuple(grads[:-1]) if layout.is_tuple else grads[0])
    vjps = 1
    z_flat_inputs = list(z_req)

    def adjoint_map(mu_flat: torch.Tensor, index: torch.Tensor, k: int):
        nonlocal vjps
        with torch.enable_grad():
            jt_mu = torch.autograd.grad(out_flat, z_flat_inputs, mu_flat, retain_graph=True)
        vjps += 1
        return layout.flatten(jt_mu if layout.is_tuple else jt_mu[0]) + dl_dz, {}

    mu_flat, _, _, mu_residual = _inner_solve(
        engine,
        adjoint_map,
        layout.flatten(mu0).detach(),
        max_iter=max_iter,
        rtol=rtol,
        atol=atol,
        subset=False,
    )
    with torch.enable_grad():
        (fx_mu,) = torch.autograd.grad(out_flat, x_req, mu_flat, allow_unused=True)
    vjps += 1
    g_x = grads[-1] + (torch.zeros_like(x) if fx_mu is None else fx_mu)
    return layout.unflatten(mu_flat), g_x, loss.detach(), 1, vjps, mu_residual


def solve_nested(
    f: Fn,
    objective: Objective,
    x0: torch.Tensor,
    *,
    z0: State,
    mu0: State | None = None,
    targets: Targets = None,
    constraint: Constraint | None = None,
    optimizer: str = "adam",
    step_size: float | Schedule = 0.1,
    max_iter: int = 40,
    step_rule: str | StepRule = "raw",
    inner_solver: str | Anderson | DampedIteration | BestSoFar | Callable = "anderson",
    inner_max_iter: int = 50,
    inner_rtol: float = 1e-3,
    inner_atol: float = 1e-6,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    callback: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    progress: object = False,
    throw: bool = False,
) -> JointSolution:
    """Solve the same problem the naive way: an outer optimiser over full inner solves.

    Every outer step solves the forward fixed point ``z = f(z, x)`` and then the adjoint fixed
    point ``μ = (∂f/∂z)ᵀ μ + ∂L/∂z`` (both with the inner solver, warm-started from the
    previous step), forms ``∇ℓ(x) = ∂L/∂x + (∂f/∂x)ᵀ μ`` and takes one optimiser step on ``x``,
    projected onto the constraint. This is the baseline of the benchmarks and the oracle of
    the tests. Its final status comes from the same three residuals as :func:`solve_joint`
    (forward, adjoint, projected x-step with the last step size), measured at the end.

    Args:
        f: the DEQ layer ``f(z, x) -> z``.
        objective: per-sample losses ``objective(z, x[, targets]) -> (B,)``.
        x0: initial input.
        z0: initial state.
        mu0: initial adjoint (default zeros).
        targets: per-sample data for the objective.
        constraint: set for ``x``.
        optimizer: ``"adam"`` or ``"sgd"`` (projected after every step).
        step_size: the optimiser's learning rate (number or schedule).
        max_iter: number of outer steps.
        step_rule: ``"raw"``, ``"sign"`` or ``"l2"``, applied to the gradient before ``"sgd"``.
        inner_solver: solver of the forward and adjoint fixed points: ``"anderson"``,
            ``"damped"``, a solver instance, or a torchdeq solver function such as
            ``torchdeq.solver.get_solver("anderson")`` (then ``inner_rtol`` is its ``tol``
            with ``stop_mode="rel"``).
        inner_max_iter: iteration budget of each inner solve.
        inner_rtol: relative tolerance of the inner solves.
        inner_atol: absolute tolerance of the inner solves.
        rtol: tolerance of the final status test.
        atol: absolute tolerance of the final status test.
        callback: ``callback(step, info)`` after every outer step, with the keys of
            :func:`solve_joint`'s: the batch ``index``, the evaluated flat ``state``
            ``[z; x; μ]`` (the inner solutions at the step's ``x``), the block ``residuals``
            ``(B, 3)`` (forward and adjoint inner solves, RMS of the step taken on ``x``;
            NaN where a torchdeq solver gives none), ``objective`` and ``stationarity``.
        progress: ``True`` for a tqdm bar.
        throw: raise when a sample fails the final test.

    Returns:
        A :class:`~jiio_ext.solution.JointSolution` (``nstep`` counts outer steps).

    Example:
        >>> import torch
        >>> from jiio_ext import solve_nested
        >>> f = lambda z, x: 0.5 * torch.tanh(z) + x
        >>> target = torch.ones(3, 2)
        >>> sol = solve_nested(f, lambda z, x: (z - target).pow(2).sum(1), torch.zeros(3, 2),
        ...                    z0=torch.zeros(3, 2), optimizer="sgd", step_size=0.5,
        ...                    max_iter=60)
        >>> bool(sol.objective.max() < 1e-3)
        True
    """
    z0 = _normalise_state(z0)
    check_problem(x0, z0, constraint)
    check_state_like(mu0, z0, "mu0")
    check_targets(targets, x0)
    for name, value in (
        ("inner_rtol", inner_rtol),
        ("inner_atol", inner_atol),
        ("rtol", rtol),
        ("atol", atol),
    ):
        check_positive(value, name, allow_zero=True)
    if (
        isinstance(inner_max_iter, bool)
        or not isinstance(inner_max_iter, int)
        or inner_max_iter < 1
    ):
        raise ValueError(f"inner_max_iter: expected an integer >= 1, got {inner_max_iter!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {optimizer!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected an integer >= 1, got {max_iter!r}")
    schedule = as_schedule(step_size, "step_size")
    rule = get_step_rule(step_rule)
    if callable(inner_solver):
        engine = inner_solver
    else:
        try:
            engine = get_solver(inner_solver)
        except ValueError as err:
            raise ValueError(f"inner_{err}") from None
    layout = Layout.of(z0)
    project = (lambda v: v) if constraint is None else (lambda v: constraint.project(v, None))

    x = torch.nn.Parameter(project(x0.detach().clone()))
    opt = (
        torch.optim.Adam([x], lr=schedule(0, max_iter))
        if optimizer == "adam"
        else torch.optim.SGD([x], lr=schedule(0, max_iter))
    )
    z_flat = layout.flatten(_detach(z0)).clone()
    mu = _zeros_like_state(z0) if mu0 is None else _detach(mu0)
    traces: dict[str, list[torch.Tensor]] = {"objective": []}
    bar = _progress_bar(progress, max_iter, "nested")
    started = time.perf_counter()
    x_data = x.detach()

    def forward_map(flat: torch.Tensor, index: torch.Tensor, k: int):
        rows_x = x_data.index_select(0, index)
        z_out = f(layout.unflatten(flat), rows_x)
        check_f_output(z_out, layout, rows_x.shape[0], like=rows_x)
        return layout.flatten(z_out), {}

    counts = {"f_evals": 0, "vjps": 0}

    def inner_solves(z_start: torch.Tensor, x_now: torch.Tensor, mu_start: State):
        """Forward and adjoint fixed points at ``x_now``, warm-started; counts the work."""
        nonlocal x_data
        x_data = x_now
        with torch.no_grad():
            z_new, calls, status, z_residual = _inner_solve(
                engine,
                forward_map,
                z_start,
                max_iter=inner_max_iter,
                rtol=inner_rtol,
                atol=inner_atol,
                subset=True,
            )
        mu_new, g_x, loss, fe, vj, mu_residual = _adjoint_and_input_grad(
            f,
            objective,
            layout.unflatten(z_new),
            x_now,
            mu_start,
            targets,
            engine,
            inner_max_iter,
            inner_rtol,
            inner_atol,
            layout,
        )
        counts["f_evals"] += calls + fe
        counts["vjps"] += vj
        residual = torch.stack([z_residual, torch.zeros_like(z_residual), mu_residual], dim=1)
        return z_new, status, mu_new, g_x, loss, residual

    def stationarity(x_now: torch.Tensor, g_x: torch.Tensor, step: int) -> torch.Tensor:
        """Per-sample RMS of the projected gradient at the step's learning rate."""
        alpha = schedule(min(step, max_iter - 1), max_iter)
        moved = x_now - project(x_now - alpha * g_x)
        return (moved / alpha).flatten(1).pow(2).mean(dim=1).sqrt()

    peak = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    index = torch.arange(x0.shape[0], device=x0.device)
    try:
        for step in range(max_iter):
            x_before = x.detach().clone()
            z_flat, _, mu, g_x, loss, residual = inner_solves(z_flat, x_before, mu)
            stationary = stationarity(x_before, g_x, step)
            peak = torch.maximum(peak, stationary)
            traces["objective"].append(loss)
            for group in opt.param_groups:
                group["lr"] = schedule(step, max_iter)
            x.grad = rule(g_x) if optimizer == "sgd" else g_x
            opt.step()
            with torch.no_grad():
                x.copy_(project(x))
            if callback is not None:  # solve_joint's keys, at the point this step evaluated
                residual[:, 1] = (x.detach() - x_before).flatten(1).pow(2).mean(dim=1).sqrt()
                state = torch.cat([z_flat, x_before.flatten(1), layout.flatten(mu)], dim=1)
                callback(
                    step,
                    {
                        "index": index,
                        "state": state,
                        "residuals": residual,
                        "objective": loss,
                        "stationarity": stationary,
                    },
                )
            if bar is not None:
                bar.set_postfix(objective=f"{float(loss.mean()):.4g}")
                bar.update(1)
    finally:
        if bar is not None and progress is True:
            bar.close()

    # Final report: one more forward solve at the final x and the three residuals.
    x_final = x.detach().clone()
    z_flat, fwd_status, mu, g_final, _, _ = inner_solves(z_flat, x_final, mu)
    stationary = stationarity(x_final, g_final, max_iter - 1)
    z_final = layout.unflatten(z_flat)
    f_evals, vjps = counts["f_evals"], counts["vjps"]
    aug = AugmentedMap(
        f,
        objective,
        z0,
        x0,
        constraint=constraint,
        update=GradientStep(schedule, rule),
        max_iter=max_iter,
        alpha_z=1.0,
        alpha_mu=1.0,
        targets=targets,
    )
    flat = aug.join(z_final, x_final, mu)
    with torch.no_grad():
        mapped, loss = aug.apply(flat, None, max_iter - 1)
    f_evals += aug.f_evals
    vjps += aug.vjps
    # solve_joint's test (Termination) on the three residuals at the end: forward and adjoint
    # against the state, the projected gradient against its largest value over the steps
    term = Termination(
        rtol=rtol,
        atol=atol,
        blocks=aug.blocks,
        tested_blocks=(True, False, True),
        peak_tests=("stationarity",),
        divergence=None,
    )
    rms, res = term.residuals(mapped - flat)
    finite = torch.isfinite(rms).all(dim=1) & torch.isfinite(loss)
    aux = {"stationarity": stationary}
    ts = term.init(flat, {"stationarity": torch.maximum(peak, stationary)})
    ts = term.observe(ts, flat, res, rms.norm(dim=1), aux, finite)
    converged = term.converged(ts, res, aux, finite)
    residuals = {name: res[:, i] for i, name in enumerate(("z", "x", "mu"))}
    # a sample without a fixed point: its state grew by solve_joint's divergence factor (the
    # inner solves may each "converge" relatively on a state running away), or an inner solve
    # said so itself
    start_rms = layout.flatten(_detach(z0)).pow(2).mean(dim=1).sqrt()
    ran_away = ~(ts.state_peak[:, 0] <= _NESTED_DIVERGENCE * (1.0 + start_rms))
    status = status_codes(
        converged,
        ran_away | (fwd_status == Status.DIVERGED),
        finite & (fwd_status != Status.NONFINITE),
    )
    solution = JointSolution(
        z=z_final,
        x=x_final,
        mu=mu,
        objective=loss,
        status=status,
        nstep=torch.full_like(status, max_iter),
        residuals=residuals,
        traces={k: torch.stack(v) for k, v in traces.items()},
        f_evals=f_evals,
        vjps=vjps,
        info={"method": "nested", "optimizer": optimizer, "time_s": time.perf_counter() - started},
    )
    if throw:
        solution.raise_if_failed()
    return solution
