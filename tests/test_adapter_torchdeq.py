"""The torchdeq adapter on real torchdeq models (float64), against the core's nested oracle."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from torch import nn

torchdeq = pytest.importorskip("torchdeq")
from jiio_ext.adapters.torchdeq import (  # noqa: E402
    adjoint_warm_start,
    input_optimizable,
    trajectory_penalty,
)
from torchdeq import get_deq, reset_deq  # noqa: E402
from torchdeq.dropout import VariationalDropout  # noqa: E402
from torchdeq.norm import apply_norm  # noqa: E402

from jiio_ext import L2Ball, solve_nested  # noqa: E402

D = torch.float64
TIGHT = dict(step_size=0.3, rtol=1e-11, atol=1e-13, max_iter=800)


class TinyDEQ(nn.Module):
    """A torchdeq model written the way torchdeq's documentation writes them."""

    def __init__(
        self, core="sliced", state="tensor", norm=False, dropout=False, calls=1, dz=5, dx=3, seed=0
    ):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.state, self.calls = state, calls
        self.cell = nn.Linear(dz, dz).to(D)
        self.inject = nn.Linear(dx, dz).to(D)
        self.side = nn.Linear(dz, 2).to(D)
        self.head = nn.Linear(dz, 4).to(D)
        with torch.no_grad():
            for lin in (self.cell, self.inject, self.side, self.head):
                lin.weight.copy_(0.4 * torch.randn(lin.weight.shape, generator=gen, dtype=D))
                lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=gen, dtype=D))
            weight = self.cell.weight
            weight.mul_(0.6 / torch.linalg.matrix_norm(weight, 2))  # a contractive cell
        self.drop = VariationalDropout(0.2) if dropout else None
        if norm:
            norm_type = norm if isinstance(norm, str) else "weight_norm"
            apply_norm(self, norm_type=norm_type, filter_out=["head", "side", "inject"])
        self.deq = get_deq(
            core=core,
            f_solver="anderson",
            f_max_iter=300,
            f_tol=1e-12,
            ift=True,
            b_solver="anderson",
            b_max_iter=60,
            b_tol=1e-10,
        )

    def layer(self, z, u):
        out = torch.tanh(self.cell(z) + u)
        return self.drop(out) if self.drop is not None else out

    def forward(self, x):
        reset_deq(self)
        u = self.inject(x)
        z = None
        for _ in range(self.calls):
            if self.state == "tensor":
                z0 = torch.zeros_like(u) if z is None else z
                z_out, _ = self.deq(lambda z_, u=u: self.layer(z_, u), z0)
                z = z_out[-1]
            else:

                def fn(a, c, u=u):
                    a_new = self.layer(a, u + 0.1 * c.mean(1, keepdim=True))
                    c_new = 0.5 * torch.tanh(c) + 0.2 * self.side(a_new)
                    return a_new, c_new

                start = (
                    (torch.zeros_like(u), torch.zeros(u.shape[0], 2, dtype=D))
                    if z is None
                    else (z, torch.zeros(u.shape[0], 2, dtype=D))
                )
                z_out, _ = self.deq(fn, start)
                z = z_out[-1][0]
            u = u + 0.5 * z  # a second call, if any, sees the first one's answer
        return self.head(z)

    # the same model written as an explicit f(z, x) and head, for the core's nested oracle
    def explicit(self):
        if self.calls != 1:
            raise NotImplementedError
        if self.state == "tensor":
            return (lambda z, x: self.layer(z, self.inject(x))), (lambda z: self.head(z)), 1

        def f(z, x):
            a, c = z
            u = self.inject(x)
            a_new = self.layer(a, u + 0.1 * c.mean(1, keepdim=True))
            return a_new, 0.5 * torch.tanh(c) + 0.2 * self.side(a_new)

        return f, (lambda z: self.head(z[0])), 2


def _target(batch=4, seed=1):
    return 0.3 * torch.randn(batch, 4, generator=torch.Generator().manual_seed(seed), dtype=D)


def _objective(target):
    return lambda out, x: (out - target).pow(2).sum(1) + 0.1 * x.pow(2).sum(1)


@functools.cache
def _nested_oracle(state: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x*, head(z*))`` by ``solve_nested`` on the explicit model (the same weights for
    either core, so each state's oracle runs once per session)."""
    f, head, parts = TinyDEQ(state=state).explicit()
    target = _target()
    x0 = torch.zeros(4, 3, dtype=D)
    z0 = (
        torch.zeros(4, 5, dtype=D)
        if parts == 1
        else (torch.zeros(4, 5, dtype=D), torch.zeros(4, 2, dtype=D))
    )
    ref = solve_nested(
        f,
        lambda z, x: _objective(target)(head(z), x),
        x0,
        z0=z0,
        optimizer="sgd",
        step_size=0.3,
        max_iter=300,
        inner_rtol=1e-12,
        inner_atol=1e-14,
        inner_max_iter=200,
    )
    return ref.x.detach(), head(ref.z).detach()


@pytest.mark.parametrize("core", ["sliced", "indexing"])
@pytest.mark.parametrize("state", ["tensor", "tuple"])
def test_optimize_input_matches_nested_oracle(core, state):
    model = input_optimizable(TinyDEQ(core=core, state=state))
    x0 = torch.zeros(4, 3, dtype=D)
    sol = model.optimize_input(x0, _objective(_target()), **TIGHT)
    assert sol.success, sol.summary()
    f, head, _ = model.explicit()
    for p_model, p_oracle in zip(model.parameters(), TinyDEQ(state=state).parameters()):
        assert torch.equal(p_model, p_oracle)  # the cached oracle is of these weights
    ref_x, ref_output = _nested_oracle(state)
    torch.testing.assert_close(sol.x, ref_x, atol=1e-6, rtol=0)
    # the solution carries the model's own output at x*
    torch.testing.assert_close(sol.output, ref_output, atol=1e-6, rtol=0)
    assert sol.info["deq_calls"] == 1


@pytest.mark.parametrize("variant", ["norm", "spectral", "dropout", "two-calls", "eval"])
def test_model_variants(variant):
    kwargs = {
        "norm": {"norm": "weight_norm", "spectral": "spectral_norm"}.get(variant, False),
        "dropout": variant == "dropout",
        "calls": 2 if variant == "two-calls" else 1,
    }
    model = input_optimizable(TinyDEQ(**kwargs))
    if variant == "eval":
        model.eval()
    target = _target()
    sol = model.optimize_input(
        torch.zeros(4, 3, dtype=D),
        _objective(target),
        constraint=L2Ball(radius=0.5),
        step_size=0.3,
        max_iter=400,
        rtol=1e-9,
        atol=1e-12,
    )
    assert sol.success, sol.summary()
    assert bool(L2Ball(radius=0.5).contains(sol.x, tol=1e-12).all())
    assert sol.info["deq_calls"] == kwargs["calls"]
    # the returned output is the model's output at x* with the DEQ converged: a plain
    # forward (torchdeq solving for real) agrees when dropout is off
    if variant != "dropout":
        model.train(variant != "eval")
        with torch.no_grad():
            torch.testing.assert_close(model(sol.x), sol.output.detach(), atol=1e-7, rtol=0)
    assert model.training == (variant != "eval")


def test_model_is_unchanged_outside_optimize_input():
    plain = TinyDEQ(norm=True)
    decorated = input_optimizable(TinyDEQ(norm=True))  # same seed: same weights
    x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(3))
    decorated.optimize_input(torch.zeros(4, 3, dtype=D), _objective(_target()), max_iter=20)
    for model in (plain, decorated):
        model.zero_grad()
    out_a, out_b = plain(x), decorated(x)
    assert torch.equal(out_a, out_b)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (name, pa), (_, pb) in zip(plain.named_parameters(), decorated.named_parameters()):
        assert (pa.grad is None and pb.grad is None) or torch.equal(pa.grad, pb.grad), name
    assert "forward" not in decorated.deq.__dict__


def test_class_decorator_and_keyword_input():
    @input_optimizable
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = TinyDEQ()

        def forward(self, scale, x=None):
            return scale * self.inner(x)

    model = TwoInputs()
    target = _target()
    sol = model.optimize_input(
        torch.zeros(4, 3, dtype=D),
        _objective(target),
        input_arg="x",
        args=(2.0,),
        step_size=0.1,
        max_iter=400,
        rtol=1e-9,
        atol=1e-12,
    )
    assert sol.success
    torch.testing.assert_close(sol.output.detach(), model(2.0, x=sol.x).detach(), atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="input_arg"):
        model.optimize_input(torch.zeros(4, 3, dtype=D), _objective(target), input_arg="y")


def test_errors():
    with pytest.raises(TypeError, match="no torchdeq DEQ"):
        input_optimizable(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="Module class or instance"):
        input_optimizable(42)

    class Ignores(nn.Module):  # x goes around the DEQ
        def __init__(self):
            super().__init__()
            self.deq = get_deq()

        def forward(self, x, other):
            z = self.deq(lambda z: 0.5 * torch.tanh(z) + other, torch.zeros_like(other))[0][-1]
            return z + 0 * x

    model = input_optimizable(Ignores())
    other = torch.ones(2, 3, dtype=D)
    with pytest.raises(ValueError, match="does not reach the DEQ"):
        model.optimize_input(torch.zeros(2, 3, dtype=D), lambda o, x: o.sum(1), args=(other,))

    class BadState(nn.Module):
        def __init__(self):
            super().__init__()
            self.deq = get_deq()

        def forward(self, x):
            return self.deq(lambda z: z, {"z": x})[0][-1]

    with pytest.raises(TypeError, match="state of type dict"):
        input_optimizable(BadState()).optimize_input(torch.zeros(2, 3), lambda o, x: x.sum(1))
    model = input_optimizable(TinyDEQ())
    with pytest.raises(ValueError, match="objective"):
        model.optimize_input(torch.zeros(4, 3, dtype=D), lambda out, x: out.sum(), max_iter=3)


@pytest.mark.parametrize("mode", ["envelope", "implicit"])
def test_training_gradients_match_finite_differences(mode):
    model = input_optimizable(TinyDEQ(seed=5))
    target = _target(seed=6)
    objective = _objective(target)
    x0 = torch.zeros(4, 3, dtype=D)
    gen = torch.Generator().manual_seed(7)
    # the outer loss: the inner objective (envelope) or a different one (implicit)
    c = torch.randn(4, 4, generator=gen, dtype=D)

    def outer(sol):
        if mode == "envelope":
            return objective(sol.output, sol.x).sum()
        return (sol.output * c).sum() + sol.x.sum()

    from jiio_ext import EnvelopeGrad, ImplicitGrad

    grad_mode = (
        EnvelopeGrad(rtol=1e-11, atol=1e-14)
        if mode == "envelope"
        else ImplicitGrad(rtol=1e-11, atol=1e-14)
    )
    sol = model.optimize_input(x0, objective, grad=grad_mode, **TIGHT)
    params = [model.cell.weight, model.inject.weight, model.head.bias]
    grads = torch.autograd.grad(outer(sol), params)
    h = 1e-5
    for param, grad in zip(params, grads):
        direction = torch.randn(param.shape, generator=gen, dtype=D)
        with torch.no_grad():
            param += h * direction
            plus = outer(model.optimize_input(x0, objective, **TIGHT))
            param -= 2 * h * direction
            minus = outer(model.optimize_input(x0, objective, **TIGHT))
            param += h * direction
        torch.testing.assert_close(
            (grad * direction).sum(), (plus - minus) / (2 * h), rtol=1e-5, atol=1e-9
        )


def test_trajectory_penalty_has_parameter_gradient():
    model = input_optimizable(TinyDEQ())
    sol = model.optimize_input(
        torch.zeros(4, 3, dtype=D), _objective(_target()), max_iter=30, trajectory=[20]
    )
    penalty = trajectory_penalty(sol)
    assert penalty.shape == (4,) and bool((penalty > 0).all())
    (grad,) = torch.autograd.grad(penalty.sum(), [model.cell.weight])
    assert grad.abs().sum() > 0


def test_distributed_data_parallel_model(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group(
        "gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'rendezvous'}"
    )
    try:
        inner = TinyDEQ()
        ddp = input_optimizable(nn.parallel.DistributedDataParallel(inner))
        target = _target()
        sol = ddp.optimize_input(
            torch.zeros(4, 3, dtype=D),
            _objective(target),
            grad="envelope",
            step_size=0.3,
            max_iter=300,
            rtol=1e-9,
            atol=1e-12,
        )
        assert sol.success
        loss = _objective(target)(sol.output, sol.x).sum()
        loss.backward()
        assert inner.cell.weight.grad is not None and inner.head.weight.grad is not None
    finally:
        dist.destroy_process_group()


def _model_with(**deq_kwargs):
    model = TinyDEQ(seed=11)
    model.deq = get_deq(**deq_kwargs)
    return model


def test_registered_names():
    from jiio_ext.adapters.torchdeq import JIIODEQ, jiio_solver
    from torchdeq.core import _core
    from torchdeq.solver import get_solver

    assert _core["jiio"] is JIIODEQ
    assert get_solver("jiio") is jiio_solver


@pytest.mark.parametrize("state", ["tensor", "tuple"])
def test_jiio_solver_is_a_drop_in_for_torchdeq_solvers(state):
    x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(12), requires_grad=True)
    outputs, grads = [], []
    for solver in ("anderson", "jiio"):
        model = TinyDEQ(seed=11, state=state)
        model.deq = get_deq(
            f_solver=solver,
            b_solver=solver,
            f_max_iter=200,
            f_tol=1e-11,
            b_max_iter=200,
            b_tol=1e-11,
            ift=True,
        )
        out = model(x)
        (g,) = torch.autograd.grad(out.square().sum(), [x])
        outputs.append(out.detach())
        grads.append(g)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-9, rtol=0)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-8, rtol=1e-7)


def test_jiio_solver_statistics_follow_torchdeq_contract():
    from torchdeq.solver import get_solver

    func = lambda z: 0.5 * torch.tanh(z) + 1.0  # noqa: E731
    x0 = torch.zeros(3, 2, 4, dtype=D)
    z, states, info = get_solver("jiio")(func, x0, max_iter=40, tol=1e-9, indexing=[2, 5])
    ref, _, ref_info = get_solver("anderson")(func, x0, max_iter=40, tol=1e-9)
    assert z.shape == x0.shape and len(states) == 2 and states[0].shape == x0.shape
    torch.testing.assert_close(z, ref, atol=1e-8, rtol=0)
    for key in ("abs_lowest", "rel_lowest", "nstep"):
        assert info[key].shape == ref_info[key].shape == (3,)
    assert info["abs_trace"].shape[0] == 3 and info["rel_trace"].shape == info["abs_trace"].shape
    assert bool((info["abs_lowest"] <= 1e-9).all())
    assert (info["status"] == 0).all()


def test_jiio_core_differentiable_eval_and_training_gradients():
    x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(13))
    settings = dict(
        f_solver="anderson", f_max_iter=200, f_tol=1e-12, b_max_iter=200, b_tol=1e-12, ift=True
    )
    stock = _model_with(core="sliced", **settings).eval()
    ours = _model_with(core="jiio", **settings).eval()
    x_req = x.clone().requires_grad_()
    stock_out = stock(x_req).sum()  # torchdeq's eval: no graph to the input
    assert torch.autograd.grad(stock_out, [x_req], allow_unused=True)[0] is None
    out = ours(x_req)
    assert out.requires_grad
    (g_eval,) = torch.autograd.grad(out.square().sum(), [x_req])
    ours.train()
    (g_train,) = torch.autograd.grad(ours(x_req).square().sum(), [x_req])
    torch.testing.assert_close(g_eval, g_train, atol=1e-9, rtol=1e-8)
    # against finite differences
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(14), dtype=D)
    ours.eval()
    with torch.no_grad():
        h = 1e-6
        fd = (ours(x + h * direction).square().sum() - ours(x - h * direction).square().sum()) / (
            2 * h
        )
    torch.testing.assert_close((g_eval * direction).sum(), fd, rtol=1e-5, atol=1e-9)


def test_jiio_core_backward_warm_starts_from_joint_adjoint():
    settings = dict(
        core="jiio",
        f_solver="anderson",
        f_max_iter=200,
        f_tol=1e-12,
        b_max_iter=200,
        b_tol=1e-12,
        ift=True,
    )
    model = input_optimizable(_model_with(**settings))
    target = _target(seed=15)
    objective = _objective(target)
    sol = model.optimize_input(torch.zeros(4, 3, dtype=D), objective, **TIGHT)
    # training step at x*: loss = inner objective, so the warm start is (nearly) exact
    with adjoint_warm_start(model, sol):  # passed explicitly, nothing stored on the DEQ
        loss = 0.5 * objective(model(sol.x), sol.x).sum()
    loss.backward()
    warm_steps = int(model.deq.last_backward_mode.last_backward.nstep.max())
    model.zero_grad()
    loss = 0.5 * objective(model(sol.x), sol.x).sum()
    loss.backward()
    cold_steps = int(model.deq.last_backward_mode.last_backward.nstep.max())
    assert warm_steps <= 3 < cold_steps


def test_outputs_with_scalar_parts_survive_frozen_samples():
    class WithJacLoss(nn.Module):  # torchdeq models often return (output, jac_loss)
        def __init__(self):
            super().__init__()
            self.inner = TinyDEQ()

        def forward(self, x):
            out = self.inner(x)
            return out, out.pow(2).mean()

    model = input_optimizable(WithJacLoss())
    target = _target()
    x0 = torch.zeros(4, 3, dtype=D)
    first = model.optimize_input(x0, lambda o, x: _objective(target)(o[0], x), **TIGHT)
    x0[0] = first.x[0]  # sample 0 starts at its optimum and freezes first
    z0 = [torch.zeros_like(t) for t in first.z]
    mu0 = tuple(torch.zeros_like(t) for t in first.mu)
    for start, solved in ((z0, first.z), (mu0, first.mu)):
        for part, value in zip(start, solved):
            part[0] = value[0]
    sol = model.optimize_input(
        x0, lambda o, x: _objective(target)(o[0], x), z0=z0, mu0=mu0, **TIGHT
    )
    assert sol.success and int(sol.nstep[0]) < int(sol.nstep[1:].min())
    torch.testing.assert_close(sol.x, first.x, atol=1e-8, rtol=0)


def test_jiio_solver_indexing_counts_evaluations_like_torchdeq():
    from torchdeq.solver import get_solver

    func = lambda z: 0.5 * z + 1.0  # noqa: E731
    x0 = torch.zeros(2, 3, dtype=D)
    _, states, _ = get_solver("jiio")(func, x0, max_iter=30, tol=1e-12, indexing=[1, 2])
    _, ref, _ = get_solver("fixed_point_iter")(func, x0, max_iter=30, tol=1e-12, indexing=[1])
    torch.testing.assert_close(states[0], func(x0))  # after one evaluation, as torchdeq
    torch.testing.assert_close(states[0], ref[0])
    assert not torch.equal(states[1], states[0])


def test_jiio_core_keeps_several_states_and_reads_ift_keyword():
    from jiio_ext.adapters.torchdeq import JIIODEQ

    assert JIIODEQ(ift=True).ift and get_deq(core="jiio", ift=True).ift
    model = TinyDEQ()
    model.deq = get_deq(core="jiio", n_states=2, f_max_iter=40, ift=True)
    x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(16))
    u = model.inject(x)
    z_out, _ = model.deq(lambda z: model.layer(z, u), torch.zeros_like(u))
    assert len(z_out) == 2


def test_z0_must_match_the_probed_states():
    model = input_optimizable(TinyDEQ())
    objective = _objective(_target())
    sol = model.optimize_input(
        torch.zeros(4, 3, dtype=D), objective, z0=torch.zeros(4, 5, dtype=D), max_iter=5
    )
    assert sol.z[0].shape == (4, 5)
    with pytest.raises(ValueError, match="z0"):
        model.optimize_input(torch.zeros(4, 3, dtype=D), objective, z0=torch.zeros(4, 6, dtype=D))


def test_solve_forward_matches_torchdeq_forward():
    model = input_optimizable(
        _model_with(core="sliced", f_solver="anderson", f_max_iter=300, f_tol=1e-13)
    )
    x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(17))
    sol = model.solve_forward(x, rtol=1e-12, max_iter=300)
    assert sol.success and sol.info["deq_calls"] == 1
    with torch.no_grad():
        reference = model(x)  # torchdeq solving for real
        u = model.inject(x)
        z_ref = model.deq(lambda z: model.layer(z, u), torch.zeros_like(u))[0][-1]
    torch.testing.assert_close(sol.output, reference, atol=1e-10, rtol=0)
    torch.testing.assert_close(sol.z[0], z_ref, atol=1e-10, rtol=0)
    # with the envelope gradient, the output trains the parameters through z*
    sol = model.solve_forward(x, rtol=1e-12, max_iter=300, grad="envelope")
    (g,) = torch.autograd.grad(sol.output.square().sum(), [model.cell.weight])
    model.train()
    deq_model = _model_with(
        core="sliced",
        f_solver="anderson",
        f_max_iter=300,
        f_tol=1e-13,
        ift=True,
        b_solver="anderson",
        b_max_iter=300,
        b_tol=1e-13,
    )
    (g_ref,) = torch.autograd.grad(deq_model(x).square().sum(), [deq_model.cell.weight])
    torch.testing.assert_close(g, g_ref, atol=1e-9, rtol=1e-7)


def test_optimize_input_leaves_no_side_channels():
    import inspect

    from jiio_ext.adapters import torchdeq as adapter

    model = input_optimizable(_model_with(core="jiio", f_max_iter=100, ift=True))
    before = set(vars(model.deq))
    sol = model.optimize_input(
        torch.zeros(4, 3, dtype=D), _objective(_target()), max_iter=20, trajectory=[5]
    )
    assert not hasattr(model.deq, "adjoint_warm_start")
    assert set(vars(model.deq)) == before  # nothing written onto the torchdeq module
    assert "f" not in sol.info and not any(callable(v) for v in sol.info.values())
    assert sol.output is sol.aux and sol.layer is not None
    assert trajectory_penalty(sol).shape == (4,)
    source = inspect.getsource(adapter)
    for channel in ("full[", "arange(", 'info["f"]', "targets="):
        assert channel not in source, channel
