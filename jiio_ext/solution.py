"""Result types of the solvers: per-sample status codes and :class:`JointSolution`.

Example:
    >>> from jiio_ext.solution import Status
    >>> Status(0).name
    'CONVERGED'
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from jiio_ext.layout import State

__all__ = ["JointSolution", "JointSolveError", "Status", "status_summary"]


class Status(enum.IntEnum):
    """Per-sample outcome of a solve.

    Attributes:
        CONVERGED: every block residual fell below tolerance.
        MAX_ITER: the iteration budget ran out first.
        DIVERGED: the residual grew by more than the divergence factor.
        NONFINITE: the map produced NaN or infinity; the last finite iterate is returned.
        UNSETTLED: the budget ran out while the forward or the adjoint block was still more
            than 10 % of its RMS away from its fixed point, so the input steps followed
            inexact gradients:
            the answer may be far from optimal (an attack may be weak), not merely unfinished.

    Example:
        >>> import torch
        >>> status = torch.tensor([0, 1, 3])  # a solution's per-sample codes
        >>> [Status(int(code)).name for code in status]
        ['CONVERGED', 'MAX_ITER', 'NONFINITE']
        >>> (status == Status.CONVERGED).tolist()
        [True, False, False]
    """

    CONVERGED = 0
    MAX_ITER = 1
    DIVERGED = 2
    NONFINITE = 3
    UNSETTLED = 4


def status_summary(status: torch.Tensor) -> str:
    """One line counting the samples per status (what every ``summary()`` prints).

    Example:
        >>> import torch
        >>> status_summary(torch.tensor([0, 1, 0]))
        'CONVERGED: 2, MAX_ITER: 1 (of 3 samples)'
    """
    counts = torch.bincount(status.cpu(), minlength=len(Status))
    parts = [f"{s.name}: {int(counts[s])}" for s in Status if int(counts[s]) > 0]
    return f"{', '.join(parts)} (of {status.numel()} samples)"


class JointSolveError(RuntimeError):
    """Raised under ``throw=True`` when some sample did not converge; carries the solution.

    Example:
        >>> try:
        ...     raise JointSolveError("2 of 8 samples: MAX_ITER", solution=None)
        ... except JointSolveError as err:
        ...     print(err)
        2 of 8 samples: MAX_ITER
    """

    def __init__(self, message: str, solution: JointSolution | None) -> None:
        super().__init__(message)
        self.solution = solution


@dataclass
class JointSolution:
    """Solution of a joint (or nested) input-optimisation problem.

    Attributes:
        z: fixed point of the DEQ at ``x`` (tensor or tuple, like ``z0``).
        x: optimised input, always inside the constraint set.
        mu: adjoint state ``μ = (∂f/∂z)ᵀ μ + ∂L/∂z`` (same structure as ``z``).
        objective: per-sample objective at the returned ``x`` with ``z`` at its fixed point
            there ``(B,)`` (:func:`~jiio_ext.solve_joint` re-solves ``z`` for the samples that
            did not converge, to the relative tolerance ``info["settle_rtol"]``, and keeps the
            last joint iterate's value in ``info["objective_last_iterate"]``).
        status: per-sample :class:`Status` codes ``(B,)`` (int64).
        nstep: per-sample number of iterations (joint) or outer steps (nested) ``(B,)``.
        residuals: per-block residuals ``{"z", "x", "mu"}`` each ``(B,)``: RMS of
            ``f(z) - z``, of the x-step ``Π(x - α step(g)) - x``, and of ``∂z(L + <μ, f>) - μ``.
        traces: per-iteration traces ``(T, B)`` of each residual and of the objective (NaN
            where a sample was frozen).
        f_evals: number of batched evaluations of ``f``.
        vjps: number of batched vector-Jacobian products through ``f``.
        trajectory: ``{iteration: (z, x)}`` snapshots for trajectory regularisation.
        aux: the auxiliary output of ``f`` at the returned ``(z, x)`` (``has_aux=True``; the
            torchdeq adapter's model output), differentiable like ``z`` under ``grad=``;
            ``None`` otherwise.
        layer: the layer ``layer(z, x) -> z`` that was solved (``f`` without its aux), for
            :func:`~jiio_ext.regularize.trajectory_penalty`; ``None`` for nested solves.
        info: solver-specific extras (e.g. Anderson fallbacks, time).

    Example:
        >>> import torch
        >>> from jiio_ext import solve_joint
        >>> f = lambda z, x: 0.5 * torch.tanh(z) + x
        >>> objective = lambda z, x: (z - 1.0).pow(2).sum(1)
        >>> sol = solve_joint(f, objective, torch.zeros(2, 3), z0=torch.zeros(2, 3), step_size=0.3)
        >>> sol.success, sol.status.tolist(), sorted(sol.residuals)
        (True, [0, 0], ['mu', 'x', 'z'])
        >>> bool((sol.z - 1.0).abs().max() < 1e-3)  # x* makes the fixed point hit the target
        True
    """

    z: State
    x: torch.Tensor
    mu: State
    objective: torch.Tensor
    status: torch.Tensor
    nstep: torch.Tensor
    residuals: dict[str, torch.Tensor]
    traces: dict[str, torch.Tensor] = field(default_factory=dict)
    f_evals: int = 0
    vjps: int = 0
    trajectory: dict[int, tuple[State, torch.Tensor]] = field(default_factory=dict)
    aux: Any = None
    layer: Callable[[State, torch.Tensor], State] | None = field(default=None, repr=False)
    info: dict = field(default_factory=dict)

    @property
    def output(self) -> Any:
        """The torchdeq adapter's name for :attr:`aux`: the model's output at ``x``.

        Example:
            >>> import torch
            >>> zeros = torch.zeros(1, 1)
            >>> sol = JointSolution(z=zeros, x=zeros, mu=zeros, objective=torch.zeros(1),
            ...     status=torch.tensor([0]), nstep=torch.tensor([1]), residuals={}, aux=zeros)
            >>> sol.output is sol.aux
            True
        """
        return self.aux

    @property
    def converged(self) -> torch.Tensor:
        """Boolean ``(B,)``: which samples converged."""
        return self.status == Status.CONVERGED

    @property
    def success(self) -> bool:
        """Whether every sample converged."""
        return bool(self.converged.all())

    def summary(self) -> str:
        """One line counting the samples per status.

        Example:
            >>> import torch
            >>> zeros = torch.zeros(2, 1)
            >>> sol = JointSolution(z=zeros, x=zeros, mu=zeros, objective=torch.zeros(2),
            ...     status=torch.tensor([0, 1]), nstep=torch.tensor([3, 9]), residuals={})
            >>> sol.summary()
            'CONVERGED: 1, MAX_ITER: 1 (of 2 samples)'
        """
        return status_summary(self.status)

    def raise_if_failed(self) -> None:
        """Raise :class:`JointSolveError` if any sample did not converge.

        Example:
            >>> import torch
            >>> sol = JointSolution(z=torch.zeros(1, 1), x=torch.zeros(1, 1), mu=torch.zeros(1, 1),
            ...     objective=torch.zeros(1), status=torch.tensor([0]), nstep=torch.tensor([3]),
            ...     residuals={})
            >>> sol.raise_if_failed()
        """
        if not self.success:
            bad = torch.nonzero(~self.converged).flatten().tolist()
            shown = ", ".join(f"{i}: {Status(int(self.status[i])).name}" for i in bad[:10]) + (
                " ..." if len(bad) > 10 else ""
            )
            raise JointSolveError(
                f"solve failed for {len(bad)} sample(s) [{shown}]; {self.summary()}", self
            )
