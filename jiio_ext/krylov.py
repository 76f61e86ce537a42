"""Per-sample restarted GMRES for the linear systems of the implicit backward.

The backward of a fixed point ``s* = F(s*)`` solves ``(I − Jᵀ) w = v`` with ``J = ∂F/∂s``.
Iterating ``w ← Jᵀ w + v`` (what a fixed-point solver does) converges at the rate of the
spectral radius of ``J``; for the augmented map of JIIO this is ``1 − gain · curvature`` in
the input block, close to 1 when the input step is small, so hundreds of iterations are not
enough. GMRES minimises the residual over the Krylov space instead; its convergence depends on
how the eigenvalues of ``I − Jᵀ`` cluster, not on how close they are to zero, and it is exact
after ``n`` products for an ``n``-dimensional sample.

Each sample of the batch has its own Krylov space and Hessenberg matrix (the operator is
applied to the whole batch at once, and must act on each row independently); a sample that
has converged stops taking part in the basis.

Example:
    >>> import torch
    >>> A = torch.tensor([[[4.0, 1.0], [0.0, 3.0]], [[2.0, 0.0], [1.0, 1.0]]]).double()
    >>> matvec = lambda w: torch.einsum("bij,bj->bi", A, w)
    >>> b = torch.ones(2, 2, dtype=torch.float64)
    >>> result = gmres(matvec, b, torch.zeros_like(b), max_iter=10, rtol=1e-12, atol=0.0)
    >>> # two products and the final residual; b is an eigenvector of the second matrix
    >>> result.status.tolist(), result.nstep.tolist()
    ([0, 0], [3, 2])
    >>> torch.allclose(matvec(result.state), b)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from jiio_ext.solution import Status
from jiio_ext.solvers import FixedPointResult

__all__ = ["GMRES", "gmres"]


@dataclass(frozen=True)
class GMRES:
    """Restarted GMRES as the solver of a backward (``ImplicitGrad(solver=GMRES())``).

    Args:
        restart: Krylov basis size before a restart (memory: ``restart + 1`` vectors of the
            batch's state).

    Example:
        >>> GMRES(restart=20).restart
        20
    """

    restart: int = 30

    def __post_init__(self) -> None:
        if isinstance(self.restart, bool) or not isinstance(self.restart, int):
            raise TypeError(f"GMRES.restart: expected an int, got {self.restart!r}")
        if self.restart < 1:
            raise ValueError(f"GMRES.restart: expected an int >= 1, got {self.restart}")


def _rms(v: torch.Tensor) -> torch.Tensor:
    return v.pow(2).mean(dim=1).sqrt()


def gmres(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor,
    *,
    max_iter: int,
    rtol: float,
    atol: float,
    restart: int = 30,
) -> FixedPointResult:
    """Solve ``A x = b`` per sample (row) by restarted GMRES.

    Args:
        matvec: ``x (B, n) -> A x (B, n)``, row-independent; called on the whole batch.
        b: right-hand sides ``(B, n)``.
        x0: starting guesses ``(B, n)``.
        max_iter: budget of products with ``A`` per sample (restart checks included).
        rtol: a sample converges when the RMS of its residual ``b − A x`` is at most
            ``atol + rtol · rms(b)``.
        atol: absolute tolerance (RMS units).
        restart: basis size between restarts (capped at ``n``).

    Returns:
        A :class:`~jiio_ext.solvers.FixedPointResult` whose ``state`` is ``x``, ``residuals``
        the RMS of the true residual ``(B, 1)``, ``status`` CONVERGED / MAX_ITER / NONFINITE
        and ``nstep`` the products each sample took part in (the true residual at each
        restart included).

    Example:
        >>> import torch
        >>> b = torch.tensor([[2.0, 4.0]])
        >>> result = gmres(lambda x: 2 * x, b, torch.zeros_like(b), max_iter=5, rtol=1e-9,
        ...                atol=0.0)
        >>> result.state.tolist(), result.nstep.tolist()
        ([[1.0, 2.0]], [2])
    """
    batch, n = b.shape
    m = max(1, min(restart, n))
    tiny = torch.finfo(b.dtype).tiny
    eps = torch.finfo(b.dtype).eps
    tol = atol + rtol * _rms(b)
    x = x0.clone()
    nstep = torch.zeros(batch, dtype=torch.long, device=b.device)
    calls = 0
    zero_start = not bool(x0.any())
    r = b.clone() if zero_start else b - matvec(x)
    if not zero_start:
        calls += 1
        nstep += 1
    while True:
        res = _rms(r)
        finite = torch.isfinite(res) & torch.isfinite(x).all(dim=1)
        active = finite & (res > tol)
        if not bool(active.any()) or int(nstep[active].max()) >= max_iter:
            break
        cycle = active.clone()
        beta = r.norm(dim=1)
        basis = b.new_zeros(batch, m + 1, n)
        basis[:, 0] = torch.where(active.unsqueeze(1), r / beta.clamp_min(tiny).unsqueeze(1), 0)
        upper = b.new_zeros(batch, m, m)
        cos = b.new_zeros(batch, m)
        sin = b.new_zeros(batch, m)
        g = b.new_zeros(batch, m + 1)
        g[:, 0] = torch.where(active, beta, 0)
        size = 0
        for j in range(m):
            if int(nstep[active].max()) + 1 >= max_iter:  # one product left: the residual
                break
            w = matvec(basis[:, j])
            calls += 1
            nstep += active.long()
            size = j + 1
            # classical Gram-Schmidt, twice (as accurate as modified, batched as matmuls)
            start_norm = w.norm(dim=1)
            h = torch.einsum("bkn,bn->bk", basis[:, :size], w)
            w = w - torch.einsum("bk,bkn->bn", h, basis[:, :size])
            h2 = torch.einsum("bkn,bn->bk", basis[:, :size], w)
            w = w - torch.einsum("bk,bkn->bn", h2, basis[:, :size])
            h = h + h2
            h_next = w.norm(dim=1)
            # earlier rotations, then a new one zeroing h_next
            for i in range(j):
                hi, hj = h[:, i].clone(), h[:, i + 1].clone()
                h[:, i] = cos[:, i] * hi + sin[:, i] * hj
                h[:, i + 1] = -sin[:, i] * hi + cos[:, i] * hj
            denom = torch.sqrt(h[:, j] ** 2 + h_next**2).clamp_min(tiny)
            c, s = h[:, j] / denom, h_next / denom
            diag = c * h[:, j] + s * h_next
            # a sample that is done keeps an identity column and a zero right-hand side
            c = torch.where(active, c, 1.0)
            s = torch.where(active, s, 0.0)
            h = torch.where(active.unsqueeze(1), h, 0.0)
            h[:, j] = torch.where(active, diag, 1.0)
            cos[:, j], sin[:, j] = c, s
            upper[:, :size, j] = h
            g[:, j + 1] = -s * g[:, j]
            g[:, j] = c * g[:, j]
            estimate = g[:, j + 1].abs() / n**0.5
            broke = h_next <= eps * start_norm.clamp_min(tiny)
            basis[:, j + 1] = torch.where(
                (active & ~broke).unsqueeze(1), w / h_next.clamp_min(tiny).unsqueeze(1), 0
            )
            active = active & ~broke & (estimate > tol) & torch.isfinite(estimate)
            if not bool(active.any()):
                break
        if size == 0:
            break
        y = torch.linalg.solve_triangular(
            upper[:, :size, :size], g[:, :size].unsqueeze(2), upper=True
        ).squeeze(2)
        x = x + torch.einsum("bk,bkn->bn", y, basis[:, :size])
        r = b - matvec(x)
        calls += 1
        nstep += cycle.long()
    res = _rms(r)
    finite = torch.isfinite(res) & torch.isfinite(x).all(dim=1)
    status = torch.where(res <= tol, int(Status.CONVERGED), int(Status.MAX_ITER))
    status = torch.where(finite, status, int(Status.NONFINITE)).long()
    return FixedPointResult(
        state=x,
        residuals=res.unsqueeze(1),
        status=status,
        nstep=nstep,
        aux={},
        traces={},
        n_calls=calls,
    )
