"""Small float64 test problems with dense reference computations (shared by the tests)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPE = torch.float64


@dataclass
class Problem:
    """A small DEQ ``z = tanh(z Wᵀ + x U + b)`` and a regularised least-squares objective."""

    W: torch.Tensor
    U: torch.Tensor
    b: torch.Tensor
    target: torch.Tensor
    reg: float

    @property
    def batch(self) -> int:
        return self.target.shape[0]

    def f(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U + self.b)

    def objective(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (z - self.target).pow(2).sum(1) + self.reg * x.pow(2).sum(1)

    def x0(self) -> torch.Tensor:
        return torch.zeros(self.batch, self.U.shape[0], dtype=DTYPE)

    def z0(self) -> torch.Tensor:
        return torch.zeros(self.batch, self.W.shape[0], dtype=DTYPE)


def make_problem(batch: int = 4, dz: int = 5, dx: int = 3, seed: int = 0, reg: float = 0.05):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(dz, dz, generator=gen, dtype=DTYPE)
    W = 0.5 * W / torch.linalg.matrix_norm(W, 2)
    U = 0.3 * torch.randn(dx, dz, generator=gen, dtype=DTYPE)
    b = 0.1 * torch.randn(dz, generator=gen, dtype=DTYPE)
    target = 0.5 * torch.randn(batch, dz, generator=gen, dtype=DTYPE)
    return Problem(W, U, b, target, reg)


def forward_fixed_point(f, x: torch.Tensor, z0: torch.Tensor, iters: int = 2000) -> torch.Tensor:
    """Reference forward solve by plain iteration (f contractive)."""
    z = z0
    with torch.no_grad():
        for _ in range(iters):
            z_next = f(z, x)
            if (z_next - z).abs().max() < 1e-15:
                return z_next
            z = z_next
    return z


def dense_reference(problem: Problem, z: torch.Tensor, x: torch.Tensor):
    """Dense per-sample adjoint and input gradient at ``(z, x)``: ``(z*, μ, ∇ℓ(x))``."""
    z_star = forward_fixed_point(problem.f, x, z)
    mus, grads = [], []
    for i in range(problem.batch):
        zi, xi = z_star[i : i + 1], x[i : i + 1]
        jz = torch.autograd.functional.jacobian(lambda v, xi=xi: problem.f(v, xi), zi).reshape(
            zi.numel(), zi.numel()
        )
        jx = torch.autograd.functional.jacobian(lambda v, zi=zi: problem.f(zi, v), xi).reshape(
            zi.numel(), xi.numel()
        )
        tgt = problem.target[i : i + 1]
        dl_dz = (2 * (zi - tgt)).reshape(-1)
        dl_dx = (2 * problem.reg * xi).reshape(-1)
        eye = torch.eye(zi.numel(), dtype=DTYPE)
        mu = torch.linalg.solve(eye - jz.T, dl_dz)
        mus.append(mu)
        grads.append(dl_dx + jx.T @ mu)
    return z_star, torch.stack(mus), torch.stack(grads)
