"""``f`` with an auxiliary output (``has_aux=True``) and the forward solve at a fixed input."""

from __future__ import annotations

import pytest
import torch

from jiio_ext import EnvelopeGrad, ImplicitGrad, solve_forward, solve_joint
from jiio_ext.augmented import merge_rows

D = torch.float64
TIGHT = dict(step_size=0.3, rtol=1e-11, atol=1e-13, max_iter=800)


class Problem:
    """A small contractive DEQ with a readout head; the head's output is the aux."""

    def __init__(self, batch: int = 4, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(5, 5, generator=gen, dtype=D)
        self.W = torch.nn.Parameter(0.6 * w / torch.linalg.matrix_norm(w, 2))
        self.U = torch.nn.Parameter(0.5 * torch.randn(3, 5, generator=gen, dtype=D))
        self.H = torch.nn.Parameter(0.5 * torch.randn(5, 2, generator=gen, dtype=D))
        self.target = 0.3 * torch.randn(batch, 2, generator=gen, dtype=D)
        self.batch = batch

    def layer(self, z, x):
        return torch.tanh(z @ self.W + x @ self.U)

    def head(self, z):
        return z @ self.H

    def f_aux(self, kind: str):
        def f(z, x):
            z_next = self.layer(z, x)
            out = self.head(z)
            if kind == "dict":  # a nested pytree with a per-sample and a scalar leaf
                return z_next, {"out": out, "extra": (z.sum(1), out.pow(2).mean())}
            return z_next, (out, z.sum(1))

        return f

    @staticmethod
    def out_of(aux):
        return aux["out"] if isinstance(aux, dict) else aux[0]

    def loss(self, out, x):
        return (out - self.target).pow(2).sum(1) + 0.1 * x.pow(2).sum(1)

    def zeros(self):
        return torch.zeros(self.batch, 3, dtype=D), torch.zeros(self.batch, 5, dtype=D)


def test_merge_rows_over_a_pytree():
    full = {"a": torch.zeros(3, 2), "b": (torch.zeros(3), torch.tensor(1.0)), "c": 7}
    part = {"a": torch.ones(2, 2), "b": (torch.full((2,), 2.0), torch.tensor(4.0)), "c": 8}
    merged = merge_rows(full, part, torch.tensor([0, 2]))
    assert merged["a"][:, 0].tolist() == [1.0, 0.0, 1.0]
    assert merged["b"][0].tolist() == [2.0, 0.0, 2.0]
    assert float(merged["b"][1]) == 4.0 and merged["c"] == 8
    with pytest.raises(ValueError, match="aux"):
        merge_rows(full, {"a": torch.ones(2, 2)}, torch.tensor([0, 2]))


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_has_aux_matches_the_plain_objective_and_merges_frozen_rows(kind):
    p = Problem()
    x0, z0 = p.zeros()
    plain = solve_joint(p.layer, lambda z, x: p.loss(p.head(z), x), x0, z0=z0, subset=True, **TIGHT)
    assert plain.success, plain.summary()
    # sample 0 starts at its optimum: it freezes first, the others keep iterating
    x_start, z_start = x0.clone(), z0.clone()
    x_start[0], z_start[0] = plain.x[0], plain.z[0]
    mu_start = torch.zeros_like(z0)
    mu_start[0] = plain.mu[0]
    f_rows, seen = [], []
    f = p.f_aux(kind)

    def counted_f(z, x):
        f_rows.append(x.shape[0])
        return f(z, x)

    def objective(z, x, aux):
        out = p.out_of(aux)
        # the objective sees the whole batch; frozen rows carry their frozen z and aux
        seen.append((out.detach().clone(), p.head(z).detach().clone()))
        assert out.shape[0] == p.batch
        return p.loss(out, x)

    sol = solve_joint(
        counted_f, objective, x_start, z0=z_start, mu0=mu_start, has_aux=True, **TIGHT
    )
    assert sol.success, sol.summary()
    assert int(sol.nstep[0]) < int(sol.nstep[1:].min())
    assert min(f_rows) < p.batch  # some iterations evaluated f on the active rows only
    for out, recomputed in seen:
        torch.testing.assert_close(out, recomputed, rtol=0, atol=1e-14)
    torch.testing.assert_close(sol.x, plain.x, rtol=0, atol=1e-8)
    # the reported aux and objective are at the returned answer
    out = p.out_of(sol.aux)
    torch.testing.assert_close(out, p.head(sol.z).detach(), rtol=0, atol=1e-14)
    torch.testing.assert_close(sol.objective, p.loss(out, sol.x).detach(), rtol=0, atol=1e-14)
    assert sol.output is sol.aux
    if kind == "dict":
        torch.testing.assert_close(sol.aux["extra"][0], sol.z.sum(1), rtol=0, atol=1e-14)
        assert sol.aux["extra"][1].dim() == 0


def test_has_aux_with_targets_runs_on_the_active_rows():
    p = Problem()
    x0, z0 = p.zeros()

    def objective(z, x, aux, target):
        assert aux[0].shape[0] == x.shape[0] == target.shape[0]
        return (aux[0] - target).pow(2).sum(1) + 0.1 * x.pow(2).sum(1)

    sol = solve_joint(
        p.f_aux("tuple"), objective, x0, z0=z0, targets=p.target, has_aux=True, **TIGHT
    )
    plain = solve_joint(p.layer, lambda z, x: p.loss(p.head(z), x), x0, z0=z0, **TIGHT)
    assert sol.success
    torch.testing.assert_close(sol.x, plain.x, rtol=0, atol=1e-8)


@pytest.mark.parametrize("mode", ["envelope", "implicit"])
def test_has_aux_gradients_match_finite_differences(mode):
    p = Problem(seed=3)
    x0, z0 = p.zeros()
    c = torch.randn(p.batch, 2, generator=torch.Generator().manual_seed(4), dtype=D)

    def objective(z, x, aux):
        return p.loss(aux["out"], x)

    def outer(sol):
        if mode == "envelope":  # the inner objective: Danskin's gradient is exact
            return p.loss(sol.aux["out"], sol.x).sum()
        return (sol.aux["out"] * c).sum() + sol.x.sum()

    grad_mode = (EnvelopeGrad if mode == "envelope" else ImplicitGrad)(rtol=1e-11, atol=1e-14)
    f = p.f_aux("dict")
    sol = solve_joint(f, objective, x0, z0=z0, has_aux=True, grad=grad_mode, **TIGHT)
    params = [p.W, p.U, p.H]
    grads = torch.autograd.grad(outer(sol), params)
    h = 1e-5
    gen = torch.Generator().manual_seed(5)
    for param, grad in zip(params, grads):
        direction = torch.randn(param.shape, generator=gen, dtype=D)
        with torch.no_grad():
            param += h * direction
            plus = outer(solve_joint(f, objective, x0, z0=z0, has_aux=True, **TIGHT))
            param -= 2 * h * direction
            minus = outer(solve_joint(f, objective, x0, z0=z0, has_aux=True, **TIGHT))
            param += h * direction
        torch.testing.assert_close(
            (grad * direction).sum(), (plus - minus) / (2 * h), rtol=1e-5, atol=1e-9
        )


def test_has_aux_needs_a_pair():
    p = Problem()
    x0, z0 = p.zeros()
    with pytest.raises(ValueError, match="has_aux"):
        solve_joint(p.layer, lambda z, x, aux: z.sum(1), x0, z0=z0, has_aux=True, max_iter=3)


def test_solve_forward_matches_torchdeq_fixed_point():
    torchdeq = pytest.importorskip("torchdeq")
    p = Problem(seed=7)
    x = torch.randn(p.batch, 3, generator=torch.Generator().manual_seed(8), dtype=D)
    deq = torchdeq.get_deq(f_solver="anderson", f_max_iter=300, f_tol=1e-13).eval()
    with torch.no_grad():
        ref = deq(lambda z: p.layer(z, x), torch.zeros(p.batch, 5, dtype=D))[0][-1]
    sol = solve_forward(
        p.f_aux("dict"),
        x,
        z0=torch.zeros(p.batch, 5, dtype=D),
        has_aux=True,
        rtol=1e-12,
        max_iter=300,
    )
    assert sol.success and sol.info["method"] == "forward"
    torch.testing.assert_close(sol.z, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(sol.aux["out"], p.head(ref), rtol=0, atol=1e-10)
    assert torch.equal(sol.x, x) and bool(torch.isnan(sol.objective).all())


def test_solve_forward_envelope_gradient_and_warm_start():
    p = Problem(seed=9)
    x0, z0 = p.zeros()
    joint = solve_joint(p.layer, lambda z, x: p.loss(p.head(z), x), x0, z0=z0, **TIGHT)
    cold = solve_forward(p.layer, joint.x, z0=z0, rtol=1e-12, max_iter=300)
    warm = solve_forward(
        p.layer, joint.x, warm_start=joint, rtol=1e-12, max_iter=300, grad="envelope"
    )
    assert int(warm.nstep.max()) < int(cold.nstep.max())
    assert torch.equal(warm.mu, joint.mu)
    torch.testing.assert_close(warm.z.detach(), cold.z, rtol=0, atol=1e-10)
    # the envelope gradient of the inner loss at x* fixed: against finite differences in W
    (grad,) = torch.autograd.grad(p.loss(p.head(warm.z), warm.x).sum(), [p.W])
    direction = torch.randn(p.W.shape, generator=torch.Generator().manual_seed(10), dtype=D)
    h = 1e-6
    values = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            p.W += sign * h * direction
            z = solve_forward(p.layer, joint.x, z0=z0, rtol=1e-13, max_iter=400).z
            values.append(p.loss(p.head(z), joint.x).sum())
            p.W -= sign * h * direction
    fd = (values[0] - values[1]) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), fd, rtol=1e-6, atol=1e-10)
    with pytest.raises(ValueError, match="envelope"):
        solve_forward(p.layer, joint.x, z0=z0, grad="implicit")


def test_solve_forward_names_its_own_arguments_in_errors():
    f = lambda z, x: 0.5 * z + x  # noqa: E731
    with pytest.raises(TypeError, match="^x: expected a floating-point tensor"):
        solve_forward(f, torch.zeros(2, 3, dtype=torch.long), z0=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="does not match x's batch size 2"):
        solve_forward(f, torch.zeros(2, 3), z0=torch.zeros(3, 3))
