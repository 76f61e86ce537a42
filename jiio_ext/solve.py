"""JIIO's entry point, :func:`solve_joint`: forward, adjoint and input solved as one fixed point.

It minimises per-sample objectives ``objective(z*(x), x)`` over ``x`` in a constraint set,
where ``z*(x) = f(z*(x), x)``, and returns a :class:`~jiio_ext.solution.JointSolution`; the
nested baseline with the same contract is :func:`jiio_ext.nested.solve_nested`.

Example:
    >>> import torch
    >>> from jiio_ext import solve_joint
    >>> W = 0.5 * torch.eye(3, dtype=torch.float64)
    >>> f = lambda z, x: torch.tanh(z @ W + x)
    >>> target = torch.full((2, 3), 0.3, dtype=torch.float64)
    >>> objective = lambda z, x: (z - target).pow(2).sum(dim=1)
    >>> x0 = torch.zeros(2, 3, dtype=torch.float64)
    >>> sol = solve_joint(f, objective, x0, z0=torch.zeros_like(x0), step_size=0.1, max_iter=300,
    ...                   rtol=1e-8, atol=1e-10)
    >>> sol.success, bool(sol.objective.max() < 1e-12)
    (True, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from jiio_ext.augmented import (
    AugmentedMap,
    Objective,
    Targets,
)
from jiio_ext.constraints import Constraint
from jiio_ext.grad import GradMode, get_grad_mode
from jiio_ext.layout import State, as_tuple
from jiio_ext.schedules import Schedule, as_schedule
from jiio_ext.solution import JointSolution, Status
from jiio_ext.solvers import (
    Anderson,
    BestSoFar,
    DampedIteration,
    fixed_point,
    get_solver,
)
from jiio_ext.steps import StepRule, get_step_rule
from jiio_ext.updates import Adaptive, GradientStep, InputUpdate
from jiio_ext.validate import (
    check_fraction,
    check_positive,
    check_problem,
    check_state_like,
    check_targets,
)

__all__ = ["solve_joint"]

Fn = Callable[[State, torch.Tensor], State]


def _progress_bar(progress: object, total: int, desc: str):
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False)
    if progress is False or progress is None:
        return None
    if not all(callable(getattr(progress, name, None)) for name in ("update", "set_postfix")):
        raise TypeError(
            f"progress: expected True, False, None or a tqdm bar, got {type(progress).__name__}"
        )
    return progress


def _check_trajectory(trajectory: Sequence[int], max_iter: object) -> list[int]:
    """The iterations of ``trajectory``, each an integer in ``[0, max_iter)``."""
    if not isinstance(trajectory, (list, tuple, range)) or any(
        isinstance(k, bool) or not isinstance(k, int) for k in trajectory
    ):
        raise TypeError(f"trajectory: expected a sequence of iteration numbers, got {trajectory!r}")
    if isinstance(max_iter, int):
        outside = [k for k in trajectory if not 0 <= k < max_iter]
        if outside:
            raise ValueError(
                f"trajectory: iterations {outside} lie outside [0, max_iter={max_iter})"
            )
    return list(trajectory)


def _zeros_like_state(state: State) -> State:
    parts = tuple(torch.zeros_like(p) for p in as_tuple(state))
    return parts if isinstance(state, tuple) else parts[0]


def _detach(state: State) -> State:
    parts = tuple(p.detach() for p in as_tuple(state))
    return parts if isinstance(state, tuple) else parts[0]


def _normalise_state(state: State) -> State:
    return tuple(state) if isinstance(state, list) else state


def _objective_score(atol: float):
    """Best-iterate score: the objective where the forward residual is small, else inf."""

    def score(res: torch.Tensor, state_rms: torch.Tensor, aux: dict) -> torch.Tensor:
        bound = 1e-3 * state_rms[:, 0]
        eligible = res[:, 0] <= (bound + atol if atol else bound)
        return aux["objective"].masked_fill(~eligible, float("inf"))

    return score


def _input_update(step_size: object, rule: StepRule) -> InputUpdate:
    """The x-update of ``solve_joint`` from its ``step_size`` and ``step_rule`` arguments."""
    if isinstance(step_size, InputUpdate):
        if getattr(rule, "__name__", "") != "raw_step":
            raise ValueError(
                f"step_size: {type(step_size).__name__} works on the raw gradient; with "
                "step_rule='sign' or 'l2' give a number or a schedule (PGD's alpha)"
            )
        return step_size
    if step_size is None:
        if getattr(rule, "__name__", "") != "raw_step":
            raise ValueError(
                "step_size: step_rule='sign' and 'l2' take a hand-set step size (PGD's alpha); "
                "got None"
            )
        return Adaptive()
    return GradientStep(as_schedule(step_size, "step_size"), rule)


# forward or adjoint residual (relative to its block's RMS) above which an unconverged sample
# is UNSETTLED
_UNSETTLED = 0.1


def _mark_unsettled(
    status: torch.Tensor,
    joint_residual: torch.Tensor,
    z_flat: torch.Tensor,
    mu_residual: torch.Tensor,
    mu_flat: torch.Tensor,
) -> torch.Tensor:
    """``MAX_ITER`` becomes ``UNSETTLED`` where the joint forward or adjoint residual stayed large.

    Either one means the input steps followed inexact gradients: a forward state off its fixed
    point, or an adjoint that had not caught up with the Jacobian. The adjoint's scale is its
    own RMS, floored at the batch median: a sample whose objective is flat (a saturated loss)
    has a tiny adjoint, and its relative residual says little about the steps. Measured on the
    user classifiers' L∞ attacks: 69 of 128 images flagged on the non-contractive one (where
    JIIO is weaker than PGD), none on the contractive ones.
    """
    unsettled = joint_residual > _UNSETTLED * z_flat.pow(2).mean(dim=1).sqrt()
    mu_scale = mu_flat.pow(2).mean(dim=1).sqrt()
    mu_scale = torch.maximum(mu_scale, mu_scale.median())
    unsettled |= mu_residual > _UNSETTLED * mu_scale
    unsettled &= status == int(Status.MAX_ITER)
    return torch.where(unsettled, int(Status.UNSETTLED), status)


# relative tolerance of the final settle when the joint solve has none (rtol=0, a fixed
# budget such as the attacks'): without it the settle ran its whole budget for nothing
_SETTLE_RTOL = 1e-4


def _settle_rtol(rtol: float, dtype: torch.dtype) -> float:
    """The relative tolerance of the final settle of ``z``.

    ``rtol`` when the solve has one; else 1e-4, or ``√ε`` of the state's dtype where that is
    smaller (1.5e-8 in float64), so that a float64 objective is still reported to ~1e-8.
    """
    if rtol > 0:
        return rtol
    return min(_SETTLE_RTOL, math.sqrt(torch.finfo(dtype).eps))


def _settle(
    aug: AugmentedMap,
    z: State,
    x: torch.Tensor,
    mu: State,
    status: torch.Tensor,
    rtol: float,
    max_iter: int,
) -> tuple[State, torch.Tensor, torch.Tensor]:
    """``z`` at its fixed point for the returned ``x``, and the objective there.

    Converged samples are already there; the others get a forward-only Anderson solve at
    their returned ``x``, warm-started from their last ``z`` (``f`` evaluations only, no VJP:
    cheap next to the joint iterations), to :func:`_settle_rtol` of ``rtol`` (each sample stops
    as soon as its residual is below it). One batched evaluation then gives the objective at
    ``(z*(x), x)``, the value the solution reports.

    Returns:
        The settled state, its per-sample forward residual (NaN where not re-solved) and the
        objective.
    """
    layout = aug.z_layout
    z_flat = layout.flatten(z)
    residual = torch.full_like(status, float("nan"), dtype=z_flat.dtype)
    todo = torch.nonzero(status != int(Status.CONVERGED)).flatten()
    if todo.numel():
        x_rows = x.index_select(0, todo)

        def forward(flat: torch.Tensor, index: torch.Tensor, k: int):
            out = aug.layer(layout.unflatten(flat), x_rows.index_select(0, index))
            aug.f_evals += 1
            return layout.flatten(out), {}

        settled = fixed_point(
            forward,
            z_flat.index_select(0, todo),
            solver=Anderson(),
            max_iter=max(20, max_iter // 4),
            rtol=_settle_rtol(rtol, z_flat.dtype),
            atol=0.0,
        )
        finite = torch.isfinite(settled.state).all(dim=1)
        rows = todo[finite]
        z_flat = z_flat.index_copy(0, rows, settled.state[finite])
        residual = residual.index_copy(0, rows, settled.residuals[finite, 0])
    z = layout.unflatten(z_flat)
    _, loss, _, _ = aug.evaluate(z, x, mu, None)
    return z, residual, loss


def solve_joint(
    f: Fn,
    objective: Objective,
    x0: torch.Tensor,
    *,
    z0: State | None = None,
    mu0: State | None = None,
    warm_start: JointSolution | None = None,
    targets: Targets = None,
    constraint: Constraint | None = None,
    step_size: float | Schedule | InputUpdate | None = None,
    step_rule: str | StepRule = "raw",
    alpha_z: float = 0.8,
    alpha_mu: float = 0.6,
    solver: str | Anderson | DampedIteration | BestSoFar | None = None,
    max_iter: int = 150,
    rtol: float = 1e-4,
    atol: float = 0.0,
    subset: bool = True,
    check_every: int = 1,
    divergence: float = 1e4,
    callback: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    progress: object = False,
    trajectory: Sequence[int] = (),
    best_iterate: bool = True,
    grad: str | GradMode | None = None,
    throw: bool = False,
    autocast: torch.dtype | None = None,
    has_aux: bool = False,
) -> JointSolution:
    """Solve forward fixed point, adjoint fixed point and input optimisation as one fixed point.

    Args:
        f: the DEQ layer ``f(z, x) -> z`` (tensor or tuple state, batch first). Samples must
            not interact (no batch statistics), so that each converges on its own. With
            ``has_aux=True``, ``f(z, x) -> (z_next, aux)``.
        objective: per-sample losses to minimise, ``objective(z, x) -> (B,)``, or
            ``objective(z, x, targets)`` when ``targets`` is given; with ``has_aux=True``,
            ``objective(z, x, aux)`` (``objective(z, x, aux, targets)``).
        x0: initial input ``(B, ...)``; projected onto ``constraint`` first.
        z0: initial state (tensor or tuple of tensors), keyword-only; required unless
            ``warm_start`` is given.
        mu0: initial adjoint (default zeros); not with ``warm_start``.
        warm_start: a previous solution: the solve starts from its ``z`` (in place of
            ``z0``, which may then be left out) and its ``mu``; giving ``mu0`` as well is
            an error, since one of the two would be ignored.
        targets: per-sample data (tensor or tuple, batch first) handed to the objective and
            sliced with the active samples.
        constraint: set for ``x`` (``L2Ball``, ``LinfBall``, ``Box``, intersections).
        step_size: the input update. ``None`` (default): :class:`~jiio_ext.updates.Adaptive`,
            an Adam-style preconditioned step that needs no tuning (it does not depend on the
            scale of the objective or the units of ``x``); an ``Adaptive(...)`` instance to
            change its settings; or a hand-set ``α_x``, a number or a schedule (``Constant``,
            ``StepSwitch``, ``Cosine``), applied to ``step_rule(g)``.
        step_rule: ``"raw"``, ``"sign"`` (L∞ attacks) or ``"l2"`` (L2 attacks); the sign and
            L2 rules need a hand-set ``step_size`` (PGD's ``alpha``).
        alpha_z: damping of the forward block, in (0, 1].
        alpha_mu: damping of the adjoint block, in (0, 1].
        solver: ``"anderson"``, ``"damped"`` or a solver instance. ``None`` (default): damped
            iteration with the adaptive update (whose own per-sample state Anderson's linear
            model does not fit: measured worse on the development decoders), Anderson with a
            hand-set step.
        max_iter: iteration budget (each iteration is one ``f`` and one VJP).
        rtol: relative tolerance: a sample is ``CONVERGED`` when its forward and adjoint
            residuals are below ``rtol`` times the RMS of ``z`` and ``μ``, and its projected
            gradient (:meth:`~jiio_ext.augmented.AugmentedMap.stationarity`) below ``rtol``
            times the largest it has been, whatever the step size. The final settle of ``z``
            at the returned ``x`` (for the reported objective) stops at ``rtol`` too, or,
            when ``rtol`` is 0 (a fixed budget, as the attacks run), at 1e-4 relative
            (float32; 1.5e-8 in float64): ``info["settle_rtol"]``.
        atol: absolute floor added to every test (default 0, so that the result does not
            depend on the scale of the objective).
        subset: evaluate only still-active samples (frozen ones cost nothing).
        check_every: test convergence every this many iterations.
        divergence: a sample whose residual exceeds ``divergence × max(initial residual,
            1)`` (in the balanced metric) is marked diverged.
        callback: ``callback(k, info)`` after every iteration.
        progress: ``True`` for a tqdm bar with live residual and objective, or a bar.
        trajectory: iterations at which to keep ``(z, x)`` for trajectory regularisation.
        best_iterate: a sample that does not converge returns the iterate with the lowest
            objective among those whose forward residual is below ``1e-3`` relative (the
            reference code's choice), instead of its last iterate; converged samples are
            unaffected. On the latent benchmark's 200-iteration budget this lowered the final
            objective from 7.2e-3 to 2.6e-4 (Anderson's iterates are not monotone). A
            ``solver`` already wrapped in :class:`~jiio_ext.solvers.BestSoFar` keeps its own
            score.
        grad: ``None`` (detached result), ``"envelope"`` or ``"implicit"`` (see
            :mod:`jiio_ext.grad`): make ``z`` (and for implicit also ``x``) differentiable
            with respect to the parameters of ``f``, the objective and ``targets``.
        throw: raise :class:`~jiio_ext.solution.JointSolveError` if a sample fails (and from
            ``.backward()`` when a sample's backward does not converge, see ``grad``).
        autocast: ``torch.bfloat16`` or ``torch.float16`` to evaluate ``f`` (and its VJP)
            under ``torch.autocast``; the solver state, the objective, Anderson and the
            residuals stay in the state's dtype (see docs/results.md for its accuracy/speed).
        has_aux: ``f`` returns ``(z_next, aux)``, ``aux`` a pytree of tensors with the batch
            as leading dimension (for instance a model's output computed from ``z``), handed
            to the objective so that it is computed once per iteration. Frozen samples keep
            their last ``aux`` in the batch the objective sees. ``solution.aux`` is the aux at
            the returned ``(z, x)`` (differentiable like ``z`` under ``grad``).

    Returns:
        A :class:`~jiio_ext.solution.JointSolution`; ``x`` always lies in the constraint set.

    Raises:
        TypeError, ValueError: for malformed arguments (the message names the argument).
        JointSolveError: under ``throw=True`` when any sample did not converge.

    Example:
        >>> import torch
        >>> from jiio_ext import L2Ball, solve_joint
        >>> f = lambda z, x: 0.5 * torch.tanh(z) + x
        >>> target = torch.ones(4, 2)
        >>> sol = solve_joint(f, lambda z, x: (z - target).pow(2).sum(1), torch.zeros(4, 2),
        ...                   z0=torch.zeros(4, 2), constraint=L2Ball(radius=0.1), step_size=0.3)
        >>> bool((sol.x.norm(dim=1) <= 0.1 + 1e-6).all())
        True
    """
    if warm_start is not None:
        if not isinstance(warm_start, JointSolution):
            raise TypeError(
                f"warm_start: expected a JointSolution, got {type(warm_start).__name__}"
            )
        if mu0 is not None:
            raise ValueError(
                "mu0: warm_start already gives the initial adjoint (its mu); pass one of the two"
            )
        z0, mu0 = _detach(warm_start.z), _detach(warm_start.mu)
    elif z0 is None:
        raise TypeError("z0: solve_joint needs an initial state z0= (or a warm_start)")
    z0 = _normalise_state(z0)
    previous_peak = None if warm_start is None else warm_start.info.get("stationarity_peak")
    peak_start = (
        {"stationarity": previous_peak}
        if isinstance(previous_peak, torch.Tensor) and previous_peak.shape == x0.shape[:1]
        else None
    )
    check_problem(x0, z0, constraint)
    check_state_like(mu0, z0, "mu0")
    check_targets(targets, x0)
    check_positive(divergence, "divergence")
    alpha_z = check_fraction(alpha_z, "alpha_z")
    alpha_mu = check_fraction(alpha_mu, "alpha_mu")
    rule = get_step_rule(step_rule)
    grad_mode = get_grad_mode(grad)
    if grad_mode is not None:
        grad_mode.check_step_rule(step_rule)
    update = _input_update(step_size, rule)
    if solver is None:
        solver = "damped" if isinstance(update, Adaptive) else "anderson"
    engine = get_solver(solver)
    trajectory = _check_trajectory(trajectory, max_iter)
    if autocast not in (None, torch.bfloat16, torch.float16):
        raise ValueError(
            f"autocast: expected None, torch.bfloat16 or torch.float16, got {autocast!r}"
        )

    aug = AugmentedMap(
        f,
        objective,
        z0,
        x0,
        constraint=constraint,
        update=update,
        max_iter=max_iter,
        alpha_z=alpha_z,
        alpha_mu=alpha_mu,
        targets=targets,
        autocast=autocast,
        has_aux=has_aux,
    )
    x_start = aug.project(x0.detach(), None)
    mu_start = _zeros_like_state(z0) if mu0 is None else mu0
    state0 = aug.join(_detach(z0), x_start, _detach(mu_start))
    bar = _progress_bar(progress, max_iter, "jiio")
    started = time.perf_counter()
    try:
        with torch.no_grad():
            result = fixed_point(
                aug,
                state0,
                solver=(
                    BestSoFar(engine, _objective_score(atol))
                    if best_iterate and not isinstance(engine, BestSoFar)
                    else engine
                ),
                max_iter=max_iter,
                rtol=rtol,
                atol=atol,
                blocks=aug.blocks,
                block_names=("z", "x", "mu"),
                block_scale=(alpha_z, 1.0, alpha_mu),
                subset=subset,
                check_every=check_every,
                divergence=divergence,
                callback=callback,
                progress=bar,
                snapshot_at=trajectory,
                tested_blocks=(True, False, True),
                peak_tests=("stationarity",),
                peak_start=peak_start,
                mixed_blocks=(True, not isinstance(update, Adaptive), True),
            )
    finally:
        if bar is not None and progress is True:
            bar.close()
    z, x, mu = aug.split(result.state)
    x = aug.project(x, None)
    last_objective = result.aux.get("objective")
    with torch.no_grad():
        z, z_residual, objective_at_x = _settle(aug, z, x, mu, result.status, rtol, max_iter)
    residuals = {name: result.residuals[:, i] for i, name in enumerate(("z", "x", "mu"))}
    joint_z_residual = residuals["z"]
    residuals["z"] = torch.where(torch.isfinite(z_residual), z_residual, joint_z_residual)
    status = _mark_unsettled(
        result.status,
        joint_z_residual,
        aug.z_layout.flatten(z),
        residuals["mu"],
        aug.z_layout.flatten(mu),
    )
    trajectory_points = {}
    for k, snap in result.snapshots.items():
        zk, xk, _ = aug.split(snap)
        trajectory_points[k] = (zk, xk)
    solution = JointSolution(
        z=z,
        x=x,
        mu=mu,
        objective=objective_at_x,
        status=status,
        nstep=result.nstep,
        residuals=residuals,
        traces=result.traces,
        f_evals=aug.f_evals,
        vjps=aug.vjps,
        trajectory=trajectory_points,
        aux=aug.aux,
        layer=aug.layer,
        info={
            "method": "joint",
            "solver": engine.name,
            "time_s": time.perf_counter() - started,
            "fallbacks": result.fallbacks,
            "stationarity": result.aux.get("stationarity"),
            "stationarity_peak": result.peaks.get("stationarity"),
            "objective_last_iterate": last_objective,
            "settle_rtol": _settle_rtol(rtol, x.dtype),
            "residual_z_joint": joint_z_residual,
        },
    )
    if grad_mode is not None:
        grad_mode.attach(aug, solution, throw=throw)
        if has_aux:
            solution.aux = _aux_at(aug, solution)
    if throw:
        solution.raise_if_failed()
    return solution


def _aux_at(aug: AugmentedMap, solution: JointSolution) -> object:
    """The aux of ``f`` at the solution's differentiable ``(z, x)`` (one more evaluation)."""
    with torch.enable_grad():
        _, aux = aug.f(solution.z, solution.x)
    aug.f_evals += 1
    solution.f_evals = aug.f_evals
    return aux
