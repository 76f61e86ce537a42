"""The higher adapter on real torchdeq models (float64) against independent references.

References: finite differences of the query loss through a fully converged inner solution
(the model written out with plain fixed-point iteration, Newton on the adapted parameters),
and higher itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

torchdeq = pytest.importorskip("torchdeq")
higher = pytest.importorskip("higher")
from jiio_ext.adapters.higher import innerloop_ctx  # noqa: E402
from torchdeq import get_deq  # noqa: E402

D = torch.float64
PROX = 1.0
LR = 0.3
ADAPT = ("context", "head.weight", "head.bias")
TIGHT = dict(rtol=1e-12, atol=1e-14, backward_rtol=1e-12, backward_atol=1e-15)


class FiLMDEQ(nn.Module):
    """A FiLM-conditioned torchdeq classifier; the task context is a parameter or a keyword."""

    def __init__(self, dx=3, dz=6, classes=3, ctx=2, seed=0, tol=1e-13):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.dz = dz
        self.cell = nn.Linear(dz, dz).to(D)
        self.inject = nn.Linear(dx, dz).to(D)
        self.film = nn.Linear(ctx, 2 * dz).to(D)
        self.head = nn.Linear(dz, classes).to(D)
        self.context = nn.Parameter(0.1 * torch.randn(ctx, generator=gen, dtype=D))
        with torch.no_grad():
            for lin in (self.cell, self.inject, self.film, self.head):
                lin.weight.copy_(0.5 * torch.randn(lin.weight.shape, generator=gen, dtype=D))
                lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=gen, dtype=D))
            self.cell.weight.mul_(0.5 / torch.linalg.matrix_norm(self.cell.weight, 2))
        self.deq = get_deq(
            f_solver="anderson",
            f_max_iter=200,
            f_tol=tol,
            ift=True,
            b_solver="anderson",
            b_max_iter=200,
            b_tol=tol,
        )

    def forward(self, x, context=None):
        v = self.context if context is None else context
        gamma, beta = self.film(v).chunk(2, -1)
        u = self.inject(x) * (1 + gamma) + beta
        z0 = torch.zeros(x.shape[0], self.dz, dtype=x.dtype)
        z = self.deq(lambda z: torch.tanh(self.cell(z) + u), z0)[0][-1]
        return self.head(z)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids oversubscribing the shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(seed=1, n_spt=6, n_qry=5):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(n_spt, 3, generator=gen, dtype=D)
    ys = torch.arange(n_spt) % 3
    xq = torch.randn(n_qry, 3, generator=gen, dtype=D)
    yq = torch.randint(0, 3, (n_qry,), generator=gen)
    return xs, ys, xq, yq


def _adapted(net):
    return [dict(net.named_parameters())[n] for n in ADAPT]


def _jiio_meta_grad(net, xs, ys, xq, yq, steps=60, prox=PROX, **options):
    """JIIO's meta-gradient; a per-group ``prox`` puts the context and the head in two groups."""
    net.zero_grad()
    adapted = _adapted(net)
    groups = [{"params": adapted[:1]}, {"params": adapted[1:]}]
    opt = torch.optim.SGD(groups if isinstance(prox, tuple) else adapted, lr=LR)
    with innerloop_ctx(net, opt, copy_initial_weights=False, prox=prox, **options) as (
        fnet,
        diffopt,
    ):
        for _ in range(steps):
            diffopt.step(F.cross_entropy(fnet(xs), ys))
        F.cross_entropy(fnet(xq), yq).backward()
        status = diffopt.status.clone()
    return {n: p.grad.clone() for n, p in net.named_parameters()}, status


def _reference_forward(params, x, dz=6, iters=90):
    """FiLMDEQ's forward written out with plain fixed-point iteration (contraction 0.5)."""
    gamma, beta = F.linear(params["context"], params["film.weight"], params["film.bias"]).chunk(
        2, -1
    )
    u = F.linear(x, params["inject.weight"], params["inject.bias"]) * (1 + gamma) + beta
    z = torch.zeros(x.shape[0], dz, dtype=x.dtype)
    for _ in range(iters):
        z = torch.tanh(F.linear(z, params["cell.weight"], params["cell.bias"]) + u)
    return F.linear(z, params["head.weight"], params["head.bias"])


def _converged_query_loss(theta, xs, ys, xq, yq, steps=None, prox=PROX):
    """Query loss at the inner solution: Newton to machine precision, or ``steps`` GD steps.

    ``prox`` is one weight, or a pair (context, head) as in :func:`_jiio_meta_grad`.
    """
    shapes = [theta[n].shape for n in ADAPT]
    anchor = torch.cat([theta[n].reshape(-1) for n in ADAPT])
    if isinstance(prox, tuple):
        context_size = theta["context"].numel()
        prox = torch.cat(
            [
                torch.full((context_size,), prox[0], dtype=D),
                torch.full((anchor.numel() - context_size,), prox[1], dtype=D),
            ]
        )

    def unflat(vec):
        parts = torch.split(vec, [s.numel() for s in shapes])
        return {n: p.view(s) for n, p, s in zip(ADAPT, parts, shapes)}

    def inner(vec):
        loss = F.cross_entropy(_reference_forward({**theta, **unflat(vec)}, xs), ys)
        return loss + 0.5 * (prox * (vec - anchor).pow(2)).sum()

    phi = anchor.clone()
    for _ in range(10 if steps is None else steps):
        grad = torch.autograd.functional.jacobian(inner, phi)
        if steps is None:
            phi = phi - torch.linalg.solve(torch.autograd.functional.hessian(inner, phi), grad)
        else:
            phi = phi - LR * grad
    return F.cross_entropy(_reference_forward({**theta, **unflat(phi)}, xq), yq)


def _directional_fd(loss_at, theta, direction, h=1e-5):
    plus = loss_at({n: theta[n] + h * direction[n] for n in theta})
    minus = loss_at({n: theta[n] - h * direction[n] for n in theta})
    return (plus - minus) / (2 * h)


def _directions(net, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen, dtype=D) for n, p in net.named_parameters()}


@pytest.mark.parametrize("prox", [PROX, (2.0, 0.3)], ids=["one-prox", "prox-per-group"])
def test_meta_gradient_matches_finite_differences_of_converged_inner_solution(prox):
    net = FiLMDEQ(tol=1e-11)
    xs, ys, xq, yq = _data()
    grads, status = _jiio_meta_grad(
        net, xs, ys, xq, yq, steps=80, prox=prox, meta_gradient="implicit", **TIGHT
    )
    assert bool((status == 0).all())
    theta = {n: p.detach().clone() for n, p in net.named_parameters()}
    direction = _directions(net)
    fd = _directional_fd(
        lambda t: _converged_query_loss(t, xs, ys, xq, yq, prox=prox), theta, direction
    )
    analytic = sum((grads[n] * direction[n]).sum() for n in grads)
    assert abs(float(analytic - fd)) <= 1e-4 * abs(float(fd))
    # the DEQ weights get a meta-gradient only through z*(x; θ) and φ*(θ)
    assert float(grads["cell.weight"].abs().sum()) > 0


def _computed_query_loss(net, data, steps, backward, tasks=None, **options):
    """The user's loop (every parameter adapted, higher's MAML example); the query loss."""
    xs, ys, xq, yq = data
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    with innerloop_ctx(net, opt, copy_initial_weights=False, tasks=tasks, **options) as (
        fnet,
        diffopt,
    ):
        for _ in range(steps):
            out = fnet(xs)
            if tasks:
                diffopt.step(torch.stack([F.cross_entropy(o, y) for o, y in zip(out, ys)]))
            else:
                diffopt.step(F.cross_entropy(out, ys))
        out = fnet(xq)
        query = sum(F.cross_entropy(o, y) for o, y in zip(out, yq)) if tasks else None
        query = F.cross_entropy(out, yq) if query is None else query
        if backward:
            query.backward()
    return query.detach()


@pytest.mark.parametrize(
    ("steps", "tasks"), [(1, None), (5, None), (20, None), (5, 2)], ids=["1", "5", "20", "5-tasks"]
)
def test_meta_gradient_is_the_gradient_of_the_computed_steps(steps, tasks):
    """Default (unrolled) meta-gradient = central differences of the same computation."""
    net = FiLMDEQ(tol=1e-12)
    data = _data() if tasks is None else tuple(torch.stack(p) for p in zip(_data(3), _data(4)))
    net.zero_grad()
    _computed_query_loss(net, data, steps, True, tasks)
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    assert all(bool(g.abs().sum() > 0) for g in grads.values())
    theta = {n: p.detach().clone() for n, p in net.named_parameters()}
    direction = _directions(net)

    def loss_at(point):
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(point[n])
        return _computed_query_loss(net, data, steps, False, tasks)

    fd = _directional_fd(loss_at, theta, direction)
    analytic = sum((grads[n] * direction[n]).sum() for n in grads)
    assert abs(float(analytic - fd)) <= 1e-4 * abs(float(fd))


def test_implicit_meta_gradient_warns_when_the_query_comes_before_convergence():
    net = FiLMDEQ(tol=1e-10)
    xs, ys, xq, yq = _data()
    with pytest.warns(RuntimeWarning, match=r"not converged at the query for 1 of 1 task.*z "):
        _, status = _jiio_meta_grad(net, xs, ys, xq, yq, steps=3, meta_gradient="implicit")
    assert status.tolist() == [1]


def test_prox_defaults_never_leave_gradients_missing():
    net = FiLMDEQ(tol=1e-10)
    xs, ys, xq, yq = _data()
    for prox in (None, 0.0):  # unrolled: plain MAML, the meta-parameters are the start point
        net.zero_grad()
        _computed_query_loss(net, (xs, ys, xq, yq), 3, True, prox=prox)
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for prox, message in ((None, "needs an explicit prox > 0"), (0.0, "prox: 0 for param group 0")):
        with pytest.raises(ValueError, match=message):
            with innerloop_ctx(net, opt, meta_gradient="implicit", prox=prox):
                pass
    with pytest.raises(ValueError, match="meta_gradient: expected one of"):
        with innerloop_ctx(net, opt, meta_gradient="exact"):
            pass


def test_lr_scale_schedules_the_steps():
    from jiio_ext.schedules import StepSwitch

    net = FiLMDEQ(tol=1e-10)
    xs, ys, _, _ = _data()

    def fast_after(steps, lr, **options):
        with innerloop_ctx(net, torch.optim.SGD(_adapted(net), lr=lr), **options) as (f, opt):
            for _ in range(steps):
                opt.step(F.cross_entropy(f(xs), ys))
            return torch.cat([p.detach().reshape(-1) for p in f.parameters(time=-1)])

    torch.testing.assert_close(fast_after(3, LR, lr_scale=0.5), fast_after(3, LR / 2))
    switch = {"lr_scale": StepSwitch(1.0, 0.5, min_switch=2), "max_iter": 4}
    torch.testing.assert_close(fast_after(2, LR, **switch), fast_after(2, LR))
    four = fast_after(4, LR, **switch)
    assert not torch.allclose(four, fast_after(4, LR)) and not torch.allclose(
        four, fast_after(4, LR, lr_scale=0.5)
    )


def test_backward_solvers_agree():
    net = FiLMDEQ(tol=1e-12)
    xs, ys, xq, yq = _data()
    tight = {"backward_rtol": 1e-12, "backward_atol": 1e-15}
    grads = [
        _jiio_meta_grad(net, xs, ys, xq, yq, steps=5, backward_solver=solver, **tight)[0]
        for solver in ("neumann", "anderson")
    ]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-9, atol=1e-12, msg=n)
    with pytest.raises(ValueError, match="backward_solver: expected 'anderson' or 'neumann'"):
        with innerloop_ctx(net, torch.optim.SGD(_adapted(net), lr=LR), backward_solver="cg"):
            pass


def test_deq_adjoint_stops_at_the_accuracy_of_its_forward_fixed_point():
    """A DEQ's adjoint solve is not taken tighter than its fixed point's relative residual."""
    from jiio_ext.adapters._higher_backward import AdjointSolve, Gate, attach_ift

    solve = AdjointSolve(200, 1e-12, 0.0, "neumann")

    def grad_of_fixed_point(eps):  # f(z) = z/2 + θ, z* = 2θ; the state is z*(1 + eps)
        theta = torch.ones(1, 3, dtype=D, requires_grad=True)
        z = (2 * (1 + eps) * theta).detach().requires_grad_()
        (out,) = attach_ift((z,), (0.5 * z + theta,), Gate(), solve)
        out.sum().backward()
        return theta.grad  # exactly 2 for a converged adjoint

    exact = grad_of_fixed_point(0.0)
    torch.testing.assert_close(exact, torch.full_like(exact, 2.0), rtol=1e-11, atol=0.0)
    loose = grad_of_fixed_point(2e-3)  # relative residual 1e-3: the adjoint stops there
    error = float((loose - 2.0).abs().max() / 2.0)
    assert 1e-6 < error < 2e-3


def test_deq_adjoint_is_solved_as_the_models_own_backward_would():
    """A DEQ's adjoint takes at most the DEQ's b_max_iter products and stops at its b_tol."""
    from jiio_ext.adapters._higher_backward import AdjointSolve, Gate, ModelBackward, attach_ift

    deq = get_deq(f_solver="anderson", b_max_iter=7, b_tol=1e-3, b_stop_mode="rel")
    assert ModelBackward.of(deq) == ModelBackward(7, 1e-3, True)
    assert ModelBackward.of(get_deq(b_tol=1e-4)) == ModelBackward(40, 1e-4, False)
    assert ModelBackward.of(nn.Linear(1, 1)) == ModelBackward()

    def adjoint(model, contraction, method="neumann"):
        """The relative error of dz*/dθ for z = c z + θ (exactly 1/(1 − c) per element)."""
        theta = torch.ones(2, 3, dtype=D, requires_grad=True)
        z = (theta / (1 - contraction)).detach().requires_grad_()
        solve = AdjointSolve(100, 1e-12, 0.0, method)
        (out,) = attach_ift((z,), (contraction * z + theta,), Gate(), solve, 1, model)
        grad = torch.autograd.grad(out.sum(), theta)[0]
        return float((grad * (1 - contraction) - 1).abs().max())

    assert adjoint(None, 0.5) < 1e-11
    # the series stops at the model's relative test (its error then is about the tolerance),
    # not at backward_rtol's 1e-12; Anderson (exact on a linear map) is only bounded by it
    assert 1e-6 < adjoint(ModelBackward(100, 1e-3, True), 0.5) < 2e-3
    assert adjoint(ModelBackward(100, 1e-3, True), 0.5, "anderson") < 2e-3
    # absolute: the k-th product leaves ||w⁺ − w|| = 0.5^k √3 per row, < 1e-2 at k = 8
    assert adjoint(ModelBackward(100, 1e-2, False), 0.5) == pytest.approx(0.5**9, rel=1e-9)
    assert adjoint(ModelBackward(100, 1e-2, False), 0.5, "anderson") < 1e-2
    with pytest.warns(RuntimeWarning, match="stopped at the DEQ's own b_max_iter \\(3 products"):
        capped = adjoint(ModelBackward(3, 0.0), 0.9)
    assert capped == pytest.approx(0.9**4, rel=1e-9)  # w = v + Jᵀv + … + (Jᵀ)³v: 3 products


def test_deq_solves_are_torchdeqs_anderson_and_return_what_torchdeq_returns():
    """The adapter's Anderson forward is torchdeq's algorithm; fnet(x) before any step is net(x)."""
    from jiio_ext.adapters._higher_anderson import anderson_solve, plain_anderson_budget
    from torchdeq.solver.anderson import anderson_solver

    gen = torch.Generator().manual_seed(0)
    weight = 0.9 * torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=D))[0]
    u = torch.randn(5, 8, generator=gen, dtype=D)

    def f(z):  # a barely contractive map: the budget binds at the tighter tolerances
        return torch.tanh(z @ weight.T + u)

    for tol, mode, budget in ((1e-3, "abs", 40), (1e-10, "rel", 40), (1e-12, "abs", 9)):
        ours, info = anderson_solve(f, torch.zeros_like(u), budget, tol, mode)
        theirs, _, their_info = anderson_solver(
            f, torch.zeros_like(u), max_iter=budget, tol=tol, stop_mode=mode
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        for key in ("nstep", "abs_lowest", "rel_lowest", "abs_trace", "rel_trace"):
            torch.testing.assert_close(info[key].to(D), their_info[key].to(D), msg=key)
    net = FiLMDEQ(tol=1e-6)
    assert plain_anderson_budget(net.deq, u, (), {}) == 200
    assert plain_anderson_budget(net.deq, u, (), {"solver_kwargs": {}}) is None
    assert plain_anderson_budget(get_deq(f_solver="broyden"), u, (), {}) is None
    xs, ys, xq, _ = _data()
    with innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=LR)) as (fnet, _):
        torch.testing.assert_close(fnet(xq), net(xq), rtol=1e-12, atol=1e-12)


def test_jacobian_penalty_estimates_the_deq_jacobian_at_the_trajectory_point():
    torch.manual_seed(0)
    net = FiLMDEQ(tol=1e-12)
    xs, ys, _, _ = _data()
    opt = torch.optim.SGD(_adapted(net), lr=LR)
    with innerloop_ctx(net, opt, None, False, jac_reg=0.5, jac_probes=400) as (fnet, diffopt):
        diffopt.step(F.cross_entropy(fnet(xs), ys))  # the latest step is at z*(x; θ)
        penalty = diffopt.jacobian_penalty()
    penalty.backward()
    assert float(net.cell.weight.grad.abs().sum()) > 0
    with torch.no_grad():  # exact: f = tanh(W z + u), so ∂f/∂z = diag(1 − z*²) W per sample
        params = dict(net.named_parameters())
        gamma, beta = net.film(params["context"]).chunk(2, -1)
        u = net.inject(xs) * (1 + gamma) + beta
        z = torch.zeros(xs.shape[0], net.dz, dtype=D)
        for _ in range(200):
            z = torch.tanh(net.cell(z) + u)
        exact = (
            sum(((1 - zi.pow(2))[:, None] * net.cell.weight).pow(2).sum() for zi in z) / z.numel()
        )
    assert abs(float(penalty.detach()) - 0.5 * float(exact)) <= 0.2 * 0.5 * float(exact)
    with pytest.raises(ValueError, match="jac_reg: expected a finite number >= 0"):
        with innerloop_ctx(net, opt, jac_reg=-1.0):
            pass


def test_higher_meta_gradient_through_torchdeq_is_wrong_on_the_same_deq():
    """higher through torchdeq with ift=True misses second-order terms (design.md)."""
    net = FiLMDEQ(tol=1e-9)
    xs, ys, xq, yq = _data()
    steps = 3
    opt = torch.optim.SGD(_adapted(net), lr=LR)
    with higher.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
        for _ in range(steps):
            fast = dict(zip(dict(net.named_parameters()), fnet.parameters()))
            prox = sum(
                0.5 * PROX * (fast[n] - dict(net.named_parameters())[n]).pow(2).sum() for n in ADAPT
            )
            diffopt.step(F.cross_entropy(fnet(xs), ys) + prox)
        F.cross_entropy(fnet(xq), yq).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    theta = {n: p.detach().clone() for n, p in net.named_parameters()}
    direction = _directions(net)
    fd = _directional_fd(
        lambda t: _converged_query_loss(t, xs, ys, xq, yq, steps=steps), theta, direction
    )
    analytic = sum((grads[n] * direction[n]).sum() for n in grads)
    rel = abs(float(analytic - fd)) / abs(float(fd))
    assert rel > 0.02, f"higher unexpectedly exact here (relative error {rel:.3g})"


def _maml_loop(module, net, xs, ys, xq, yq, steps):
    """A MAML meta-step written against higher's API; only the module differs."""
    inner_opt = torch.optim.SGD(_adapted(net), lr=LR)
    with module.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
        before = float(F.cross_entropy(fnet(xq), yq).detach())
        for _ in range(steps):
            diffopt.step(F.cross_entropy(fnet(xs), ys))
        query = F.cross_entropy(fnet(xq), yq)
        query.backward()
        fast = [p.detach().clone() for p in fnet.parameters(time=-1)]
        listed = [p.detach().clone() for p in fnet.fast_params]
        explicit = fnet(xq, params=fnet.fast_params).detach()
        latest = fnet(xq).detach()
    return before, float(query.detach()), fast, listed, explicit, latest


@pytest.mark.parametrize("which", ["jiio", "higher"])
def test_drop_in_maml_loop_runs_with_only_the_import_changed(which):
    import jiio_ext.adapters.higher as jiio_higher

    module = jiio_higher if which == "jiio" else higher
    net = FiLMDEQ(tol=1e-6)
    xs, ys, xq, yq = _data(n_qry=6)
    yq = torch.arange(6) % 3
    xq = xs + 0.01  # the query set resembles the support set: adaptation helps
    steps = 15 if which == "jiio" else 3  # higher differentiates every DEQ solve: slow
    before, after, fast, listed, explicit, latest = _maml_loop(module, net, xs, ys, xq, yq, steps)
    assert after < before
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    names = list(dict(net.named_parameters()))
    for a, b in zip(fast, listed):
        torch.testing.assert_close(a, b)
    assert not torch.equal(fast[names.index("head.weight")], net.head.weight.detach())
    torch.testing.assert_close(fast[names.index("cell.weight")], net.cell.weight.detach())
    torch.testing.assert_close(explicit, latest)


def test_context_keyword_adaptation_matches_parameter_adaptation():
    """Adapting a context keyword equals adapting the same vector held as a parameter."""
    net = FiLMDEQ()
    xs, ys, xq, yq = _data()
    results = []
    for as_keyword in (False, True):
        net.zero_grad()
        if as_keyword:
            opt = torch.optim.SGD([net.head.weight], lr=LR)  # only its lr is read
            ctx = innerloop_ctx(
                net, opt, copy_initial_weights=False, prox=PROX, context=net.context
            )
        else:
            opt = torch.optim.SGD([net.context], lr=LR)
            ctx = innerloop_ctx(net, opt, copy_initial_weights=False, prox=PROX)
        with ctx as (fnet, diffopt):
            for _ in range(40):
                diffopt.step(F.cross_entropy(fnet(xs), ys))
            F.cross_entropy(fnet(xq), yq).backward()
        results.append(net.cell.weight.grad.clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-8, atol=1e-12)


def test_batched_tasks_equal_per_task_solves():
    net = FiLMDEQ(tol=1e-11)
    tasks = [_data(seed=s) for s in (3, 4, 5)]
    xs, ys, xq, yq = (torch.stack(parts) for parts in zip(*tasks))
    opt = torch.optim.SGD(_adapted(net), lr=LR)
    net.zero_grad()
    with innerloop_ctx(net, opt, copy_initial_weights=False, tasks=3) as (fnet, diffopt):
        for _ in range(25):
            losses = torch.stack(
                [F.cross_entropy(out, y) for out, y in zip(fnet(xs), ys)]
            )  # per-task losses (T,)
            diffopt.step(losses)
        batched_fast = [p.detach().clone() for p in fnet.parameters(time=-1)]
        query = fnet(xq)
        sum(F.cross_entropy(out, y) for out, y in zip(query, yq)).backward()
        assert diffopt.status.shape == (3,)
    batched = {n: p.grad.clone() for n, p in net.named_parameters()}
    total = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    names = list(total)
    for t, (xs_t, ys_t, xq_t, yq_t) in enumerate(tasks):
        net.zero_grad()
        with innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(25):
                diffopt.step(F.cross_entropy(fnet(xs_t), ys_t))
            fast = [p.detach() for p in fnet.parameters(time=-1)]
            F.cross_entropy(fnet(xq_t), yq_t).backward()
        for n in ADAPT:
            i = names.index(n)
            torch.testing.assert_close(batched_fast[i][t], fast[i], rtol=1e-9, atol=1e-11)
        for n, p in net.named_parameters():
            total[n] += p.grad
    for n in names:
        torch.testing.assert_close(batched[n], total[n], rtol=1e-7, atol=1e-10, msg=n)


class _Unvmappable(FiLMDEQ):
    """FiLMDEQ with a host sync in its forward: torch.func.vmap cannot trace it."""

    def forward(self, x, context=None):
        if float(x.abs().sum()) < 0:  # never true; .item() under vmap raises
            raise AssertionError
        return super().forward(x, context)


def _batched_meta_grad(net, tasks, **options):
    xs, ys, xq, yq = (torch.stack(parts) for parts in zip(*tasks))
    net.zero_grad()
    opt = torch.optim.SGD(_adapted(net), lr=LR)
    with innerloop_ctx(net, opt, copy_initial_weights=False, tasks=3, **options) as (fnet, diffopt):
        for _ in range(10):
            diffopt.step(torch.stack([F.cross_entropy(o, y) for o, y in zip(fnet(xs), ys)]))
        sum(F.cross_entropy(o, y) for o, y in zip(fnet(xq), yq)).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def test_vmapped_tasks_equal_the_task_loop_and_unvmappable_models_fall_back():
    tasks = [_data(seed=s) for s in (3, 4, 5)]
    vmapped = _batched_meta_grad(FiLMDEQ(tol=1e-11), tasks)
    looped = _batched_meta_grad(FiLMDEQ(tol=1e-11), tasks, vectorize=False)
    with pytest.warns(RuntimeWarning, match="vmap could not evaluate the tasks together"):
        fallback = _batched_meta_grad(_Unvmappable(tol=1e-11), tasks)
    for n in vmapped:
        torch.testing.assert_close(vmapped[n], looped[n], rtol=1e-9, atol=1e-12, msg=n)
        torch.testing.assert_close(fallback[n], looped[n], rtol=1e-9, atol=1e-12, msg=n)


def test_implicit_memory_is_independent_of_the_budget():
    """Implicit mode keeps only the latest step's graph: the number of live tensors is flat."""
    import gc
    import warnings

    net = FiLMDEQ(tol=1e-8)
    xs, ys, _, _ = _data()
    counts = []
    for steps in (5, 40):
        opt = torch.optim.SGD(_adapted(net), lr=LR)
        with innerloop_ctx(
            net, opt, copy_initial_weights=False, meta_gradient="implicit", prox=PROX
        ) as (fnet, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fnet(xs), ys))
            gc.collect()
            with warnings.catch_warnings():  # scanning gc objects touches deprecated attributes
                warnings.simplefilter("ignore")
                counts.append(sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor)))
    assert abs(counts[1] - counts[0]) <= 5


def test_first_order_and_untracked_modes():
    net = FiLMDEQ(tol=1e-10)
    xs, ys, xq, yq = _data()
    opt = torch.optim.SGD(_adapted(net), lr=LR)
    with innerloop_ctx(net, opt, copy_initial_weights=False, first_order=True) as (fnet, diffopt):
        for _ in range(30):
            diffopt.step(F.cross_entropy(fnet(xs), ys))
        fast = [p.detach().clone().requires_grad_() for p in fnet.parameters(time=-1)]
        F.cross_entropy(fnet(xq), yq).backward()
    # FOMAML: the head's meta-gradient is the query gradient at the adapted head
    names = list(dict(net.named_parameters()))
    query = F.cross_entropy(functional_call(net, dict(zip(names, fast)), (xq,)), yq)
    expected = torch.autograd.grad(query, fast[names.index("head.weight")])[0]
    torch.testing.assert_close(net.head.weight.grad, expected, rtol=1e-6, atol=1e-9)
    net.zero_grad()
    with innerloop_ctx(net, opt, copy_initial_weights=False, track_higher_grads=False) as (
        fnet,
        diffopt,
    ):
        for _ in range(3):
            diffopt.step(F.cross_entropy(fnet(xs), ys))
        fast = dict(zip(dict(net.named_parameters()), fnet.parameters(time=-1)))
        assert not fast["head.weight"].requires_grad
        out = fnet(xq)
    assert all(p.grad is None for p in _adapted(net)) and out.shape == (5, 3)


def test_unconverged_tasks_are_reported_in_status():
    net = FiLMDEQ(tol=1e-8)
    xs, ys, _, _ = _data()
    opt = torch.optim.SGD(_adapted(net), lr=LR)
    with innerloop_ctx(net, opt, rtol=1e-12, atol=0.0) as (fnet, diffopt):
        diffopt.step(F.cross_entropy(fnet(xs), ys))
        assert diffopt.status.tolist() == [1]
        assert "MAX_ITER: 1" in diffopt.summary()


# ----- bad arguments -----


def test_rejects_optimizers_it_cannot_map():
    net = FiLMDEQ()
    with pytest.raises(TypeError, match=r"opt: cannot map torch\.optim\.adam\.Adam"):
        with innerloop_ctx(net, torch.optim.Adam(_adapted(net))):
            pass
    with pytest.raises(TypeError, match="opt: param group 0 uses momentum"):
        with innerloop_ctx(net, torch.optim.SGD(_adapted(net), lr=0.1, momentum=0.9)):
            pass


def test_rejects_parameters_not_in_the_model():
    net = FiLMDEQ()
    stranger = nn.Parameter(torch.zeros(3, dtype=D))
    with pytest.raises(ValueError, match="opt: parameter 1 of param group 0 .* not a parameter"):
        with innerloop_ctx(net, torch.optim.SGD([net.context, stranger], lr=0.1)):
            pass


@pytest.mark.parametrize(
    ("prox", "message"),
    [
        (-1.0, "prox: expected finite numbers >= 0"),
        (float("nan"), "prox: expected finite numbers >= 0"),
        ((1.0, float("inf")), "prox: expected finite numbers >= 0"),
        ((1.0, 2.0, 3.0), r"prox: expected one number or one per param group of opt \(2\), got 3"),
    ],
)
def test_rejects_bad_proximal_weights(prox, message):
    net = FiLMDEQ()
    adapted = _adapted(net)
    opt = torch.optim.SGD([{"params": adapted[:1]}, {"params": adapted[1:]}], lr=0.1)
    with pytest.raises(ValueError, match=message):
        with innerloop_ctx(net, opt, prox=prox):
            pass


def test_rejects_deq_options_for_a_model_without_a_deq():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="alpha_z: Sequential contains no torchdeq DEQ module"):
        with innerloop_ctx(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), alpha_z=0.5):
            pass


def test_rejects_misused_steps_and_times():
    net = FiLMDEQ(tol=1e-8)
    xs, ys, xq, yq = _data()
    opt = torch.optim.SGD(_adapted(net), lr=LR)
    with innerloop_ctx(net, opt, tasks=2) as (fnet, diffopt):
        out = fnet(torch.stack([xs, xs]))
        with pytest.raises(ValueError, match=r"loss: expected per-task losses of shape \(2,\)"):
            diffopt.step(F.cross_entropy(out.flatten(0, 1), torch.cat([ys, ys])))
    with innerloop_ctx(net, opt) as (fnet, diffopt):
        diffopt.step(F.cross_entropy(fnet(xs), ys))
        with pytest.raises(ValueError, match="loss: diffopt.step needs a loss of the latest"):
            diffopt.step(F.cross_entropy(fnet(xq), yq))
        with pytest.raises(ValueError, match="time: only 0"):
            list(fnet.parameters(time=3))
        with pytest.raises(TypeError, match="params"):
            diffopt.step(F.cross_entropy(fnet(xs), ys), params=list(net.parameters()))


def test_copy_initial_weights_sends_the_meta_gradient_to_time_zero():
    net = FiLMDEQ(tol=1e-10)
    xs, ys, xq, yq = _data()
    opt = torch.optim.SGD(_adapted(net), lr=LR)
    with innerloop_ctx(net, opt, copy_initial_weights=True, prox=PROX) as (fnet, diffopt):
        for _ in range(20):
            diffopt.step(F.cross_entropy(fnet(xs), ys))
        F.cross_entropy(fnet(xq), yq).backward()
        initial = list(fnet.parameters(time=0))
    assert all(p.grad is None for p in net.parameters())
    copied = dict(zip(dict(net.named_parameters()), initial))
    expected, _ = _jiio_meta_grad(net, xs, ys, xq, yq, steps=20)
    for name, tensor in copied.items():
        torch.testing.assert_close(tensor.grad, expected[name], rtol=1e-8, atol=1e-12)
