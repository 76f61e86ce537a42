"""The fixed-point engine shared by the joint solve, the nested baseline and the backward passes.

It iterates a map ``F`` over a batch of flat per-sample states ``(B, n)`` split into blocks,
measures the residual of each block separately, freezes every sample as soon as all its block
residuals are below tolerance (or it diverges, or turns non-finite), and lets a solver (damped
iteration or Anderson) propose the next iterate from the balanced (block-weighted) state.

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
from dataclasses import dataclass, field

import torch

from jiio_ext.solution import Status
from jiio_ext.solvers.anderson import Anderson, DampedIteration

__all__ = ["FixedPointResult", "MapFn", "fixed_point"]

# The iterated map: map_fn(state (b, n), sample indices (b,), iteration) -> (new state, aux).
MapFn = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]
Solver = Anderson | DampedIteration


@dataclass
class FixedPointResult:
    """Output of :func:`fixed_point` (full batch, in the original sample order).

    Attributes:
        state: ``F(s)`` at each sample's last evaluated iterate (the last finite one for
            non-finite samples) ``(B, n)``.
        residuals: per-block RMS residuals at that iterate ``(B, n_blocks)``.
        status: :class:`~jiio_ext.solution.Status` codes ``(B,)``.
        nstep: number of map evaluations of each sample ``(B,)``.
        aux: the map's auxiliary outputs at the last evaluation, e.g. the objective.
        traces: ``(T, B)`` trace of every residual block and auxiliary output.
        n_calls: number of batched calls of the map.
        snapshots: ``{k: state}`` at the requested iterations ``(B, n)``.
        fallbacks: safeguard / singular-system fallbacks per sample ``(B,)``.
        peaks: the final per-sample peaks of the ``peak_tests`` outputs ``{name: (B,)}``.

    Example:
        >>> import torch
        >>> result = fixed_point(lambda s, idx, k: (0.5 * s + 1, {}), torch.zeros(2, 1),
        ...                      max_iter=100, rtol=1e-8, atol=1e-8)
        >>> result.state.round(decimals=4).tolist(), result.status.tolist()
        ([[2.0], [2.0]], [0, 0])
        >>> result.residuals.shape  # one residual block
        torch.Size([2, 1])
    """

    state: torch.Tensor
    residuals: torch.Tensor
    status: torch.Tensor
    nstep: torch.Tensor
    aux: dict[str, torch.Tensor]
    traces: dict[str, torch.Tensor]
    n_calls: int
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)
    fallbacks: torch.Tensor | None = None
    peaks: dict[str, torch.Tensor] = field(default_factory=dict)


# relative residual below which a block counts as loosely settled (see ``peak_tests``)
_TRUSTED = 0.1


def _block_rms(v: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """RMS of every column block, ``(b, n_blocks)``, in one reduction pass per block."""
    parts = torch.split(v, list(sizes), dim=1)
    return torch.stack(
        [torch.linalg.vector_norm(part, dim=1) / math.sqrt(n) for part, n in zip(parts, sizes)],
        dim=1,
    )


def _balance_weights(state: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Coordinate weights ``1/sqrt(n_b)`` per block ``(1, n)``: every block counts by its RMS.

    Measured on the test problems and the latent benchmark, this beats weights scaled by the
    initial residual, which explode for a block that starts at rest (the x-step is zero while
    the adjoint is zero) and let that block dominate Anderson's least-squares metric.
    """
    per_block = torch.tensor([1.0 / math.sqrt(s) for s in sizes], dtype=state.dtype)
    weights = torch.repeat_interleave(per_block, torch.tensor(sizes), dim=0).to(state.device)
    return weights.unsqueeze(0)


class _BestIterate:
    """Per-row best-scoring iterate (its map output, residuals and aux values)."""

    def __init__(self) -> None:
        self.score: torch.Tensor | None = None
        self.state: torch.Tensor | None = None
        self.res: torch.Tensor | None = None
        self.aux: dict[str, torch.Tensor] = {}

    def update(self, score, finite, mapped, res, aux) -> None:
        score = torch.where(finite, score, torch.full_like(score, float("inf")))
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

    def substitute(self, wanted, state, res, aux):
        use = wanted & torch.isfinite(self.score)
        if "objective" in aux:  # never trade the last iterate for a worse one
            use = use & (self.score < aux["objective"].detach())
        if not bool(use.any()):
            return state, res, aux
        rows = use.unsqueeze(1)
        aux = {k: torch.where(use, self.aux[k], v.detach()) for k, v in aux.items()}
        return torch.where(rows, self.state, state), torch.where(rows, self.res, res), aux

    def select(self, keep: torch.Tensor) -> None:
        if self.score is None:
            return
        self.score = self.score.index_select(0, keep)
        self.state = self.state.index_select(0, keep)
        self.res = self.res.index_select(0, keep)
        self.aux = {k: v.index_select(0, keep) for k, v in self.aux.items()}


def _assemble_traces(
    rows: list[torch.Tensor],
    values: dict[str, list[torch.Tensor]],
    names: Sequence[str],
    batch: int,
    like: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """``(T, B)`` traces from per-iteration active-row values, NaN where a sample was frozen."""
    steps = len(rows)
    traces: dict[str, torch.Tensor] = {}
    if steps == 0:
        return traces
    flat_rows = torch.cat([r + k * batch for k, r in enumerate(rows)])

    def spread(parts: list[torch.Tensor]) -> torch.Tensor:
        cat = torch.cat(parts)
        full = torch.full(
            (steps * batch, *cat.shape[1:]), float("nan"), dtype=like.dtype, device=like.device
        )
        return full.index_copy(0, flat_rows, cat.to(like.dtype)).view(steps, batch, *cat.shape[1:])

    residuals = spread(values.pop("_residuals"))
    for i, name in enumerate(names):
        traces[f"residual_{name}"] = residuals[..., i]
    for key, parts in values.items():
        traces[key] = spread(parts)
    return traces


def _check_settings(max_iter: int, rtol: float, atol: float, check_every: int) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected an integer >= 1, got {max_iter!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every: expected an integer >= 1, got {check_every!r}")


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
    score: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor] | None = None,
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
        solver: :class:`Anderson` (default) or :class:`DampedIteration`.
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
        score: best-iterate selection: ``score(residuals, state_rms, aux) -> (b,)`` (lower is
            better, ``inf`` ineligible); a sample that does not converge returns its
            best-scoring iterate instead of its last one.
        tested_blocks: which blocks the state-relative test covers (default all); a block
            left out must be covered by ``peak_tests``.
        peak_tests: names of ``aux`` outputs (per-sample, ``>= 0``) that must also fall to
            ``atol + rtol × peak``, where ``peak`` is the largest value the sample has had so
            far at iterates whose tested blocks were within 10 % of their state (so the value
            could be trusted): a test relative to the start that no step size can fake (the
            joint solve tests the projected gradient this way).
        peak_start: initial peaks ``{name: (B,)}`` (a warm start passes its own run's).
        mixed_blocks: which blocks the solver mixes (default all); a block left out takes
            the map's own update (``F(s)``) every iteration and is left out of Anderson's
            metric: for a block whose update carries state of its own, such as an adaptive
            input step, which Anderson's linear model of ``F`` does not fit.

    Returns:
        A :class:`FixedPointResult`.

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
    solver = Anderson() if solver is None else solver
    batch, n = state0.shape
    sizes = tuple(blocks) if blocks is not None else (n,)
    if sum(sizes) != n:
        raise ValueError(f"blocks: sizes {sizes} do not add up to the state size {n}")
    names = (
        tuple(block_names) if block_names is not None else tuple(f"b{i}" for i in range(len(sizes)))
    )
    scale = torch.tensor(block_scale if block_scale is not None else [1.0] * len(sizes)).to(state0)
    tested = torch.tensor(
        list(tested_blocks) if tested_blocks is not None else [True] * len(sizes),
        device=state0.device,
    )
    peaks: dict[str, torch.Tensor] = {k: v.to(state0) for k, v in (peak_start or {}).items()}
    mixed = list(mixed_blocks) if mixed_blocks is not None else [True] * len(sizes)
    mix_mask = torch.repeat_interleave(
        torch.tensor(mixed, device=state0.device), torch.tensor(sizes, device=state0.device)
    )
    passthrough = None if all(mixed) else ~mix_mask
    out_peaks: dict[str, torch.Tensor] = {}
    device = state0.device

    out_state = state0.clone()
    out_res = torch.full((batch, len(sizes)), float("nan"), dtype=state0.dtype, device=device)
    status = torch.full((batch,), int(Status.MAX_ITER), dtype=torch.long, device=device)
    nstep = torch.zeros(batch, dtype=torch.long, device=device)
    fallbacks = torch.zeros(batch, dtype=torch.long, device=device)
    out_aux: dict[str, torch.Tensor] = {}
    trace_lists: dict[str, list[torch.Tensor]] = {}
    snapshots: dict[int, torch.Tensor] = {}
    wanted = set(snapshot_at)

    rows = torch.arange(batch, device=device)  # batch position of each row
    active = torch.ones(batch, dtype=torch.bool, device=device)  # mask mode only
    s = state0
    weights = ref_norm = buffers = good = state_peak = shown = None
    best = _BestIterate()
    n_calls = 0

    trace_rows: list[torch.Tensor] = []  # active rows of every iteration, for the traces

    def finish(done: torch.Tensor, code: torch.Tensor, fs: torch.Tensor, res, aux) -> None:
        where = rows[done]
        out_state.index_copy_(0, where, fs[done])
        out_res.index_copy_(0, where, res[done])
        status.index_copy_(0, where, code[done])
        solver_fallbacks = getattr(buffers, "fallbacks", None)
        if solver_fallbacks is not None:
            fallbacks.index_copy_(0, where, solver_fallbacks[done])
        for key, value in peaks.items():
            if key not in out_peaks:
                out_peaks[key] = torch.zeros(batch, dtype=value.dtype, device=device)
            out_peaks[key].index_copy_(0, where, value[done])
        for key, value in aux.items():
            if key not in out_aux:
                out_aux[key] = torch.full((batch,), float("nan"), dtype=value.dtype, device=device)
            out_aux[key].index_copy_(0, where, value.detach()[done])

    for k in range(max_iter):
        mapped, aux = map_fn(s, rows, k)
        n_calls += 1
        resid = mapped - s
        rms = _block_rms(resid, sizes)  # NaN or inf anywhere in a row shows in its norms
        res = rms / scale
        finite = torch.isfinite(rms).all(dim=1)
        for value in aux.values():
            finite = finite & torch.isfinite(value)
        # the residual norm in Anderson's metric, from the block norms (no extra pass)
        if passthrough is None:
            w_norm = rms.pow(2).sum(dim=1).sqrt() if balance else resid.norm(dim=1)
        elif balance:
            w_norm = (rms * mix_mask.new_tensor(mixed).to(rms)).pow(2).sum(dim=1).sqrt()
        else:
            w_norm = (resid * mix_mask.to(resid)).norm(dim=1)
        if ref_norm is None:
            weights = _balance_weights(s, sizes) if balance else None
            if passthrough is not None:
                weights = (torch.ones_like(s[:1]) if weights is None else weights) * mix_mask.to(s)
            ref_norm = w_norm
            good = s
        if bool(finite.all()):
            good = mapped
        else:
            good = torch.where(finite.unsqueeze(1), mapped, good)
        state_rms = _block_rms(s, sizes)
        # a block is measured against the largest RMS it has had: a block whose solution is
        # zero (the adjoint of a loss that reaches zero) still converges without an atol
        state_peak = state_rms if state_peak is None else torch.maximum(state_peak, state_rms)
        state_rms = state_peak
        if peak_tests:
            # peaks count only iterates whose tested blocks are loosely settled, so that a
            # transient excursion of an unsettled block cannot inflate the reference
            trusted = ((res <= atol + _TRUSTED * state_rms) | ~tested).all(dim=1) & finite
            for key in peak_tests:
                value = torch.where(trusted, aux[key].detach(), torch.zeros_like(aux[key]))
                peaks[key] = value if key not in peaks else torch.maximum(peaks[key], value)
        if score is not None:
            best.update(score(res, state_rms, aux), finite, mapped, res, aux)
        nstep.index_add_(0, rows, active[rows].long() if not subset else torch.ones_like(rows))
        trace_rows.append(rows)
        trace_lists.setdefault("_residuals", []).append(res)
        for key, value in aux.items():
            trace_lists.setdefault(key, []).append(value.detach())
        if callback is not None:
            callback(k, {"index": rows, "state": s, "residuals": res, **aux})
        if k in wanted:
            snap = out_state.clone()
            snap.index_copy_(0, rows, s.detach())
            snapshots[k] = snap

        if buffers is None:
            buffers = solver.init(s, resid, weights)
        s_next, buffers = solver.step(buffers, s, resid, w_norm)
        if passthrough is not None:
            s_next = torch.where(passthrough, mapped, s_next)

        last = k == max_iter - 1
        if (k + 1) % check_every == 0 or last:
            converged = ((res <= atol + rtol * state_rms) | ~tested).all(dim=1) & finite
            for key in peak_tests:
                converged = converged & (aux[key] <= atol + rtol * peaks[key])
            diverged = finite & (w_norm > divergence * ref_norm.clamp_min(1.0))
            done = converged | ~finite | diverged
            if not subset:
                done = done & active[rows]
            if last:
                done = done | (active[rows] if not subset else torch.ones_like(done))
            code = torch.full_like(status[rows], int(Status.MAX_ITER))
            code = torch.where(converged, int(Status.CONVERGED), code)
            code = torch.where(diverged, int(Status.DIVERGED), code)
            code = torch.where(~finite, int(Status.NONFINITE), code)
            if progress is not None:
                worst = res[finite].amax() if bool(finite.any()) else torch.tensor(float("nan"))
                postfix = {"residual": f"{float(worst):.2e}"}
                if "objective" in aux:  # the mean over the whole batch, frozen samples too
                    if shown is None:
                        shown = torch.full(
                            (batch,), float("nan"), dtype=state0.dtype, device=device
                        )
                    shown.index_copy_(0, rows, aux["objective"].detach().to(shown))
                    postfix["objective"] = f"{float(shown.nanmean()):.4g}"
                postfix["active"] = int((~done).sum()) if subset else int(active.sum())
                progress.set_postfix(postfix)
            if bool(done.any()):
                if score is not None:  # unconverged rows return their best iterate
                    good, res, aux = best.substitute(code != int(Status.CONVERGED), good, res, aux)
                finish(done, code, good, res, aux)
                if subset:
                    keep = torch.nonzero(~done).flatten()
                    rows = rows.index_select(0, keep)
                    s_next = s_next.index_select(0, keep)
                    ref_norm = ref_norm.index_select(0, keep)
                    state_peak = state_peak.index_select(0, keep)
                    peaks = {key: value.index_select(0, keep) for key, value in peaks.items()}
                    good = good.index_select(0, keep)
                    buffers = solver.select(buffers, keep)
                    best.select(keep)
                else:
                    active = active.clone()
                    active[rows[done]] = False
            if (subset and rows.numel() == 0) or (not subset and not bool(active.any())):
                if progress is not None:
                    progress.update(1)
                break
        if not subset:
            s_next = torch.where(active.unsqueeze(1), s_next, s)
        s = s_next
        if progress is not None:
            progress.update(1)

    traces = _assemble_traces(trace_rows, trace_lists, names, batch, state0)
    return FixedPointResult(
        state=out_state,
        residuals=out_res,
        status=status,
        nstep=nstep,
        aux=out_aux,
        traces=traces,
        n_calls=n_calls,
        snapshots=snapshots,
        fallbacks=fallbacks,
        peaks=out_peaks,
    )
