"""θ-gradients after a solve (envelope and implicit) against finite differences, float64."""

from __future__ import annotations

import warnings

import pytest
import torch
from problems import DTYPE, make_problem

from jiio_ext import (
    Box,
    EnvelopeGrad,
    ImplicitGrad,
    JointSolveError,
    L2Ball,
    Status,
    jacobian_penalty,
    solve_joint,
    trajectory_penalty,
)

TIGHT = dict(step_size=0.3, rtol=1e-12, atol=1e-14, max_iter=1000)
H = 1e-5


def _solve(p, constraint=None, grad=None, **kw):
    options = {**TIGHT, **kw}
    return solve_joint(
        p.f, p.objective, p.x0(), z0=p.z0(), constraint=constraint, grad=grad, **options
    )


def _directional_fd(p, param, direction, value_fn):
    with torch.no_grad():
        param += H * direction
        plus = value_fn()
        param -= 2 * H * direction
        minus = value_fn()
        param += H * direction
    return (plus - minus) / (2 * H)


def _params(p):
    for t in (p.W, p.b, p.target):
        t.requires_grad_(True)
    return {"W": p.W, "b": p.b, "target": p.target}


@pytest.mark.parametrize("constraint", [None, L2Ball(radius=0.2)], ids=["free", "l2"])
def test_envelope_gradient_of_optimal_value_matches_fd(constraint):
    p = make_problem(seed=20)
    params = _params(p)
    sol = _solve(p, constraint, grad="envelope")
    assert sol.success
    value = p.objective(sol.z, sol.x).sum()
    grads = torch.autograd.grad(value, list(params.values()))
    gen = torch.Generator().manual_seed(0)
    for (name, param), grad in zip(params.items(), grads):
        direction = torch.randn(param.shape, generator=gen, dtype=DTYPE)
        fd = _directional_fd(p, param, direction, lambda: _solve(p, constraint).objective.sum())
        torch.testing.assert_close(
            (grad * direction).sum(), fd, rtol=1e-5, atol=1e-9, msg=f"envelope gradient wrt {name}"
        )


@pytest.mark.parametrize(
    "constraint",
    [None, L2Ball(radius=0.2), L2Ball(radius=0.2) & Box(-0.13, 0.13)],
    ids=["free", "l2", "l2&box"],
)
def test_implicit_gradient_of_a_different_outer_loss_matches_fd(constraint):
    p = make_problem(seed=21)
    params = _params(p)
    gen = torch.Generator().manual_seed(1)
    c = torch.randn(p.batch, p.W.shape[0], generator=gen, dtype=DTYPE)
    e = torch.randn(p.batch, p.U.shape[0], generator=gen, dtype=DTYPE)

    def outer(z, x):
        return (z * c).sum() + (x * e).sum() + z.pow(2).sum()

    sol = _solve(p, constraint, grad=ImplicitGrad(rtol=1e-10, atol=1e-14))
    grads = torch.autograd.grad(outer(sol.z, sol.x), list(params.values()))
    env = _solve(p, constraint, grad="envelope")
    env_grads = torch.autograd.grad(outer(env.z, env.x), list(params.values()), allow_unused=True)
    # the envelope z does not depend on the target at all (x* is held constant)
    env_grads = [torch.zeros_like(g) if e is None else e for e, g in zip(env_grads, grads)]
    for (name, param), grad, env_grad in zip(params.items(), grads, env_grads):
        direction = torch.randn(param.shape, generator=gen, dtype=DTYPE)

        def value():
            s = _solve(p, constraint)
            return outer(s.z, s.x)

        fd = _directional_fd(p, param, direction, value)
        torch.testing.assert_close(
            (grad * direction).sum(), fd, rtol=1e-5, atol=1e-9, msg=f"implicit gradient wrt {name}"
        )
        # the envelope mode ignores dx*/dθ: visibly wrong for this outer loss
        rel = (env_grad - grad).norm() / grad.norm()
        assert rel > 1e-2, f"envelope unexpectedly matched implicit for {name}"


def test_implicit_equals_envelope_when_outer_is_inner():
    p = make_problem(seed=22)
    params = _params(p)
    imp = _solve(p, grad=ImplicitGrad(rtol=1e-10, atol=1e-14))
    env = _solve(p, grad=EnvelopeGrad(rtol=1e-10, atol=1e-14))
    g_imp = torch.autograd.grad(p.objective(imp.z, imp.x).sum(), list(params.values()))
    g_env = torch.autograd.grad(p.objective(env.z, env.x).sum(), list(params.values()))
    for a, b in zip(g_imp, g_env):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_envelope_backward_starts_from_mu_and_needs_few_iterations():
    p = make_problem(seed=23)
    _params(p)
    mode = EnvelopeGrad()
    sol = _solve(p, grad=mode)
    (0.5 * p.objective(sol.z, sol.x).sum()).backward()  # outer loss ∝ inner objective
    assert mode.last_backward is not None
    assert int(mode.last_backward.nstep.max()) <= 2


def test_backward_through_batch_with_frozen_samples_matches_solo():
    p = make_problem(batch=3, seed=24)
    params = _params(p)
    first = _solve(p)
    x0, z0 = p.x0(), p.z0()
    x0[0], z0[0] = first.x[0], first.z[0]  # sample 0 freezes at once
    mu0 = torch.zeros_like(z0)
    mu0[0] = first.mu[0]
    outer_w = torch.arange(1.0, 6.0, dtype=DTYPE)

    def outer(z, x):
        return (z * outer_w).sum() + x.sum()

    exact = ImplicitGrad(rtol=1e-11, atol=1e-14)
    sol = solve_joint(p.f, p.objective, x0, z0=z0, mu0=mu0, grad=exact, **TIGHT)
    assert int(sol.nstep[0]) < int(sol.nstep[1:].min())
    batch_grad = torch.autograd.grad(outer(sol.z, sol.x), [p.W, p.b])
    solo_sum = [torch.zeros_like(p.W), torch.zeros_like(p.b)]
    for i in range(3):
        tgt = params["target"][i : i + 1]
        s = solve_joint(
            p.f,
            lambda z, x, t=tgt: (z - t).pow(2).sum(1) + p.reg * x.pow(2).sum(1),
            x0[i : i + 1],
            z0=z0[i : i + 1],
            mu0=mu0[i : i + 1],
            grad=exact,
            **TIGHT,
        )
        for acc, g in zip(solo_sum, torch.autograd.grad(outer(s.z, s.x), [p.W, p.b])):
            acc += g
    for a, b in zip(batch_grad, solo_sum):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def _undamped_residual(p, z, x, mu, W, b, target):
    """``R(s; θ)`` with ``F = s − S R``: the joint fixed point's equations, free of damping."""
    pre = z @ W.T + x @ p.U + b
    d_mu = (1 - torch.tanh(pre).pow(2)) * mu
    return torch.cat(
        [z - torch.tanh(pre), 2 * p.reg * x + d_mu @ p.U.T, mu - 2 * (z - target) - d_mu @ W],
        dim=1,
    )


def _dense_hypergradient(p, sol, dout_dz, dout_dx):
    """``−vᵀ (∂R/∂s)⁻¹ ∂R/∂θ`` per sample by dense solves (independent of S and the solver)."""
    theta = [p.W.detach(), p.b.detach(), p.target.detach()]
    total = [torch.zeros_like(t) for t in theta]
    for i in range(p.batch):
        s_i = (sol.z[i : i + 1].detach(), sol.x[i : i + 1].detach(), sol.mu[i : i + 1].detach())
        target_i = theta[2][i : i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda z, x, mu, t=target_i: _undamped_residual(p, z, x, mu, theta[0], theta[1], t),
            s_i,
        )
        dense = torch.cat([j.reshape(j.shape[1], -1) for j in jac], dim=1)
        v = torch.cat([dout_dz[i], dout_dx[i], torch.zeros_like(dout_dz[i])])
        u = torch.linalg.solve(dense.T, v)
        params = [t.clone().requires_grad_() for t in theta]
        r = _undamped_residual(p, *s_i, params[0], params[1], params[2][i : i + 1])
        for acc, g in zip(total, torch.autograd.grad(r.flatten(), params, -u)):
            acc += g
    return total


def test_implicit_default_backward_converges_where_a_fixed_point_iteration_stalls():
    # 50 unknowns per sample and a small input step: the old default (Anderson, 200
    # iterations) stopped with MAX_ITER here; GMRES on the undamped system converges
    p = make_problem(dz=20, dx=10, seed=21)
    params = _params(p)
    sol = _solve(p, grad="implicit", step_size=0.01, max_iter=3000)
    assert sol.success

    def outer(z, x):
        return z.pow(2).sum() + (x * torch.arange(10, dtype=DTYPE)).sum()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "did not converge" warning
        grads = torch.autograd.grad(outer(sol.z, sol.x), list(params.values()))
    assert sol.info["backward_status"].tolist() == [Status.CONVERGED] * p.batch
    assert int(sol.info["backward_nstep"].max()) < ImplicitGrad().budget(50)
    z, x = sol.z.detach().requires_grad_(), sol.x.detach().requires_grad_()
    dout_dz, dout_dx = torch.autograd.grad(outer(z, x), [z, x])
    oracle = _dense_hypergradient(p, sol, dout_dz, dout_dx)
    for name, grad, ref in zip(params, grads, oracle):
        rel = float((grad - ref).norm() / ref.norm())
        assert rel < 1e-5, f"implicit gradient wrt {name}: {rel:.1e} off the dense oracle"


@pytest.mark.parametrize("throw", [False, True])
def test_implicit_backward_failure_is_a_status_that_throw_raises(throw):
    p = make_problem(seed=28)
    p.W.requires_grad_(True)
    sol = _solve(p, grad=ImplicitGrad(max_iter=2), throw=throw)
    assert "backward_status" not in sol.info  # filled in by the backward
    loss = sol.z.pow(2).sum() + sol.x.sum()
    if throw:
        with pytest.raises(JointSolveError, match="implicit backward") as err:
            torch.autograd.grad(loss, [p.W])
        assert err.value.solution is sol
    else:
        with pytest.warns(RuntimeWarning, match="implicit backward"):
            torch.autograd.grad(loss, [p.W])
    assert sol.info["backward_status"].tolist() == [Status.MAX_ITER] * p.batch
    assert sol.info["backward_nstep"].tolist() == [2] * p.batch


def test_implicit_rejects_sign_steps():
    p = make_problem(seed=25)
    with pytest.raises(ValueError, match="grad"):
        solve_joint(p.f, p.objective, p.x0(), z0=p.z0(), step_rule="sign", grad=ImplicitGrad())


def test_jacobian_penalty_matches_dense_frobenius_norm():
    p = make_problem(batch=2, seed=26)
    p.W.requires_grad_(True)
    z = 0.3 * torch.ones(2, p.W.shape[0], dtype=DTYPE)
    x = p.x0()
    est = jacobian_penalty(p.f, z, x, n_probes=4000, generator=torch.Generator().manual_seed(0))
    dense = []
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: p.f(v, x[i : i + 1]), z[i : i + 1])
        dense.append(jac.pow(2).sum() / z.shape[1])
    torch.testing.assert_close(est.detach(), torch.stack(dense), rtol=0.08, atol=0)
    (gw,) = torch.autograd.grad(est.sum(), [p.W])
    assert gw.abs().sum() > 0


def test_trajectory_penalty_uses_recorded_point():
    p = make_problem(seed=27)
    sol = solve_joint(
        p.f, p.objective, p.x0(), z0=p.z0(), step_size=0.3, max_iter=60, trajectory=[15]
    )
    torch.manual_seed(0)
    at_15 = trajectory_penalty(p.f, sol, iteration=15)
    torch.manual_seed(0)
    z15, x15 = sol.trajectory[15]
    torch.testing.assert_close(at_15, jacobian_penalty(p.f, z15, x15))
    with pytest.raises(ValueError, match="iteration"):
        trajectory_penalty(p.f, sol, iteration=3)
