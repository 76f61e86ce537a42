"""Implicit backward passes of the higher adapter: adjoint fixed points and the DEQ's IFT hook.

Internal to :mod:`jiio_ext.adapters.higher`. The hook and the adjoint solve are the core's
one IFT mechanism (:func:`jiio_ext.grad.attach_implicit`, :func:`jiio_ext.grad.
solve_adjoint`); this module adds the adapter's settings and Neumann first phase
(:class:`AdjointSolve`), the switch that turns hooks off (:class:`Gate`), the ``vmap``
rule and :func:`rank_above`, which keeps each product of an adjoint solve from walking the
graph of the adapted parameters.

Example:
    >>> import torch
    >>> solve = AdjointSolve(max_iter=50, rtol=1e-8, atol=1e-12)
    >>> w = solve.solve(lambda w: 0.5 * w, torch.ones(1, 2), "example")  # w = 0.5 w + 1
    >>> torch.allclose(w, torch.full((1, 2), 2.0))
    True
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jiio_ext.grad import attach_implicit, solve_adjoint
from jiio_ext.solution import Status
from jiio_ext.solvers import Anderson

__all__ = [
    "AdjointSolve",
    "Gate",
    "ModelBackward",
    "attach_ift",
    "attach_ift_vmapped",
    "rank_above",
]


class Gate:
    """Switches the implicit-backward hooks of one forward off while the adapter differentiates.

    Example:
        >>> gate = Gate()
        >>> with gate.off():
        ...     gate.active
        False
    """

    def __init__(self) -> None:
        self.active = True

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        """Hooks pass gradients through unchanged inside this block."""
        self.active = False
        try:
            yield
        finally:
            self.active = True


@dataclass(frozen=True)
class ModelBackward:
    """A DEQ's own backward settings: torchdeq's ``b_max_iter``, ``b_tol`` and ``b_stop_mode``.

    The adjoint of that DEQ is solved no tighter than the model's own IFT backward would
    solve it: at most ``max_iter`` products, and a row may stop once its residual
    ``||w⁺ − w||`` is below ``tol`` (``relative``: below ``tol · ||w⁺||``), torchdeq's
    per-sample test. The defaults loosen nothing.

    Example:
        >>> from torchdeq import get_deq
        >>> ModelBackward.of(get_deq(b_max_iter=20, b_tol=1e-3))
        ModelBackward(max_iter=20, tol=0.001, relative=False)
    """

    max_iter: int | None = None
    tol: float = 0.0
    relative: bool = False

    @classmethod
    def of(cls, deq: Any) -> ModelBackward:
        """The settings of a torchdeq ``DEQBase`` (the defaults for anything else)."""
        max_iter, tol = getattr(deq, "b_max_iter", None), getattr(deq, "b_tol", None)
        mode = getattr(deq, "b_stop_mode", "abs")
        valid_iter = isinstance(max_iter, int) and not isinstance(max_iter, bool) and max_iter > 0
        valid_tol = isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0
        return cls(
            max_iter if valid_iter else None,
            float(tol) if valid_tol and mode in ("abs", "rel") else 0.0,
            mode == "rel",
        )

    @staticmethod
    def tightest(settings: Sequence[ModelBackward]) -> ModelBackward:
        """One adjoint system over several DEQs' states: the largest budget, the tightest test.

        Example:
            >>> ModelBackward.tightest([ModelBackward(20, 1e-3), ModelBackward(40, 1e-4)])
            ModelBackward(max_iter=40, tol=0.0001, relative=False)
        """
        if not settings:
            return ModelBackward()
        budgets = [s.max_iter for s in settings]
        budget = None if None in budgets else max(budgets)
        if len({s.relative for s in settings}) > 1:
            return ModelBackward(budget)
        return ModelBackward(budget, min(s.tol for s in settings), settings[0].relative)


@dataclass
class AdjointSolve:
    """Settings of the adjoint fixed points solved in backward passes.

    Example:
        >>> AdjointSolve(max_iter=10, rtol=1e-6, atol=1e-10).max_iter
        10
    """

    max_iter: int
    rtol: float
    atol: float
    method: str = "anderson"

    def solve(
        self,
        vjp: Callable[[torch.Tensor], torch.Tensor],
        v: torch.Tensor,
        what: str,
        floor: torch.Tensor | None = None,
        model: ModelBackward | None = None,
    ):
        """Solve ``w = vjp(w) + v`` row by row; warn about rows that did not converge.

        ``method="neumann"`` iterates ``w ← vjp(w) + v`` (the Neumann series: no mixing
        overhead, fast for a contractive DEQ) and hands over to Anderson, warm-started, when
        a step does not shrink the residual or the budget's first half is spent.

        ``floor`` (per row): a relative tolerance below which the rows need not go, the
        relative residual of the forward fixed point they belong to (:func:`attach_ift`): an
        implicit gradient at a fixed point known to that accuracy is no more accurate for a
        tighter adjoint, so each row stops at ``max(rtol, floor)``.

        ``model``: the DEQ's own backward settings (:class:`ModelBackward`); a row also stops
        once it meets the model's own test, and where the model's budget is below
        ``max_iter`` the solve takes at most that many products in all (otherwise, as
        before, the Anderson phase has ``max_iter`` of its own).
        """
        model = model or ModelBackward()
        budget = self.max_iter if model.max_iter is None else min(self.max_iter, model.max_iter)
        rtol = v.new_full((v.shape[0],), self.rtol)
        if floor is not None:
            rtol = torch.maximum(rtol, floor.to(v))
        if model.relative:
            rtol = rtol.clamp_min(model.tol)
        # absolute test in norm units (the Neumann phase) and in RMS units (Anderson's)
        atol = max(self.atol * math.sqrt(v.shape[1]), 0.0 if model.relative else model.tol)
        start, used, active = v, 0, v.shape[0]
        if self.method == "neumann":
            start, active, used = self._neumann(vjp, v, rtol, atol, budget)
            if not active:
                return start
        failed = active
        capped = budget < self.max_iter  # the DEQ's own budget counts every product
        left = budget - used if capped else self.max_iter
        if left > 0:
            result = solve_adjoint(
                vjp,
                v,
                start,
                solver=Anderson(memory=5, kind="II"),
                max_iter=left,
                rtol=float(rtol.min()),
                atol=atol / math.sqrt(max(1, v.shape[1])),
            )
            start = result.state
            failed = int((result.status != Status.CONVERGED).sum())
        if failed and capped:  # the model's own budget: one constant message
            warnings.warn(
                f"{what}: the adjoint stopped at the DEQ's own b_max_iter ({budget} products) "
                "before its tolerance, as the model's own backward would",
                RuntimeWarning,
                stacklevel=4,
            )
        elif failed:
            warnings.warn(
                f"{what}: adjoint fixed point did not converge for {failed} row(s) in "
                f"{self.max_iter} iterations",
                RuntimeWarning,
                stacklevel=4,
            )
        return start

    def _neumann(
        self, vjp, v: torch.Tensor, rtol: torch.Tensor, atol: float, budget: int
    ) -> tuple[torch.Tensor, int, int]:
        """Plain iteration; a row is frozen once converged (as the Anderson solve does).

        Returns ``(w, rows still active, products taken)``; it stops early when a step shrinks
        an active row's residual by less than 10 % (Anderson should take over).
        """
        w, previous = v, None
        active = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
        steps = max(1, budget // 2)
        for k in range(steps):
            nxt = vjp(w) + v
            resid = (nxt - w).norm(dim=1)
            w = torch.where(active[:, None], nxt, w)
            done = resid <= atol + rtol * nxt.norm(dim=1)
            slow = previous is not None and bool((active & ~done & (resid > 0.9 * previous)).any())
            active &= ~done
            if slow or not bool(active.any()):
                return w, int(active.sum()), k + 1
            previous = resid
        return w, int(active.sum()), steps


def attach_ift(
    state: tuple[torch.Tensor, ...],
    image: tuple[torch.Tensor, ...],
    gate: Gate,
    backward: AdjointSolve,
    lead: int = 1,
    model: ModelBackward | None = None,
) -> tuple[torch.Tensor, ...]:
    """``image = f(state)`` at a fixed point, with an implicit (IFT) backward per DEQ sample.

    The first ``lead`` dimensions of every tensor index the samples (2 under ``vmap``: tasks
    and the DEQ's batch); each sample is one row of the adjoint solve, which stops at the
    relative tolerance ``max(backward.rtol, r)``, ``r`` the sample's relative fixed-point
    residual ``||f(state) − state|| / ||f(state)||``, or once it meets the DEQ's own backward
    test ``model``, within the DEQ's own budget (see :meth:`AdjointSolve.solve`).

    Example:
        >>> import torch
        >>> z = torch.full((1, 2), 2.0, requires_grad=True)  # at the fixed point z* = 2 θ
        >>> theta = torch.ones(1, 2, requires_grad=True)
        >>> image = (0.5 * z + theta,)
        >>> out = attach_ift((z,), image, Gate(), AdjointSolve(50, 1e-10, 1e-12))
        >>> out[0].sum().backward()
        >>> theta.grad  # dz*/dθ = 2
        tensor([[2., 2.]])
    """
    samples = math.prod(image[0].shape[:lead])
    with torch.no_grad():  # the fixed point's own accuracy: the adjoint need not exceed it
        gap = torch.cat([(i - z).reshape(samples, -1) for i, z in zip(image, state)], dim=1)
        size = torch.cat([i.reshape(samples, -1) for i in image], dim=1).norm(dim=1)
        residual = gap.norm(dim=1) / size.clamp_min(torch.finfo(size.dtype).tiny)

    def solve(vjp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor) -> torch.Tensor | None:
        if not gate.active:
            return None
        return backward.solve(vjp, v, "DEQ backward", residual, model)

    return attach_implicit(state, image, solve, lead=lead)


class _VmappedIFT(torch.autograd.Function):
    """:func:`attach_ift` inside ``torch.func.vmap``: applied once to the physical batch."""

    @staticmethod
    def forward(count: int, gate: Gate, backward: AdjointSolve, model, *tensors: torch.Tensor):
        return tuple(t.clone() for t in tensors[:count])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        """Nothing to save: only the vmap rule is used."""

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor):
        raise RuntimeError("attach_ift_vmapped: only valid inside torch.func.vmap")

    @staticmethod
    def vmap(info: Any, in_dims: tuple, count: int, gate: Gate, backward, model, *tensors):
        dims = in_dims[4:]
        if any(d != 0 for d in dims[count:]):
            raise RuntimeError("attach_ift_vmapped: the DEQ states must be batched along dim 0")
        if any(d is None for d in dims[:count]):
            raise RuntimeError("attach_ift_vmapped: the DEQ images must be batched")
        image = tuple(t.movedim(d, 0) for t, d in zip(tensors[:count], dims[:count]))
        out = attach_ift(tuple(tensors[count:]), image, gate, backward, 2, model)
        return out, (0,) * count


def attach_ift_vmapped(
    state: tuple[torch.Tensor, ...],
    image: tuple[torch.Tensor, ...],
    gate: Gate,
    backward: AdjointSolve,
    model: ModelBackward | None = None,
) -> tuple[torch.Tensor, ...]:
    """:func:`attach_ift` for per-task tensors inside ``torch.func.vmap`` (one batched solve).

    Example:
        >>> import torch
        >>> from torch.func import vmap
        >>> z = torch.full((3, 1, 2), 2.0, requires_grad=True)  # 3 tasks, 1 sample each, at z*
        >>> theta = torch.ones(3, 1, 2, requires_grad=True)
        >>> solve = AdjointSolve(50, 1e-10, 1e-12)
        >>> def task(z, theta):
        ...     return attach_ift_vmapped((z,), (0.5 * z + theta,), Gate(), solve)[0]
        >>> vmap(task)(z, theta).sum().backward()
        >>> theta.grad.flatten().tolist()
        [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    """
    return _VmappedIFT.apply(len(image), gate, backward, model, *image, *state)


class _RankAbove(torch.autograd.Function):
    """Identity on ``state`` whose graph node is ranked above ``anchors`` (no gradient to them)."""

    @staticmethod
    def forward(ctx: Any, state: torch.Tensor, *anchors: torch.Tensor) -> torch.Tensor:
        ctx.anchors = len(anchors)
        return state.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        return (grad, *([None] * ctx.anchors))


def rank_above(state: torch.Tensor, anchors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``state`` (same values and gradient) as a graph node ranked above ``anchors``' graphs.

    Each product of an adjoint solve is ``torch.autograd.grad(f(state), state, w)``. With
    ``state`` a leaf, autograd walks the whole graph behind ``f(state)`` before every product,
    including the adapted parameters' graphs that the DEQ's function captured (after ``K``
    unrolled steps, ``K`` steps' double-backward graphs: the product's cost grows with ``K``).
    autograd skips the nodes whose topological number is below that of the inputs, so the
    same state behind an identity node that also takes the adapted tensors as (gradient-free)
    inputs makes it skip their graphs. Nothing computed changes.

    Args:
        state: a DEQ state (a leaf requiring grad).
        anchors: the tensors whose graphs the products should not walk.

    Returns:
        ``state`` behind the ranking node (``state`` itself when no anchor has a graph).

    Example:
        >>> import torch
        >>> theta = torch.ones(3, requires_grad=True)
        >>> deep = theta
        >>> for _ in range(50):  # a long graph behind the parameter
        ...     deep = deep * 1.0
        >>> z = rank_above(torch.zeros(3, requires_grad=True), [deep])
        >>> image = torch.tanh(z) + deep  # f(z) capturing the deep parameter
        >>> torch.autograd.grad(image, z, torch.ones(3))[0].tolist()
        [1.0, 1.0, 1.0]
    """
    anchors = [a for a in anchors if a.grad_fn is not None]
    if not anchors:
        return state
    return _RankAbove.apply(state, *anchors)
