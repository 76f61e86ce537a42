"""torchdeq's Anderson forward solve, re-implemented with an incremental Gram matrix.

Internal to :mod:`jiio_ext.adapters.higher`. A torchdeq DEQ whose forward solver is
torchdeq's ``anderson_solver`` is solved here with the **same algorithm and settings** (its
``f_max_iter`` / ``eval_f_max_iter``, ``f_tol``, ``f_stop_mode``; torchdeq's memory 6,
regularisation 1e-4, no damping, the lowest-residual image per sample returned, stopping
once every sample's current residual is below the tolerance). torchdeq recomputes every
residual column and the whole Gram matrix at every iteration; here the newest column and
its Gram row are the only new work, which roughly halves the cost of an iteration on small
convolutional DEQs (the function evaluations are the same). :func:`plain_anderson_budget`
says when a call can take this path (otherwise the DEQ's own forward runs).

Example:
    >>> import torch
    >>> z, info = anderson_solve(lambda z: 0.5 * z + 1.0, torch.zeros(2, 3), 50, 1e-8, "abs")
    >>> torch.allclose(z, torch.full((2, 3), 2.0)), int(info["nstep"].max()) < 50
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["anderson_solve", "plain_anderson_budget"]

MEMORY = 6  # torchdeq's anderson_solver defaults
LAM = 1e-4


def plain_anderson_budget(deq: Any, z_init: Any, args: tuple, kwargs: dict) -> int | None:
    """The iteration budget when ``deq(func, z_init)`` is one plain torchdeq Anderson solve.

    ``None`` when it is anything else (another solver, solver arguments in the call, a tuple
    state, several solver segments): the DEQ's own forward must run then.

    Example:
        >>> import torch
        >>> from torchdeq import get_deq
        >>> z = torch.zeros(1, 2)
        >>> plain_anderson_budget(get_deq(f_solver="anderson", f_max_iter=20), z, (), {})
        20
        >>> plain_anderson_budget(get_deq(f_solver="broyden"), z, (), {}) is None
        True
    """
    try:
        from torchdeq.core import DEQIndexing, DEQSliced
        from torchdeq.solver.anderson import anderson_solver
    except ImportError:  # pragma: no cover - exercised only without the deq extra
        return None
    if args or kwargs or not isinstance(z_init, torch.Tensor) or z_init.dim() < 1:
        return None
    if getattr(deq, "f_solver", None) is not anderson_solver:
        return None
    if getattr(deq, "f_stop_mode", None) not in ("abs", "rel"):
        return None
    if not isinstance(deq, (DEQIndexing, DEQSliced)):
        return None
    if not deq.training:
        budget = deq.eval_f_max_iter
    elif isinstance(deq, DEQSliced):  # one segment: one solve of f_max_iter
        segments = list(deq.indexing)
        budget = segments[0] if len(segments) == 1 else None
    else:  # DEQIndexing's training trajectory depends on where the solve stops
        return None
    return int(budget) if isinstance(budget, (int, float)) and budget >= 1 else None


def anderson_solve(
    func: Callable[[torch.Tensor], torch.Tensor],
    z_init: torch.Tensor,
    max_iter: int,
    tol: float,
    stop_mode: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Solve as torchdeq's ``anderson_solver(func, z_init, max_iter, tol, stop_mode)`` would.

    Without a graph (the adapter attaches its own implicit backward to the result).

    Args:
        func: the DEQ's function, on tensors shaped as ``z_init``.
        z_init: the initial state ``(B, ...)``.
        max_iter: number of function evaluations at most (torchdeq's count).
        tol: tolerance of the per-sample residual ``||f(x) − x||`` (``"rel"``: over
            ``||f(x)||``).
        stop_mode: ``"abs"`` or ``"rel"``.

    Returns:
        ``(z*, info)``: per sample the image ``f(x)`` of the lowest-residual iterate (``z_init``
        itself when ``max_iter < 3``, as torchdeq), and ``info`` with the per-sample
        ``abs_lowest``, ``rel_lowest`` and ``nstep`` (step of the lowest residual).

    Example:
        >>> import torch
        >>> z, info = anderson_solve(torch.cos, torch.zeros(4, 1), 30, 1e-4, "rel")
        >>> round(float(z[0, 0]), 4), float(info["rel_lowest"].max()) < 1e-4
        (0.7391, True)
    """
    with torch.no_grad():
        return _solve(func, z_init, max_iter, tol, stop_mode)


def _solve(func, z_init, max_iter, tol, stop_mode):
    shape = z_init.shape
    x0 = z_init.reshape(shape[0], -1) if z_init.dim() >= 2 else z_init.reshape(-1, 1)
    bsz, dim = x0.shape

    def f(x: torch.Tensor) -> torch.Tensor:
        return func(x.view(shape)).reshape(bsz, dim)

    # the images F and residuals G = F − X of the last MEMORY iterates (the mixing needs no X)
    F = x0.new_empty(bsz, MEMORY, dim)
    G = x0.new_empty(bsz, MEMORY, dim)
    gram = x0.new_zeros(bsz, MEMORY, MEMORY)  # G Gᵀ, a row per iteration
    F[:, 0] = f(x0)
    F[:, 1] = f(F[:, 0])
    G[:, 0], G[:, 1] = F[:, 0] - x0, F[:, 1] - F[:, 0]
    gram[:, :2, :2] = torch.bmm(G[:, :2], G[:, :2].transpose(1, 2))
    system = x0.new_zeros(bsz, MEMORY + 1, MEMORY + 1)
    system[:, 0, 1:] = system[:, 1:, 0] = 1
    rhs = x0.new_zeros(bsz, MEMORY + 1, 1)
    rhs[:, 0] = 1
    eye = LAM * torch.eye(MEMORY, dtype=x0.dtype, device=x0.device)
    huge = torch.full((bsz,), 1e8, dtype=x0.dtype, device=x0.device)
    lowest = {"abs": huge, "rel": huge.clone()}
    step = torch.zeros(bsz, dtype=torch.long, device=x0.device)
    traces: dict[str, list[torch.Tensor]] = {"abs": [huge], "rel": [huge]}
    best = x0
    for k in range(2, max_iter):
        n = min(k, MEMORY)
        system[:, 1 : n + 1, 1 : n + 1] = gram[:, :n, :n] + eye[:n, :n]
        alpha = torch.linalg.solve(system[:, : n + 1, : n + 1], rhs[:, : n + 1])[:, 1 : n + 1]
        j = k % MEMORY
        x = torch.bmm(alpha.transpose(1, 2), F[:, :n])[:, 0]
        fx = f(x)
        gx = fx - x
        F[:, j], G[:, j] = fx, gx
        # (B, 1, dim) × (B, dim, n): CPU bmm is several times faster in this orientation
        row = torch.bmm(gx[:, None], G[:, : n_after(k)].transpose(1, 2))[:, 0]
        gram[:, j, : n_after(k)] = row
        gram[:, : n_after(k), j] = row
        diffs = {"abs": gx.norm(dim=1)}
        diffs["rel"] = diffs["abs"] / (fx.norm(dim=1) + 1e-9)
        better = diffs[stop_mode] < lowest[stop_mode]
        best = torch.where(better[:, None], fx, best)
        step = torch.where(better, k + 1, step)
        for mode in ("abs", "rel"):
            lowest[mode] = torch.where(diffs[mode] < lowest[mode], diffs[mode], lowest[mode])
            traces[mode].append(diffs[mode])
        if float(diffs[stop_mode].max()) < tol:
            for mode in ("abs", "rel"):  # torchdeq pads the traces with the lowest values
                traces[mode].extend([lowest[mode]] * (max_iter - 1 - k))
            break
    info = _stat(lowest, traces, step)
    return best.view(shape), info


def _stat(lowest: dict, traces: dict, step: torch.Tensor) -> Any:
    """The solve's torchdeq ``SolverStat`` (a plain dict of the same keys without torchdeq)."""
    info = {
        "abs_lowest": lowest["abs"],
        "rel_lowest": lowest["rel"],
        "abs_trace": torch.stack(traces["abs"], dim=1),
        "rel_trace": torch.stack(traces["rel"], dim=1),
        "nstep": step,
    }
    try:
        from torchdeq.solver.stat import SolverStat
    except ImportError:  # pragma: no cover - exercised only without the deq extra
        return info
    return SolverStat(**info)


def n_after(k: int) -> int:
    """Columns of the history once iteration ``k`` has written its own."""
    return min(k + 1, MEMORY)
