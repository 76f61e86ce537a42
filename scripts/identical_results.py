"""Check that a change to the joint solve's bookkeeping leaves its results identical.

Solves a fixed set of problems (default options, hand-set step with Anderson, freezing with
``subset`` on and off, L2 / L∞ constraints, the attacks' sign and L2 rules, float32 and
float64, a tuple state, implicit θ-gradients, the zoo's get-started model through
``optimize_input`` and ``JIIOPGD`` / ``JIIOPGDL2`` on the get-started user classifier) and
saves or compares every output (``x``, ``z``, ``μ``, objective, status, nstep, residuals,
traces, info tensors, evaluation counts). Run before the change, then after::

    OMP_NUM_THREADS=1 python scripts/identical_results.py --save /tmp/reference.pt
    OMP_NUM_THREADS=1 python scripts/identical_results.py --check /tmp/reference.pt

``--check`` exits 1 and names every output that differs (bitwise; ``--atol`` to allow a
tolerance). ``--skip-settled`` leaves out ``z`` and the objective of the fixed-budget
problems (``rtol=0``), which a change to the final settle is meant to change.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from jiio_ext import L2Ball, LinfBall, solve_joint
from jiio_ext.constraints import Box

__all__ = ["compare", "problems", "run_all"]

# problems solved with rtol=0 (their final settle has no tolerance of its own)
FIXED_BUDGET = ("sign_linf", "l2_rule", "attack_linf", "attack_l2")


def _dense(dtype: torch.dtype, batch: int = 6, dz: int = 5, dx: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(dz, dz, generator=gen, dtype=torch.float64)
    W = (0.6 * W / torch.linalg.matrix_norm(W, 2)).to(dtype)
    U = (0.5 * torch.randn(dx, dz, generator=gen, dtype=torch.float64)).to(dtype)
    target = (0.5 * torch.randn(batch, dz, generator=gen, dtype=torch.float64)).to(dtype)
    x0 = torch.zeros(batch, dx, dtype=dtype)
    z0 = torch.zeros(batch, dz, dtype=dtype)

    def f(z, x):
        return torch.tanh(z @ W.T + x @ U)

    def objective(z, x):
        return (z - target).pow(2).sum(1) + 0.05 * x.pow(2).sum(1)

    return f, objective, x0, z0, (W, U, target)


def _solution_outputs(sol) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in ("x", "objective", "status", "nstep"):
        out[name] = getattr(sol, name)
    for name in ("z", "mu"):
        value = getattr(sol, name)
        out[name] = tuple(value) if isinstance(value, tuple) else value
    for key, value in sol.residuals.items():
        out[f"residual_{key}"] = value
    for key, value in sol.traces.items():
        out[f"trace_{key}"] = value
    for key, value in sol.info.items():
        if isinstance(value, torch.Tensor):
            out[f"info_{key}"] = value
    out["f_evals"], out["vjps"] = sol.f_evals, sol.vjps
    return out


def problems() -> dict[str, object]:
    """The problems: ``{name: thunk}``, each thunk returning the outputs to compare."""
    cases = {}
    for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):

        def defaults(dtype=dtype):
            f, objective, x0, z0, _ = _dense(dtype)
            return _solution_outputs(solve_joint(f, objective, x0, z0=z0))

        cases[f"defaults_{tag}"] = defaults

    def anderson_step():
        f, objective, x0, z0, _ = _dense(torch.float64)
        sol = solve_joint(f, objective, x0, z0=z0, step_size=0.1, rtol=1e-6, max_iter=400)
        return _solution_outputs(sol)

    def anderson_full_batch():
        f, objective, x0, z0, _ = _dense(torch.float64)
        sol = solve_joint(
            f, objective, x0, z0=z0, step_size=0.1, rtol=1e-6, max_iter=400, subset=False
        )
        return _solution_outputs(sol)

    def freezing_defaults():
        f, objective, x0, z0, _ = _dense(torch.float64, batch=8, seed=3)
        sol = solve_joint(f, objective, x0, z0=z0, rtol=1e-3, max_iter=300)
        return _solution_outputs(sol)

    def freezing_full_batch():
        f, objective, x0, z0, _ = _dense(torch.float64, batch=8, seed=3)
        sol = solve_joint(f, objective, x0, z0=z0, rtol=1e-3, max_iter=300, subset=False)
        return _solution_outputs(sol)

    def no_best_check_every():
        f, objective, x0, z0, _ = _dense(torch.float32, seed=1)
        sol = solve_joint(
            f, objective, x0, z0=z0, step_size=0.2, best_iterate=False, check_every=3, rtol=1e-5
        )
        return _solution_outputs(sol)

    def l2_ball_adaptive():
        f, objective, x0, z0, _ = _dense(torch.float64, seed=2)
        sol = solve_joint(f, objective, x0, z0=z0, constraint=L2Ball(radius=0.3))
        return _solution_outputs(sol)

    def sign_linf():
        f, objective, x0, z0, _ = _dense(torch.float64, seed=4)
        threat = LinfBall(0.2, center=x0 + 0.5) & Box(0.0, 1.0)
        sol = solve_joint(
            f,
            lambda z, x: -objective(z, x),
            x0 + 0.5,
            z0=z0,
            constraint=threat,
            step_rule="sign",
            step_size=0.05,
            solver="damped",
            max_iter=40,
            rtol=0.0,
            atol=0.0,
        )
        return _solution_outputs(sol)

    def l2_rule():
        f, objective, x0, z0, _ = _dense(torch.float32, seed=5)
        sol = solve_joint(
            f,
            lambda z, x: -objective(z, x),
            x0,
            z0=z0,
            constraint=L2Ball(0.5, center=x0),
            step_rule="l2",
            step_size=0.1,
            solver="damped",
            max_iter=40,
            rtol=0.0,
            atol=0.0,
        )
        return _solution_outputs(sol)

    def tuple_state():
        f1, objective1, x0, z0, (W, U, target) = _dense(torch.float64, seed=6)

        def f(z, x):
            a, b = z
            return torch.tanh(a @ W.T + x @ U), 0.5 * torch.tanh(b + a)

        def objective(z, x):
            return (z[0] - target).pow(2).sum(1) + z[1].pow(2).sum(1)

        sol = solve_joint(f, objective, x0, z0=(z0, z0.clone()))
        return _solution_outputs(sol)

    def implicit_grad():
        f0, _, x0, z0, (W, U, target) = _dense(torch.float64, seed=7)
        W = W.clone().requires_grad_()

        def f(z, x):
            return torch.tanh(z @ W.T + x @ U)

        def objective(z, x):
            return (z - target).pow(2).sum(1) + 0.05 * x.pow(2).sum(1)

        sol = solve_joint(f, objective, x0, z0=z0, grad="implicit", rtol=1e-8, max_iter=400)
        loss = (sol.z.pow(2).sum() + sol.x.pow(3).sum()).backward()
        del loss
        out = _solution_outputs(sol)
        out["z"], out["x"] = sol.z.detach(), sol.x.detach()
        out["grad_W"] = W.grad
        return out

    def zoo_get_started():
        from jiio_ext.adapters.torchdeq import input_optimizable

        from jiio_ext.apps.bench.zoo_models import ZOO_MODELS

        model, x_true = ZOO_MODELS["get-started"](batch=8, seed=0)
        with torch.no_grad():
            targets = model(x_true).detach()
        snaps = []

        def record(k, info):
            snaps.append(info["state"].clone())

        sol = input_optimizable(model).optimize_input(
            torch.zeros_like(x_true),
            lambda out, x: (out - targets).pow(2).flatten(1).mean(1),
            callback=record,
        )
        out = _solution_outputs(sol)
        out["output"] = sol.output.detach()
        out["callback_states"] = tuple(snaps)
        return out

    def _attack(cls, eps):
        from jiio_ext.apps.bench.user_classifiers import USER_CLASSIFIERS

        torch.manual_seed(0)
        model = USER_CLASSIFIERS["get-started"]()
        images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(16) % 10
        attack = cls(model, eps=eps, alpha=eps / 4, steps=10, random_start=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adv = attack(images, labels)
        out = _solution_outputs(attack.last_solution)
        out["adversarial"] = adv
        return out

    def attack_linf():
        from jiio_ext.adapters.torchattacks import JIIOPGD

        return _attack(JIIOPGD, 0.1)

    def attack_l2():
        from jiio_ext.adapters.torchattacks import JIIOPGDL2

        return _attack(JIIOPGDL2, 1.0)

    cases.update(
        anderson_step=anderson_step,
        anderson_full_batch=anderson_full_batch,
        freezing_defaults=freezing_defaults,
        freezing_full_batch=freezing_full_batch,
        no_best_check_every=no_best_check_every,
        l2_ball_adaptive=l2_ball_adaptive,
        sign_linf=sign_linf,
        l2_rule=l2_rule,
        tuple_state=tuple_state,
        implicit_grad=implicit_grad,
        zoo_get_started=zoo_get_started,
        attack_linf=attack_linf,
        attack_l2=attack_l2,
    )
    return cases


def run_all() -> dict[str, dict[str, object]]:
    """Every problem's outputs, detached and on the CPU."""

    def clean(value):
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().clone()
        if isinstance(value, tuple):
            return tuple(clean(v) for v in value)
        return value

    return {name: {k: clean(v) for k, v in thunk().items()} for name, thunk in problems().items()}


def _differs(a, b, atol: float) -> str | None:
    if isinstance(a, tuple) or isinstance(b, tuple):
        if not (isinstance(a, tuple) and isinstance(b, tuple)) or len(a) != len(b):
            return "structure"
        for i, (x, y) in enumerate(zip(a, b)):
            why = _differs(x, y, atol)
            if why:
                return f"[{i}] {why}"
        return None
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return "shape/dtype"
        if a.is_floating_point():
            same_nan = torch.isnan(a) == torch.isnan(b)
            diff = (a - b).abs().nan_to_num(0.0)
            worst = float(diff.max()) if diff.numel() else 0.0
            if not bool(same_nan.all()) or worst > atol:
                return f"max abs diff {worst:.3e}"
            return None
        return None if torch.equal(a, b) else "values"
    return None if a == b else f"{a!r} != {b!r}"


def compare(
    reference: dict, current: dict, atol: float = 0.0, skip_settled: bool = False
) -> list[str]:
    """The outputs that differ, as ``problem.output: why``."""
    problems_out = []
    for name, outputs in reference.items():
        if name not in current:
            problems_out.append(f"{name}: missing")
            continue
        for key, value in outputs.items():
            settled = key in ("z", "objective", "residual_z", "output") or key.startswith(
                "info_stationarity"
            )
            if skip_settled and name in FIXED_BUDGET and settled:
                continue
            if skip_settled and name in FIXED_BUDGET and key == "f_evals":
                continue
            why = _differs(value, current[name].get(key), atol)
            if why:
                problems_out.append(f"{name}.{key}: {why}")
    return problems_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", metavar="PATH")
    group.add_argument("--check", metavar="PATH")
    parser.add_argument("--atol", type=float, default=0.0)
    parser.add_argument("--skip-settled", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    outputs = run_all()
    if args.save:
        torch.save(outputs, args.save)
        print(f"saved {len(outputs)} problems to {args.save}")
        return 0
    reference = torch.load(args.check)
    bad = compare(reference, outputs, args.atol, args.skip_settled)
    for line in bad:
        print("DIFFERS", line)
    print(f"{len(reference)} problems, {len(bad)} outputs differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
