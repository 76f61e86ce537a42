"""Safeguarded, per-sample Anderson acceleration with an incrementally updated Gram matrix.

The history of differences ``ΔS`` (iterates) and ``ΔG`` (residuals) lives in preallocated ring
buffers of shape ``(B, m, n)``; the ``m × m`` Gram matrix gains one row and one column per
iteration instead of being recomputed. Every sample has its own mixing coefficients, its own
safeguard decision and its own fallback, so a sample's iterates do not depend on the rest of
the batch.

Example:
    >>> import torch
    >>> from jiio_ext.solvers import Anderson, fixed_point
    >>> A = 0.5 * torch.eye(3, dtype=torch.float64)
    >>> b = torch.ones(2, 3, dtype=torch.float64)
    >>> start = torch.zeros(2, 3, dtype=torch.float64)
    >>> result = fixed_point(lambda s, idx, k: (s @ A + b, {}), start,
    ...                      solver=Anderson(memory=3), rtol=1e-10, atol=1e-12)
    >>> torch.allclose(result.state, 2 * b)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Anderson", "AndersonState", "DampedIteration"]


@dataclass
class AndersonState:
    """Per-sample buffers of :class:`Anderson` (rows are samples).

    Attributes:
        d_state: ring buffer of iterate differences ``(B, m, n)``.
        d_resid: ring buffer of residual differences ``(B, m, n)``.
        gram: Gram matrix over the ring positions ``(B, m, m)``.
        count: number of valid history columns (shared by all rows).
        position: next ring position to write.
        prev_state: last evaluated iterate.
        prev_resid: its residual.
        accepted_state: last accepted iterate (safeguard reference).
        accepted_resid: its residual.
        accepted_norm: its residual norm ``(B,)``.
        force_accept: rows whose next evaluation is accepted unconditionally.
        fallbacks: number of safeguard or singular-system fallbacks per row.
        started: whether a first iterate has been seen (differences start after it).
    """

    d_state: torch.Tensor
    d_resid: torch.Tensor
    gram: torch.Tensor
    count: int
    position: int
    prev_state: torch.Tensor
    prev_resid: torch.Tensor
    accepted_state: torch.Tensor
    accepted_resid: torch.Tensor
    accepted_norm: torch.Tensor
    force_accept: torch.Tensor
    fallbacks: torch.Tensor
    started: bool = False

    def select(self, rows: torch.Tensor) -> AndersonState:
        """Keep only ``rows`` (used when samples freeze)."""
        pick = lambda t: t.index_select(0, rows)  # noqa: E731
        return AndersonState(
            d_state=pick(self.d_state),
            d_resid=pick(self.d_resid),
            gram=pick(self.gram),
            count=self.count,
            position=self.position,
            prev_state=pick(self.prev_state),
            prev_resid=pick(self.prev_resid),
            accepted_state=pick(self.accepted_state),
            accepted_resid=pick(self.accepted_resid),
            accepted_norm=pick(self.accepted_norm),
            force_accept=pick(self.force_accept),
            fallbacks=pick(self.fallbacks),
            started=self.started,
        )


class DampedIteration:
    """Plain fixed-point iteration ``s ← F(s)`` (the map already carries the damping).

    Example:
        >>> import torch
        >>> from jiio_ext.solvers import DampedIteration, fixed_point
        >>> result = fixed_point(lambda s, idx, k: (0.5 * s + 1, {}), torch.zeros(1, 2),
        ...                      solver=DampedIteration(), rtol=1e-6, atol=1e-6, max_iter=100)
        >>> torch.allclose(result.state, torch.full((1, 2), 2.0), atol=1e-5)
        True
    """

    name = "damped"

    def init(self, state: torch.Tensor, resid: torch.Tensor) -> None:
        """No buffers are needed."""
        return None

    def step(
        self, buffers: None, state: torch.Tensor, resid: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        """Next iterate ``state + resid`` (that is, ``F(state)``)."""
        return state + resid, None

    def select(self, buffers: None, rows: torch.Tensor) -> None:
        """Nothing to compact."""
        return None


class Anderson:
    """Anderson acceleration over per-sample flat states.

    Args:
        memory: history length ``m``.
        kind: ``"II"`` solves ``(ΔGᵀΔG + λ) γ = ΔGᵀ g`` (least squares on residuals, as
            torchdeq); ``"I"`` solves ``(ΔSᵀΔG + λ) γ = ΔSᵀ g`` (the reference code's choice).
        ridge: ridge ``λ`` relative to the mean diagonal of the Gram matrix.
        mixing: Anderson mixing ``β`` (1 keeps the map's own damping).
        safeguard: a step whose weighted residual norm exceeds ``safeguard`` times that of the
            last accepted iterate is rejected, and the sample takes the plain map step from the
            accepted iterate instead (``None`` disables the safeguard).

    Example:
        >>> Anderson(memory=10, kind="II").memory
        10
    """

    name = "anderson"

    def __init__(
        self,
        memory: int = 5,
        kind: str = "I",
        ridge: float = 1e-4,
        mixing: float = 1.0,
        safeguard: float | None = 2.0,
    ) -> None:
        if not isinstance(memory, int) or memory < 1:
            raise ValueError(f"memory: expected an integer >= 1, got {memory!r}")
        if kind not in ("I", "II"):
            raise ValueError(f"kind: expected 'I' or 'II', got {kind!r}")
        if not ridge >= 0:
            raise ValueError(f"ridge: expected >= 0, got {ridge!r}")
        if not 0 < mixing <= 1:
            raise ValueError(f"mixing: expected 0 < mixing <= 1, got {mixing!r}")
        if safeguard is not None and not safeguard > 0:
            raise ValueError(f"safeguard: expected > 0 or None, got {safeguard!r}")
        self.memory = memory
        self.kind = kind
        self.ridge = ridge
        self.mixing = mixing
        self.safeguard = safeguard

    def init(self, state: torch.Tensor, resid: torch.Tensor) -> AndersonState:
        """Allocate the ring buffers for a batch ``(B, n)``."""
        rows, n = state.shape
        m = self.memory
        return AndersonState(
            d_state=state.new_zeros(rows, m, n),
            d_resid=state.new_zeros(rows, m, n),
            gram=state.new_zeros(rows, m, m),
            count=0,
            position=0,
            prev_state=state,
            prev_resid=resid,
            accepted_state=state,
            accepted_resid=resid,
            accepted_norm=torch.full((rows,), float("inf"), dtype=state.dtype, device=state.device),
            force_accept=torch.zeros(rows, dtype=torch.bool, device=state.device),
            fallbacks=torch.zeros(rows, dtype=torch.long, device=state.device),
        )

    def select(self, buffers: AndersonState, rows: torch.Tensor) -> AndersonState:
        """Keep only ``rows`` of the buffers."""
        return buffers.select(rows)

    def _push(self, buf: AndersonState, state: torch.Tensor, resid: torch.Tensor) -> None:
        p = buf.position
        buf.d_state[:, p].copy_(state - buf.prev_state)
        buf.d_resid[:, p].copy_(resid - buf.prev_resid)
        buf.count = min(buf.count + 1, self.memory)
        c = buf.count
        new_s = buf.d_state[:, p].unsqueeze(2)
        new_g = buf.d_resid[:, p].unsqueeze(2)
        if self.kind == "II":
            column = torch.bmm(buf.d_resid[:, :c], new_g).squeeze(2)
            buf.gram[:, :c, p] = column
            buf.gram[:, p, :c] = column
        else:  # gram[i, j] = <ΔS_i, ΔG_j>
            buf.gram[:, :c, p] = torch.bmm(buf.d_state[:, :c], new_g).squeeze(2)
            buf.gram[:, p, :c] = torch.bmm(buf.d_resid[:, :c], new_s).squeeze(2)
        buf.position = (p + 1) % self.memory

    def _mix(self, buf: AndersonState, state: torch.Tensor, resid: torch.Tensor):
        c = buf.count
        beta = self.mixing
        plain = state + beta * resid
        if c == 0:
            return plain, torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)
        basis = buf.d_resid if self.kind == "II" else buf.d_state
        gram = buf.gram[:, :c, :c]
        diag = torch.diagonal(gram, dim1=1, dim2=2)
        scale = diag.abs().mean(dim=1).clamp_min(torch.finfo(state.dtype).tiny)
        eye = torch.eye(c, dtype=state.dtype, device=state.device)
        system = gram + (self.ridge * scale).view(-1, 1, 1) * eye
        rhs = torch.bmm(basis[:, :c], resid.unsqueeze(2))
        gamma, info = torch.linalg.solve_ex(system, rhs)
        gamma_row = gamma.transpose(1, 2)
        correction = torch.bmm(gamma_row, buf.d_state[:, :c]).squeeze(1)
        correction = correction + beta * torch.bmm(gamma_row, buf.d_resid[:, :c]).squeeze(1)
        mixed = plain - correction
        singular = (info != 0) | ~torch.isfinite(gamma).all(dim=1).squeeze(1)
        singular = singular | ~torch.isfinite(mixed).all(dim=1)
        return torch.where(singular.unsqueeze(1), plain, mixed), singular

    def step(
        self, buf: AndersonState, state: torch.Tensor, resid: torch.Tensor
    ) -> tuple[torch.Tensor, AndersonState]:
        """Next iterate for every row, given the evaluated ``state`` and its residual."""
        if buf.started:
            self._push(buf, state, resid)
        buf.started = True
        buf.prev_state, buf.prev_resid = state, resid
        norm = resid.norm(dim=1)
        if self.safeguard is None:
            accept = torch.ones_like(buf.force_accept)
        else:
            accept = buf.force_accept | (norm <= self.safeguard * buf.accepted_norm)
        mixed, singular = self._mix(buf, state, resid)
        fallback_step = buf.accepted_state + self.mixing * buf.accepted_resid
        nxt = torch.where(accept.unsqueeze(1), mixed, fallback_step)
        buf.accepted_state = torch.where(accept.unsqueeze(1), state, buf.accepted_state)
        buf.accepted_resid = torch.where(accept.unsqueeze(1), resid, buf.accepted_resid)
        buf.accepted_norm = torch.where(accept, norm, buf.accepted_norm)
        buf.force_accept = ~accept
        buf.fallbacks = buf.fallbacks + (~accept | singular).long()
        return nxt, buf
