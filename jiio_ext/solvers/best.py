"""Best-so-far solver wrapper: a sample that does not converge returns its best iterate.

``BestSoFar(solver, score)`` iterates exactly like ``solver``; the engine additionally keeps,
per sample, the iterate with the lowest ``score(res, state_rms, aux)`` (``inf``: ineligible)
and returns it in place of the last one for every sample that ends without converging.

Example:
    >>> import torch
    >>> from jiio_ext.solvers import BestSoFar, DampedIteration, fixed_point
    >>> best = BestSoFar(DampedIteration(), score=lambda res, state_rms, aux: res[:, 0])
    >>> result = fixed_point(lambda s, i, k: (-1.5 * s + 1, {}), torch.zeros(2, 1),
    ...                      solver=best, max_iter=5, divergence=1e30)
    >>> result.status.tolist(), result.state.flatten().tolist()  # F(0): the lowest residual
    ([1, 1], [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from jiio_ext.solvers.anderson import Anderson, DampedIteration

__all__ = ["BestIterate", "BestSoFar", "Score"]

# score(scaled block residuals (b, n_blocks), peak state RMS (b, n_blocks), aux) -> (b,)
Score = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


class BestSoFar:
    """Wrap a solver so that unconverged samples return their best-scoring iterate.

    Args:
        solver: the wrapped :class:`~jiio_ext.solvers.Anderson` or
            :class:`~jiio_ext.solvers.DampedIteration`; its iterates are unchanged.
        score: ``score(res, state_rms, aux) -> (b,)``, lower is better, ``inf`` ineligible.
            A sample's last iterate is kept when its objective (``aux["objective"]``, if
            any) is no worse than the best one's.

    Example:
        >>> from jiio_ext.solvers import DampedIteration
        >>> BestSoFar(DampedIteration(), score=lambda r, s, a: r[:, 0]).solver.name
        'damped'
    """

    def __init__(self, solver: Anderson | DampedIteration, score: Score) -> None:
        if isinstance(solver, BestSoFar):
            raise TypeError("solver: already a BestSoFar")
        if not callable(score):
            raise TypeError(f"score: expected a callable, got {type(score).__name__}")
        self.solver = solver
        self.score = score

    @property
    def name(self) -> str:
        """The wrapped solver's name."""
        return self.solver.name

    def init(self, state: torch.Tensor, resid: torch.Tensor, weights: torch.Tensor | None = None):
        """The wrapped solver's buffers."""
        return self.solver.init(state, resid, weights)

    def step(self, buffers, state: torch.Tensor, resid: torch.Tensor, norm: torch.Tensor):
        """The wrapped solver's next iterate."""
        return self.solver.step(buffers, state, resid, norm)

    def select(self, buffers, rows: torch.Tensor):
        """The wrapped solver's buffers for ``rows``."""
        return self.solver.select(buffers, rows)


class BestIterate:
    """Per-row best-scoring iterate (its map output, residuals and aux values).

    Example:
        >>> import torch
        >>> best = BestIterate()
        >>> ok = torch.ones(2, dtype=torch.bool)
        >>> for score, value in ((torch.tensor([1.0, 3.0]), 1.0), (torch.tensor([2.0, 1.0]), 2.0)):
        ...     best.update(score, ok, torch.full((2, 1), value), torch.zeros(2, 1), {})
        >>> best.state.flatten().tolist()
        [1.0, 2.0]
    """

    def __init__(self) -> None:
        self.score: torch.Tensor | None = None
        self.state: torch.Tensor | None = None
        self.res: torch.Tensor | None = None
        self.aux: dict[str, torch.Tensor] = {}

    def update(
        self,
        score: torch.Tensor,
        finite: torch.Tensor,
        mapped: torch.Tensor,
        res: torch.Tensor,
        aux: dict[str, torch.Tensor],
    ) -> None:
        """Keep ``mapped`` (and its residuals and aux) for the rows whose score improved."""
        score = score.masked_fill(~finite, float("inf"))
        if self.score is None:
            self.score, self.state, self.res = score, mapped, res
            self.aux = {key: value.detach() for key, value in aux.items()}
            return
        better = score < self.score
        if not bool(better.any()):
            return
        rows = better.unsqueeze(1)
        self.state = torch.where(rows, mapped, self.state)
        self.res = torch.where(rows, res, self.res)
        self.aux = {k: torch.where(better, aux[k].detach(), v) for k, v in self.aux.items()}
        self.score = torch.where(better, score, self.score)

    def substitute(
        self,
        wanted: torch.Tensor,
        state: torch.Tensor,
        res: torch.Tensor,
        aux: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(state, res, aux)`` with the best iterate in the ``wanted`` rows that have one."""
        use = wanted & torch.isfinite(self.score)
        if "objective" in aux:  # never trade the last iterate for a worse one
            use = use & (self.score < aux["objective"].detach())
        if not bool(use.any()):
            return state, res, aux
        rows = use.unsqueeze(1)
        aux = {k: torch.where(use, self.aux[k], v.detach()) for k, v in aux.items()}
        return torch.where(rows, self.state, state), torch.where(rows, self.res, res), aux

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep``."""
        if self.score is None:
            return
        self.score = self.score.index_select(0, keep)
        self.state = self.state.index_select(0, keep)
        self.res = self.res.index_select(0, keep)
        self.aux = {k: v.index_select(0, keep) for k, v in self.aux.items()}
