"""Per-sample termination of a fixed-point iteration: the one convergence test of the package.

:class:`Termination` measures the residual of every column block of a flat ``(b, n)`` state
and turns it into per-sample :class:`~jiio_ext.solution.Status` codes: ``CONVERGED`` when every
tested block is below ``atol + rtol ×`` the largest RMS that block of the state has had (and
every ``peak_tests`` output below ``atol + rtol ×`` its trusted peak), ``DIVERGED`` when the
residual grew past ``divergence ×`` its first value, ``NONFINITE`` for NaN or infinity. The
engine (:mod:`jiio_ext.solvers.engine`), ``solve_nested``'s final report and the higher
adapter's ``diffopt.status`` all use it.

Example:
    >>> import torch
    >>> from jiio_ext.solvers import Termination
    >>> term = Termination(rtol=1e-3, atol=0.0, blocks=(2, 1))
    >>> state = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0]])
    >>> resid = torch.tensor([[1e-5, 0.0, 0.0], [0.5, 0.0, 0.0]])
    >>> rms, res = term.residuals(resid)
    >>> ts = term.observe(term.init(state), state, res, rms.norm(dim=1), {})
    >>> term.codes(ts, res, {}, torch.ones(2, dtype=torch.bool), rms.norm(dim=1)).tolist()
    [0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from jiio_ext.solution import Status

__all__ = ["Termination", "TerminationState", "block_rms", "finite_rows", "status_codes"]

# relative residual below which a block counts as loosely settled (see ``peak_tests``)
_TRUSTED = 0.1


def block_rms(v: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """RMS of every column block, ``(b, n_blocks)``, in one reduction pass per block.

    Example:
        >>> import torch
        >>> block_rms(torch.tensor([[3.0, 4.0, 2.0]]), (2, 1)).tolist()
        [[3.535533905029297, 2.0]]
    """
    if len(sizes) == 1:
        return (torch.linalg.vector_norm(v, dim=1) / math.sqrt(sizes[0])).unsqueeze(1)
    parts = torch.split(v, list(sizes), dim=1)
    if v.dtype in (torch.float16, torch.bfloat16):  # a scalar divisor is not rounded to v's type
        return torch.stack(
            [torch.linalg.vector_norm(p, dim=1) / math.sqrt(n) for p, n in zip(parts, sizes)],
            dim=1,
        )
    norms = torch.stack([torch.linalg.vector_norm(part, dim=1) for part in parts], dim=1)
    return norms / _root_sizes(sizes, norms)


# sqrt of the block sizes, one tensor per (sizes, dtype, device): made once, not per iteration
_ROOTS: dict[tuple, torch.Tensor] = {}


def _root_sizes(sizes: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    key = (tuple(sizes), like.dtype, like.device)
    roots = _ROOTS.get(key)
    if roots is None:
        roots = _ROOTS[key] = torch.tensor([math.sqrt(n) for n in sizes], dtype=torch.float64).to(
            like
        )
    return roots


def finite_rows(*values: torch.Tensor) -> torch.Tensor:
    """Which rows of ``(b,)`` or ``(b, k)`` tensors are finite in every entry ``(b,)``.

    ``v - v`` is zero exactly where ``v`` is finite (NaN for NaN and infinity), so the test is
    two passes over the values rather than :func:`torch.isfinite`'s four.

    Example:
        >>> import torch
        >>> finite_rows(torch.tensor([[1.0, 2.0], [1.0, float("inf")]]),
        ...             torch.tensor([0.0, 1.0])).tolist()
        [True, False]
    """
    columns = [v if v.dim() == 2 else v.unsqueeze(1) for v in values]
    dtypes = {c.dtype for c in columns}
    if len(dtypes) == 1:
        both = columns[0] if len(columns) == 1 else torch.cat(columns, dim=1)
        return (both - both == 0).all(dim=1)
    finite = None
    for column in columns:  # mixed dtypes: tested one by one (no cast can overflow)
        ok = (column - column == 0).all(dim=1)
        finite = ok if finite is None else finite & ok
    return finite


def status_codes(
    converged: torch.Tensor, diverged: torch.Tensor, finite: torch.Tensor
) -> torch.Tensor:
    """Per-sample codes from the three tests; ``NONFINITE`` beats ``DIVERGED`` beats the rest.

    Example:
        >>> import torch
        >>> yes, no = torch.tensor([True]), torch.tensor([False])
        >>> [int(status_codes(c, d, f)) for c, d, f in ((yes, no, yes), (no, no, yes),
        ...                                             (yes, yes, yes), (yes, yes, no))]
        [0, 1, 2, 3]
    """
    code = torch.full(
        converged.shape, int(Status.MAX_ITER), dtype=torch.long, device=converged.device
    )
    code.masked_fill_(converged, int(Status.CONVERGED))
    code.masked_fill_(diverged, int(Status.DIVERGED))
    return code.masked_fill_(~finite, int(Status.NONFINITE))


def _within(res: torch.Tensor, scale: torch.Tensor, untested: torch.Tensor | None) -> torch.Tensor:
    """Rows whose tested blocks are all within ``scale`` ``(b,)``."""
    below = res <= scale
    return (below if untested is None else below | untested).all(dim=1)


@dataclass
class TerminationState:
    """What :class:`Termination` remembers per sample (rows are the active samples).

    Attributes:
        tested: which blocks the state-relative test covers ``(n_blocks,)``.
        ref_norm: the first weighted residual norm ``(b,)`` (divergence reference).
        state_peak: the largest RMS each block of the state has had ``(b, n_blocks)``.
        peaks: the trusted peaks of the ``peak_tests`` outputs ``{name: (b,)}``.
        untested: ``~tested``, or ``None`` when every block is tested.
        limit: the divergence threshold ``divergence × max(ref_norm, 1)`` ``(b,)``.

    Example:
        >>> import torch
        >>> ts = Termination(blocks=(1,)).init(torch.zeros(3, 1))
        >>> ts.select(torch.tensor([0, 2])).peaks, ts.ref_norm is None
        ({}, True)
    """

    tested: torch.Tensor
    ref_norm: torch.Tensor | None = None
    state_peak: torch.Tensor | None = None
    peaks: dict[str, torch.Tensor] = field(default_factory=dict)
    untested: torch.Tensor | None = None
    limit: torch.Tensor | None = None

    def select(self, keep: torch.Tensor) -> TerminationState:
        """Keep only the rows ``keep`` (the samples still active)."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, keep)

        return TerminationState(
            tested=self.tested,
            ref_norm=pick(self.ref_norm),
            state_peak=pick(self.state_peak),
            peaks={key: value.index_select(0, keep) for key, value in self.peaks.items()},
            untested=self.untested,
            limit=pick(self.limit),
        )


@dataclass(frozen=True)
class Termination:
    """The per-sample convergence, divergence and finiteness test of a fixed-point iteration.

    Args:
        rtol: relative tolerance per block (against the largest RMS the block has had).
        atol: absolute tolerance per block (RMS units).
        blocks: sizes of the column blocks (``None``: one block, sized at :meth:`init`).
        block_scale: divide each block's residual by this before testing (undoes damping).
        tested_blocks: which blocks the state-relative test covers (default all); a block
            left out must be covered by ``peak_tests``.
        peak_tests: names of auxiliary outputs (per-sample, ``>= 0``) that must also fall to
            ``atol + rtol × peak``, where ``peak`` is the largest value the sample has had at
            iterates whose tested blocks were within 10 % of their state (so the value could
            be trusted): a test relative to the start that no step size can fake.
        divergence: a sample whose weighted residual exceeds ``divergence × max(first
            residual, 1)`` is ``DIVERGED`` (``None``: never).

    Example:
        >>> import torch
        >>> term = Termination(rtol=0.0, atol=1e-6)
        >>> state = torch.zeros(2, 3)
        >>> rms, res = term.residuals(torch.tensor([[1e-7] * 3, [1.0] * 3]))
        >>> ts = term.observe(term.init(state), state, res, rms[:, 0], {})
        >>> term.converged(ts, res, {}, torch.ones(2, dtype=torch.bool)).tolist()
        [True, False]
    """

    rtol: float = 1e-4
    atol: float = 1e-6
    blocks: tuple[int, ...] | None = None
    block_scale: tuple[float, ...] | None = None
    tested_blocks: tuple[bool, ...] | None = None
    peak_tests: tuple[str, ...] = ()
    divergence: float | None = 1e4

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        object.__setattr__(self, "_scales", {})
        for name in ("blocks", "block_scale", "tested_blocks", "peak_tests"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        n_blocks = None if self.blocks is None else len(self.blocks)
        for name in ("block_scale", "tested_blocks"):
            value = getattr(self, name)
            if value is not None and n_blocks is not None and len(value) != n_blocks:
                raise ValueError(f"{name}: expected {n_blocks} entries (one per block)")

    def sizes(self, n: int) -> tuple[int, ...]:
        """The block sizes for a state of ``n`` columns."""
        sizes = self.blocks if self.blocks is not None else (n,)
        if sum(sizes) != n:
            raise ValueError(f"blocks: sizes {sizes} do not add up to the state size {n}")
        return sizes

    def init(
        self, state: torch.Tensor, peak_start: dict[str, torch.Tensor] | None = None
    ) -> TerminationState:
        """A fresh per-sample state for a batch like ``state`` ``(b, n)``.

        Args:
            state: the initial states (for their size, dtype and device).
            peak_start: initial peaks ``{name: (b,)}`` (a warm start passes its own run's).
        """
        n_blocks = len(self.sizes(state.shape[1]))
        tested = torch.tensor(
            list(self.tested_blocks) if self.tested_blocks is not None else [True] * n_blocks,
            device=state.device,
        )
        peaks = {k: v.to(state) for k, v in (peak_start or {}).items()}
        untested = None if self.tested_blocks is None or all(self.tested_blocks) else ~tested
        return TerminationState(tested=tested, peaks=peaks, untested=untested)

    def residuals(self, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rms, res)`` of a residual ``F(s) - s``: per-block RMS, and RMS over the block scale.

        NaN or infinity anywhere in a row shows in both.
        """
        rms = block_rms(resid, self.sizes(resid.shape[1]))
        if self.block_scale is None:
            return rms, rms
        key = (rms.dtype, rms.device)
        scale = self._scales.get(key)
        if scale is None:  # made once per dtype and device, not every iteration
            scale = self._scales[key] = rms.new_tensor(self.block_scale)  # in rms's dtype
        return rms, rms / scale

    def observe(
        self,
        ts: TerminationState,
        state: torch.Tensor,
        res: torch.Tensor,
        w_norm: torch.Tensor,
        aux: dict[str, torch.Tensor],
        finite: torch.Tensor | None = None,
    ) -> TerminationState:
        """Update the per-sample references with one evaluated iterate ``state`` ``(b, n)``.

        Args:
            ts: the state from :meth:`init` or the previous call.
            state: the evaluated iterates.
            res: their scaled block residuals (:meth:`residuals`).
            w_norm: their residual norms in the solver's metric (divergence test).
            aux: the map's auxiliary outputs (for ``peak_tests``).
            finite: which rows are finite (default: all).

        Returns:
            The updated state (``ts`` itself, updated in place).
        """
        if ts.ref_norm is None:
            ts.ref_norm = w_norm
            if self.divergence is not None:
                ts.limit = self.divergence * w_norm.clamp_min(1.0)
        state_rms = block_rms(state, self.sizes(state.shape[1]))
        # a block is measured against the largest RMS it has had: a block whose solution is
        # zero (the adjoint of a loss that reaches zero) still converges without an atol
        ts.state_peak = (
            state_rms if ts.state_peak is None else torch.maximum(ts.state_peak, state_rms)
        )
        if self.peak_tests:
            # peaks count only iterates whose tested blocks are loosely settled, so that a
            # transient excursion of an unsettled block cannot inflate the reference
            trusted = _within(res, self.atol + _TRUSTED * ts.state_peak, ts.untested)
            if finite is not None:
                trusted = trusted & finite
            for key in self.peak_tests:
                value = torch.where(trusted, aux[key].detach(), torch.zeros_like(aux[key]))
                ts.peaks[key] = (
                    value if key not in ts.peaks else torch.maximum(ts.peaks[key], value)
                )
        return ts

    def converged(
        self,
        ts: TerminationState,
        res: torch.Tensor,
        aux: dict[str, torch.Tensor],
        finite: torch.Tensor,
    ) -> torch.Tensor:
        """Which rows meet every tolerance at the last observed iterate ``(b,)``."""
        converged = _within(res, self.atol + self.rtol * ts.state_peak, ts.untested) & finite
        for key in self.peak_tests:
            converged = converged & (aux[key] <= self.atol + self.rtol * ts.peaks[key])
        return converged

    def diverged(
        self, ts: TerminationState, w_norm: torch.Tensor, finite: torch.Tensor
    ) -> torch.Tensor:
        """Which finite rows' residual grew past ``divergence ×`` its first value ``(b,)``."""
        if self.divergence is None:
            return torch.zeros_like(finite)
        if ts.limit is None:  # a state made before the first observe
            ts.limit = self.divergence * ts.ref_norm.clamp_min(1.0)
        return finite & (w_norm > ts.limit)

    def codes(
        self,
        ts: TerminationState,
        res: torch.Tensor,
        aux: dict[str, torch.Tensor],
        finite: torch.Tensor,
        w_norm: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample :class:`~jiio_ext.solution.Status` codes at the last observed iterate."""
        return status_codes(
            self.converged(ts, res, aux, finite), self.diverged(ts, w_norm, finite), finite
        )
