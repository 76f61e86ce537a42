"""Per-sample restarted GMRES against a dense solve, float64."""

from __future__ import annotations

import pytest
import torch

from jiio_ext.krylov import GMRES, gmres
from jiio_ext.solution import Status

DTYPE = torch.float64


def _batched_system(batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, n, n, generator=gen, dtype=DTYPE) / n**0.5
    spread = torch.linspace(0.5, 2.0, n, dtype=DTYPE)  # nonsymmetric, eigenvalues in Re > 0
    matrices = torch.diag_embed(spread) + 0.3 * noise
    return matrices, torch.randn(batch, n, generator=gen, dtype=DTYPE)


@pytest.mark.parametrize("restart", [10, 40], ids=["restarted", "full"])
def test_gmres_matches_dense_solve_per_sample(restart):
    matrices, b = _batched_system(batch=3, n=40, seed=0)
    result = gmres(
        lambda x: torch.einsum("bij,bj->bi", matrices, x),
        b,
        torch.zeros_like(b),
        max_iter=4000,
        rtol=1e-12,
        atol=0.0,
        restart=restart,
    )
    assert result.status.tolist() == [Status.CONVERGED] * 3
    exact = torch.linalg.solve(matrices, b)
    torch.testing.assert_close(result.state, exact, rtol=1e-8, atol=1e-9)
    if restart == 40:  # unrestarted GMRES is exact after n products (+1 for the residual)
        assert int(result.nstep.max()) <= 41


def test_gmres_warm_start_and_finished_rows_cost_nothing():
    matrices, b = _batched_system(batch=2, n=12, seed=1)
    exact = torch.linalg.solve(matrices, b)
    start = exact.clone()
    start[1] = 0.0  # row 0 starts at its solution
    result = gmres(
        lambda x: torch.einsum("bij,bj->bi", matrices, x),
        b,
        start,
        max_iter=100,
        rtol=1e-12,
        atol=0.0,
    )
    assert result.status.tolist() == [Status.CONVERGED] * 2
    assert int(result.nstep[0]) == 1 < int(result.nstep[1])  # one product: its residual
    torch.testing.assert_close(result.state, exact, rtol=1e-8, atol=1e-9)


def test_gmres_reports_budget_and_nonfinite_rows():
    matrices, b = _batched_system(batch=2, n=30, seed=2)
    b[1, 0] = float("nan")
    result = gmres(
        lambda x: torch.einsum("bij,bj->bi", matrices, x),
        b,
        torch.zeros_like(b),
        max_iter=3,
        rtol=1e-12,
        atol=0.0,
    )
    assert result.status.tolist() == [Status.MAX_ITER, Status.NONFINITE]
    assert int(result.nstep[0]) <= 4


@pytest.mark.parametrize("restart", [0, 2.5, True])
def test_gmres_restart_is_checked(restart):
    with pytest.raises((TypeError, ValueError), match="restart"):
        GMRES(restart=restart)
