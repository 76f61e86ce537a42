"""Jacobian regularisation: Hutchinson estimates of ``||∂f/∂z||_F²`` per sample.

Taken at a point of the joint trajectory ("trajectory regularisation") or at the solution, it
keeps ``f`` contractive where the joint iteration actually goes.

Example:
    >>> import torch
    >>> from jiio_ext.regularize import jacobian_penalty
    >>> W = 0.5 * torch.eye(4)
    >>> penalty = jacobian_penalty(lambda z, x: z @ W + x, torch.zeros(2, 4), torch.zeros(2, 4),
    ...                            n_probes=200, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(penalty, torch.full((2,), 0.25), rtol=0.2))
    True
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from jiio_ext.layout import Layout, State, as_tuple
from jiio_ext.solution import JointSolution

__all__ = ["jacobian_penalty", "random_trajectory_iteration", "trajectory_penalty"]


def jacobian_penalty(
    f: Callable[[State, torch.Tensor], State],
    z: State,
    x: torch.Tensor,
    *,
    n_probes: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample Hutchinson estimate of ``||∂f/∂z||_F² / dim(z)``, differentiable in θ.

    Args:
        f: the layer ``f(z, x)``.
        z: the point (detached inside).
        x: the input (detached inside).
        n_probes: number of Gaussian probe vectors.
        generator: random generator for the probes.

    Returns:
        ``(B,)`` estimates, with a graph to the parameters of ``f``.

    Example:
        >>> import torch
        >>> jacobian_penalty(lambda z, x: 0.0 * z + x, torch.ones(3, 2), torch.ones(3, 2)).tolist()
        [0.0, 0.0, 0.0]
    """
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes: expected an integer >= 1, got {n_probes!r}")
    layout = Layout.of(z)
    z_req = tuple(p.detach().requires_grad_() for p in as_tuple(z))
    z_arg = z_req if layout.is_tuple else z_req[0]
    with torch.enable_grad():
        out = layout.flatten(f(z_arg, x.detach()))
        total = out.new_zeros(out.shape[0])
        for _ in range(n_probes):
            probe = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
            grads = torch.autograd.grad(
                out, z_req, probe, create_graph=True, retain_graph=True, allow_unused=True
            )
            grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, z_req)]
            total = total + layout.flatten(tuple(grads)).pow(2).sum(dim=1)
    return total / (n_probes * layout.numel)


def random_trajectory_iteration(max_iter: int, low: int = 15) -> int:
    """A random iteration in ``[low, max_iter)`` (clipped to the budget), for ``trajectory=``.

    Example:
        >>> 15 <= random_trajectory_iteration(100) < 100
        True
    """
    low = min(low, max_iter - 1)
    return random.randrange(low, max_iter)


def trajectory_penalty(
    f: Callable[[State, torch.Tensor], State],
    solution: JointSolution,
    *,
    iteration: int | None = None,
    n_probes: int = 2,
) -> torch.Tensor:
    """Jacobian penalty at a recorded trajectory point of ``solution`` (or at the solution).

    Args:
        f: the layer.
        solution: a joint solution solved with ``trajectory=[...]``.
        iteration: which recorded iteration (default: the first recorded one, or the solution
            itself when none was recorded).
        n_probes: Hutchinson probes.

    Returns:
        ``(B,)`` penalties.

    Example:
        >>> import torch
        >>> from jiio_ext import solve_joint
        >>> f = lambda z, x: 0.5 * torch.tanh(z) + x
        >>> sol = solve_joint(f, lambda z, x: z.pow(2).sum(1), torch.ones(2, 3),
        ...                   z0=torch.zeros(2, 3), max_iter=20, trajectory=[5])
        >>> trajectory_penalty(f, sol).shape
        torch.Size([2])
    """
    if iteration is None:
        iteration = min(solution.trajectory) if solution.trajectory else None
    if iteration is None:
        z, x = solution.z, solution.x
    elif iteration not in solution.trajectory:
        raise ValueError(
            f"iteration: {iteration} was not recorded; recorded: {sorted(solution.trajectory)}"
        )
    else:
        z, x = solution.trajectory[iteration]
    return jacobian_penalty(f, z, x, n_probes=n_probes)
