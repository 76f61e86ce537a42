"""``fixed_point``: the plain loop over the engine's ``init`` / ``step`` / ``terminate``.

It iterates a map ``F`` over a batch of flat per-sample states ``(B, n)`` split into blocks,
tests every sample with one :class:`~jiio_ext.solvers.Termination`, freezes it as soon as it
converged (or diverged, or turned non-finite), and lets a solver (damped iteration or
Anderson) propose the next iterate (see :class:`~jiio_ext.solvers.FixedPointEngine`).

Example:
    >>> import torch
    >>> from jiio_ext.solvers import fixed_point
    >>> result = fixed_point(lambda s, idx, k: (0.5 * s + 1, {}), torch.zeros(3, 2), max_iter=200,
    ...                      rtol=1e-6, atol=1e-6)
    >>> result.status.tolist()
    [0, 0, 0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import torch

from jiio_ext.solvers.engine import EngineState, FixedPointEngine, FixedPointResult, MapFn, Solver
from jiio_ext.solvers.termination import Termination

__all__ = ["fixed_point"]


def _check_settings(max_iter: int, rtol: float, atol: float, check_every: int) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected an integer >= 1, got {max_iter!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every: expected an integer >= 1, got {check_every!r}")


class _Progress:
    """Live postfix of a tqdm-like bar: worst residual, whole-batch mean objective, active."""

    def __init__(self, bar: object, like: torch.Tensor) -> None:
        self.bar, self.like, self.shown = bar, like, None

    def show(self, engine: FixedPointEngine, st: EngineState, done: torch.Tensor) -> None:
        res, finite, aux = st.res, st.finite, st.aux
        worst = res[finite].amax() if bool(finite.any()) else torch.tensor(float("nan"))
        postfix = {"residual": f"{float(worst):.2e}"}
        if "objective" in aux:  # the mean over the whole batch, frozen samples too
            if self.shown is None:
                batch = st.outputs["status"].shape[0]
                self.shown = torch.full(
                    (batch,), float("nan"), dtype=self.like.dtype, device=self.like.device
                )
            self.shown.index_copy_(0, st.rows, aux["objective"].detach().to(self.shown))
            postfix["objective"] = f"{float(self.shown.nanmean()):.4g}"
        postfix["active"] = int((~done).sum()) if engine.subset else int(st.active.sum())
        self.bar.set_postfix(postfix)


def fixed_point(
    map_fn: MapFn,
    state0: torch.Tensor,
    *,
    solver: Solver | None = None,
    max_iter: int = 100,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    blocks: Sequence[int] | None = None,
    block_names: Sequence[str] | None = None,
    block_scale: Sequence[float] | None = None,
    subset: bool = True,
    check_every: int = 1,
    divergence: float = 1e4,
    balance: bool = True,
    callback: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    progress: object | None = None,
    snapshot_at: Collection[int] = (),
    tested_blocks: Sequence[bool] | None = None,
    peak_tests: Collection[str] = (),
    peak_start: dict[str, torch.Tensor] | None = None,
    mixed_blocks: Sequence[bool] | None = None,
) -> FixedPointResult:
    """Solve ``s = F(s)`` for a batch of flat states with per-sample convergence and freezing.

    Args:
        map_fn: ``map_fn(s, index, k) -> (F(s), aux)`` where ``s`` holds the active samples,
            ``index`` their positions in the batch and ``k`` the iteration; ``aux`` maps names to
            per-sample ``(b,)`` tensors (e.g. ``"objective"``).
        state0: initial states ``(B, n)``.
        solver: :class:`~jiio_ext.solvers.Anderson` (default),
            :class:`~jiio_ext.solvers.DampedIteration`, or either wrapped in
            :class:`~jiio_ext.solvers.BestSoFar` (a sample that does not converge then
            returns its best-scoring iterate instead of its last one).
        max_iter: iteration budget.
        rtol: relative tolerance per block (against the largest RMS the block has had).
        atol: absolute tolerance per block (RMS units).
        blocks: sizes of the column blocks (default: one block).
        block_names: names of the blocks, used for traces.
        block_scale: divide each block's residual by this before testing (undoes damping).
        subset: call ``map_fn`` on the active samples only (frozen ones cost nothing); with
            ``False`` it sees the whole batch every time and frozen rows are held fixed.
        check_every: test convergence every this many iterations (each test syncs the host).
        divergence: a sample whose weighted residual exceeds ``divergence × max(initial
            residual, 1)`` is ``DIVERGED`` (the floor keeps round-off growth from a near-exact
            warm start from counting as divergence).
        balance: weight blocks by ``1/sqrt(size)`` in Anderson's metric, so each block counts
            by its per-element RMS rather than by its number of elements.
        callback: called as ``callback(k, info)`` after every evaluation, with the active
            rows' batch ``index``, evaluated ``state``, block ``residuals`` and aux tensors.
        progress: a tqdm-like bar (``update``, ``set_postfix``) or ``None``.
        snapshot_at: iterations at which to keep a copy of the full batch's state.
        tested_blocks: which blocks the state-relative test covers (default all); a block
            left out must be covered by ``peak_tests``.
        peak_tests: names of ``aux`` outputs that must also fall to ``atol + rtol × peak``
            (see :class:`~jiio_ext.solvers.Termination`; the joint solve tests the projected
            gradient this way).
        peak_start: initial peaks ``{name: (B,)}`` (a warm start passes its own run's).
        mixed_blocks: which blocks the solver mixes (default all); a block left out takes
            the map's own update (``F(s)``) every iteration and is left out of Anderson's
            metric: for a block whose update carries state of its own, such as an adaptive
            input step, which Anderson's linear model of ``F`` does not fit.

    Returns:
        A :class:`~jiio_ext.solvers.FixedPointResult`.

    Example:
        >>> import torch
        >>> res = fixed_point(lambda s, i, k: (torch.cos(s), {}), torch.zeros(2, 1), rtol=0,
        ...                   atol=1e-7, max_iter=100)
        >>> round(float(res.state[0, 0]), 5)
        0.73909
    """
    _check_settings(max_iter, rtol, atol, check_every)
    if state0.dim() != 2:
        raise ValueError(f"state0: expected a (batch, n) matrix, got shape {tuple(state0.shape)}")
    termination = Termination(
        rtol=rtol,
        atol=atol,
        blocks=blocks,
        block_scale=block_scale,
        tested_blocks=tested_blocks,
        peak_tests=tuple(peak_tests),
        divergence=divergence,
    )
    engine = FixedPointEngine(
        map_fn,
        solver=solver,
        termination=termination,
        block_names=block_names,
        subset=subset,
        balance=balance,
        mixed_blocks=mixed_blocks,
    )
    st = engine.init(state0, peak_start)
    shown = None if progress is None else _Progress(progress, state0)
    snapshots: dict[int, torch.Tensor] = {}
    wanted = set(snapshot_at)
    for k in range(max_iter):
        st = engine.step(st)
        if callback is not None:
            callback(k, {"index": st.rows, "state": st.state, "residuals": st.res, **st.aux})
        if k in wanted:
            snapshots[k] = engine.snapshot(st)
        last = k == max_iter - 1
        if (k + 1) % check_every == 0 or last:
            if shown is not None:  # the postfix shows the rows before they freeze
                shown.show(engine, st, engine.terminate(st, final=last)[0])
            st, _ = engine.terminate_and_freeze(st, final=last)
            if not engine.running(st):
                if progress is not None:
                    progress.update(1)
                break
        if progress is not None:
            progress.update(1)
    return engine.result(st, snapshots)
