"""The forward solve at a fixed input: ``z*(x) = f(z*(x), x)`` with ``x`` held constant.

:func:`solve_forward` is the DEQ forward pass of this package's engine, for the places that
need the fixed point at a given input (settling a state at an attack's answer, a Jacobian
penalty at the training input) and, with ``grad="envelope"``, its implicit backward
warm-started from a joint solution's adjoint. It returns a
:class:`~jiio_ext.solution.JointSolution` with ``x`` unchanged, so that the results of
:func:`~jiio_ext.solve.solve_joint` and of this function are used the same way.

Example:
    >>> import torch
    >>> from jiio_ext.forward import solve_forward
    >>> sol = solve_forward(lambda z, x: 0.5 * z + x, torch.ones(2, 3), rtol=1e-10)
    >>> bool(torch.allclose(sol.z, torch.full((2, 3), 2.0))), sol.status.tolist()
    (True, [0, 0])
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from jiio_ext.augmented import check_f_output
from jiio_ext.grad import EnvelopeGrad, GradMode, get_grad_mode
from jiio_ext.layout import Layout, State, as_tuple
from jiio_ext.solution import JointSolution
from jiio_ext.solvers import Anderson, DampedIteration, fixed_point, get_solver
from jiio_ext.validate import check_problem, check_state_like

__all__ = ["solve_forward"]


def _zeros_like(state: State) -> State:
    parts = tuple(torch.zeros_like(p) for p in as_tuple(state))
    return parts if isinstance(state, tuple) else parts[0]


def _detached(state: State) -> State:
    parts = tuple(p.detach() for p in as_tuple(state))
    return parts if isinstance(state, (tuple, list)) else parts[0]


def solve_forward(
    f: Callable,
    x: torch.Tensor,
    *,
    z0: State | None = None,
    warm_start: JointSolution | None = None,
    has_aux: bool = False,
    solver: str | Anderson | DampedIteration = "anderson",
    max_iter: int = 100,
    rtol: float = 1e-4,
    atol: float = 0.0,
    grad: str | GradMode | None = None,
    throw: bool = False,
) -> JointSolution:
    """The fixed point ``z* = f(z*, x)`` at a fixed input, per sample.

    Args:
        f: the DEQ layer ``f(z, x) -> z``; with ``has_aux=True``, ``f(z, x) -> (z, aux)``.
        x: the input ``(B, ...)``, held constant (detached).
        z0: initial state (default: zeros shaped like ``x``).
        warm_start: a joint solution at (or near) ``x``: its ``z`` replaces ``z0`` and its
            ``mu`` becomes the solution's ``mu``, the warm start of the envelope backward.
        has_aux: ``f`` also returns an auxiliary output; ``solution.aux`` is its value at
            ``z*`` (differentiable in ``f``'s parameters under ``grad="envelope"``).
        solver: ``"anderson"`` (default), ``"damped"`` or a solver instance.
        max_iter: iteration budget (one ``f`` evaluation each).
        rtol: relative tolerance of the forward residual (RMS of ``f(z) - z`` against ``z``).
        atol: absolute tolerance (RMS units).
        grad: ``None`` (detached) or ``"envelope"`` (an :class:`~jiio_ext.grad.EnvelopeGrad`):
            ``z`` attached to ``f``'s parameters with an implicit backward.
        throw: raise :class:`~jiio_ext.solution.JointSolveError` if a sample did not
            converge.

    Returns:
        A :class:`~jiio_ext.solution.JointSolution` with ``x`` as given, ``z`` the fixed
        point, ``mu`` the warm start's adjoint (zeros without one), ``objective`` NaN (there
        is none), ``residuals["z"]`` the forward residual and ``info["method"] == "forward"``.

    Raises:
        TypeError, ValueError: for malformed arguments, or ``grad="implicit"`` (there is no
            input optimisation to differentiate here).
        JointSolveError: under ``throw=True`` when a sample did not converge.

    Example:
        >>> import torch
        >>> W = torch.nn.Parameter(torch.tensor([[0.5]]))
        >>> sol = solve_forward(lambda z, x: z @ W + x, torch.ones(1, 1), rtol=1e-10,
        ...                     grad="envelope")
        >>> sol.z.sum().backward()  # z* = x / (1 - W): dz*/dW = x / (1 - W)^2 = 4
        >>> round(float(W.grad), 4)
        4.0
    """
    if warm_start is not None:
        if not isinstance(warm_start, JointSolution):
            raise TypeError(
                f"warm_start: expected a JointSolution, got {type(warm_start).__name__}"
            )
        z0 = warm_start.z
    if z0 is None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
        z0 = torch.zeros_like(x)
    z0 = tuple(z0) if isinstance(z0, list) else z0
    check_problem(x, z0, None, x_name="x")
    mu0 = None if warm_start is None else _detached(warm_start.mu)
    check_state_like(mu0, z0, "warm_start.mu")
    grad_mode = get_grad_mode(grad)
    if grad_mode is not None and not isinstance(grad_mode, EnvelopeGrad):
        raise ValueError(
            f"grad: solve_forward holds x fixed; expected None or 'envelope', got {grad!r}"
        )
    engine = get_solver(solver)
    layout = Layout.of(z0)
    x = x.detach()
    batch = x.shape[0]
    f_evals = 0

    def layer(z: State, x_in: torch.Tensor) -> State:
        out = f(z, x_in)
        if not has_aux:
            return out
        if not isinstance(out, tuple) or len(out) != 2:
            raise ValueError("f: with has_aux=True, expected a pair (z_next, aux)")
        return out[0]

    def step(flat: torch.Tensor, index: torch.Tensor, k: int):
        nonlocal f_evals
        rows_x = x.index_select(0, index)
        out = layer(layout.unflatten(flat), rows_x)
        check_f_output(out, layout, rows_x.shape[0], like=rows_x)
        f_evals += 1
        return layout.flatten(out), {}

    started = time.perf_counter()
    with torch.no_grad():
        result = fixed_point(
            step,
            layout.flatten(_detached(z0)),
            solver=engine,
            max_iter=max_iter,
            rtol=rtol,
            atol=atol,
        )
    z = layout.unflatten(result.state)
    solution = JointSolution(
        z=z,
        x=x,
        mu=_zeros_like(z) if mu0 is None else mu0,
        objective=torch.full((batch,), float("nan"), dtype=x.dtype, device=x.device),
        status=result.status,
        nstep=result.nstep,
        residuals={"z": result.residuals[:, 0], "x": torch.zeros_like(result.residuals[:, 0])},
        traces=result.traces,
        layer=layer,
        info={"method": "forward", "solver": engine.name, "time_s": 0.0},
    )
    if grad_mode is not None:
        grad_mode.attach_layer(layer, layout, solution, throw=throw)
    if has_aux:
        with torch.set_grad_enabled(grad_mode is not None):
            _, solution.aux = f(solution.z, x)
        f_evals += 1
    solution.f_evals = f_evals + (0 if grad_mode is None else 1)
    solution.info["time_s"] = time.perf_counter() - started
    if throw:
        solution.raise_if_failed()
    return solution
