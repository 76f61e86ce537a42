"""torchdeq's solver protocol for this package's engine: the ``'jiio'`` forward/backward solver.

Internal to :mod:`jiio_ext.adapters.torchdeq`, which registers :func:`jiio_solver` with
torchdeq (``get_deq(f_solver='jiio', b_solver='jiio')``).

Example:
    >>> import torch
    >>> z, _, info = jiio_solver(lambda z: 0.5 * z + 1.0, torch.zeros(2, 1), tol=1e-10)
    >>> z.flatten().tolist(), info["status"].tolist()
    ([2.0, 2.0], [0, 0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from jiio_ext.solvers import Anderson, BestSoFar, fixed_point
from jiio_ext.validate import check_positive

__all__ = ["jiio_solver"]


def jiio_solver(
    func: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    max_iter: int = 50,
    tol: float = 1e-3,
    stop_mode: str = "abs",
    indexing: Sequence[int] | None = None,
    m: int = 5,
    lam: float = 1e-4,
    kind: str = "II",
    safeguard: float | None = 10.0,
    **kwargs: Any,
):
    """This package's safeguarded per-sample Anderson under torchdeq's solver contract.

    Registered in torchdeq as ``'jiio'`` (``get_deq(f_solver='jiio', b_solver='jiio')``).
    Each sample stops updating once its residual meets ``tol`` (``stop_mode='abs'``:
    ``||f(z) - z|| <= tol``; ``'rel'``: relative to ``||z||``, while ``rel_trace`` reports it
    relative to ``||f(z)||`` as torchdeq does); the solve ends when all have. A sample that
    runs out of budget returns its lowest-residual iterate, as torchdeq's solvers do.

    Args:
        func: the fixed-point map on tensors shaped like ``x0``.
        x0: initial state ``(B, ...)``.
        max_iter: iteration budget.
        tol: tolerance.
        stop_mode: ``'abs'`` or ``'rel'``.
        indexing: iteration counts at which to return intermediate states.
        m: Anderson memory.
        lam: ridge regularisation.
        kind: ``'II'`` (default) or ``'I'`` Anderson (see :class:`~jiio_ext.solvers.Anderson`).
        safeguard: residual-growth factor that rejects an Anderson step (``None``: off).
        **kwargs: other torchdeq solver options (ignored, as torchdeq's own solvers do).

    Returns:
        ``(z, states_at_indexing, info)`` with torchdeq's ``SolverStat`` keys
        (``abs_lowest``, ``rel_lowest``, ``abs_trace``, ``rel_trace``, ``nstep``,
        ``sradius``) plus ``status`` (per-sample :class:`~jiio_ext.solution.Status`).

    Example:
        >>> import torch
        >>> z, _, info = jiio_solver(lambda z: 0.5 * z + 1.0, torch.zeros(3, 2), tol=1e-8)
        >>> torch.allclose(z, torch.full((3, 2), 2.0)), info["nstep"].tolist()
        (True, [5.0, 5.0, 5.0])
    """
    from torchdeq.solver.stat import SolverStat

    if stop_mode not in ("abs", "rel"):
        raise ValueError(f"stop_mode: expected 'abs' or 'rel', got {stop_mode!r}")
    if not isinstance(x0, torch.Tensor) or x0.dim() < 1 or x0.shape[0] == 0:
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"x0: expected a non-empty batch (B, ...), got {shape}")
    check_positive(tol, "tol", allow_zero=True)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected an integer >= 1, got {max_iter!r}")
    batch = x0.shape[0]
    flat0 = x0.reshape(batch, -1)
    dim = flat0.shape[1]

    def step(s: torch.Tensor, index: torch.Tensor, k: int):
        mapped = func(s.view_as(x0)).reshape(batch, -1)
        return mapped, {"fnorm": torch.linalg.vector_norm(mapped, dim=1)}

    wanted = sorted({int(i) for i in (indexing or [])})
    with torch.no_grad():  # torchdeq's solvers run without a graph
        result = fixed_point(
            step,
            flat0,
            # like torchdeq's solvers, a sample out of budget returns its lowest residual
            solver=BestSoFar(
                Anderson(memory=m, kind=kind, ridge=lam, safeguard=safeguard),
                score=lambda res, state_rms, aux: res[:, 0],
            ),
            max_iter=max_iter,
            rtol=tol if stop_mode == "rel" else 0.0,
            atol=tol / dim**0.5 if stop_mode == "abs" else 0.0,
            subset=False,
            snapshot_at=[i for i in wanted if 0 < i < max_iter],
        )
    abs_trace = result.traces["residual_b0"] * dim**0.5  # (T, B) RMS -> norm
    abs_trace = _fill_forward(abs_trace).transpose(0, 1)
    fnorm = _fill_forward(result.traces["fnorm"]).transpose(0, 1)
    rel_trace = abs_trace / fnorm.clamp_min(torch.finfo(abs_trace.dtype).tiny)
    states = [(result.snapshots.get(i, result.state)).view_as(x0) for i in wanted if i > 0]
    info = SolverStat(
        abs_lowest=abs_trace.min(dim=1).values,
        rel_lowest=rel_trace.min(dim=1).values,
        abs_trace=abs_trace,
        rel_trace=rel_trace,
        nstep=result.nstep.to(x0.dtype),
    )
    info["status"] = result.status
    return result.state.view_as(x0), states, info


def _fill_forward(trace: torch.Tensor) -> torch.Tensor:
    """Replace NaN (frozen samples) by the sample's last value, along the time axis."""
    out = trace.clone()
    for k in range(1, out.shape[0]):
        out[k] = torch.where(torch.isnan(out[k]), out[k - 1], out[k])
    return out
