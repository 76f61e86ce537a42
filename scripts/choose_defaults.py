"""How the default input update was chosen: a sweep on the development problems only.

The development problems are this repository's own decoders (never the zoo of
``jiio bench zoo``, which is held out): latent inversion through the torchdeq
``MultiScaleDecoder`` (via ``optimize_input``) and through the functional ``ConvDEQDecoder``
(via ``solve_joint``). For each, Adam-40 through the model (best of lr 0.03 / 0.1 / 0.3,
each step a forward solve and an IFT backward) sets the target objective; every candidate
setting runs 100 joint iterations and is scored by its final objective (at a tight fixed
point) relative to that target. Run::

    OMP_NUM_THREADS=1 python scripts/choose_defaults.py

and read the table: the default is the setting with the lowest worst-case ratio.

The third sweep (objective-driven rate control, ``Adaptive.backoff`` / ``rise``) adds a third
development problem, masked MAP inversion (half the pixels observed, a small L2 prior on the
latent) through the same torchdeq decoder, and runs at the default budget (150).
"""

from __future__ import annotations

import itertools
import sys
import time

import torch
from jiio_ext.adapters.torchdeq import input_optimizable

from jiio_ext import solve_joint
from jiio_ext.apps.bench.latent import make_latent_problem
from jiio_ext.apps.bench.torchdeq_task import _true_objective
from jiio_ext.apps.models import MultiScaleDecoder
from jiio_ext.updates import Adaptive

FIRST = not {"--second-only", "--third-only"} & set(sys.argv)
SECOND_SWEEP = "--third-only" not in sys.argv
CANDIDATES = {
    "lr": (0.05, 0.1, 0.2),
    "beta1": (0.0, 0.5, 0.9),
    "solver": ("damped", "anderson"),
}


def _torchdeq_problem(masked: bool = False):
    """Latent inversion through the torchdeq decoder: ``(adam(lr), jiio(**options))``.

    ``masked``: half the pixels observed and a small L2 prior on the latent (MAP inversion).
    """
    torch.manual_seed(0)
    model = MultiScaleDecoder(channels=16)
    model.requires_grad_(False)
    with torch.no_grad():
        targets = model(torch.randn(8, 16))
    gen = torch.Generator().manual_seed(1)
    mask = (torch.rand(targets.shape, generator=gen) < 0.5).to(targets)
    observed = mask.flatten(1).mean(1)

    def objective(image, x):
        if not masked:
            return (image - targets).pow(2).flatten(1).mean(1)
        miss = (mask * (image - targets).pow(2)).flatten(1).mean(1) / observed
        return miss + 1e-3 * x.pow(2).flatten(1).mean(1)

    x0 = torch.zeros(8, 16)

    def adam(lr):
        x = x0.clone().requires_grad_()
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(40):
            opt.zero_grad()
            objective(model(x), x).sum().backward()
            opt.step()
        return _true_objective(model, x.detach(), objective)

    decorated = input_optimizable(model)

    def jiio(**options):
        sol = decorated.optimize_input(x0, objective, **options)
        return _true_objective(model, sol.x, objective)

    return adam, jiio


def _functional_problem():
    problem = make_latent_problem(16, torch.device("cpu"), seed=1)

    def adam(lr):
        from jiio_ext import solve_nested

        sol = solve_nested(
            problem.decoder.f,
            problem.objective,
            problem.x0,
            z0=problem.z0(),
            step_size=lr,
            max_iter=40,
        )
        return problem.true_objective(sol.x)

    def jiio(**options):
        sol = solve_joint(
            problem.decoder.f, problem.objective, problem.x0, z0=problem.z0(), **options
        )
        return problem.true_objective(sol.x)

    return adam, jiio


# second sweep, at the chosen update: damping of the z / μ blocks and the budget
SECOND = (
    {"alpha_z": 0.8, "alpha_mu": 0.6, "max_iter": 100},
    {"alpha_z": 1.0, "alpha_mu": 1.0, "max_iter": 100},
    {"alpha_z": 0.8, "alpha_mu": 0.6, "max_iter": 150},
    {"alpha_z": 1.0, "alpha_mu": 1.0, "max_iter": 150},
)


# third sweep, at the chosen update and budget: objective-driven rate control
THIRD = (
    {"backoff": 1.0},  # off
    {"backoff": 0.7, "recover": 1.05, "rise": 0.0},
    {"backoff": 0.7, "recover": 1.05, "rise": 0.2},
    {"backoff": 0.7, "recover": 1.05, "rise": 0.5},
    {"backoff": 0.5, "recover": 1.1, "rise": 0.2},
    {"backoff": 0.7, "recover": 1.02, "rise": 0.2},
    {"backoff": 0.7, "recover": 1.1, "rise": 0.2},
)


def main() -> None:
    """Print the sweep tables."""
    problems = {
        "torchdeq MultiScaleDecoder": _torchdeq_problem(),
        "ConvDEQDecoder": _functional_problem(),
        "masked inversion": _torchdeq_problem(masked=True),
    }
    targets = {}
    for name, (adam, _) in problems.items():
        targets[name] = min(adam(lr) for lr in (0.03, 0.1, 0.3))
        print(f"{name}: best Adam-40 objective {targets[name]:.4g}", flush=True)
    print(f"{'lr':>5} {'beta1':>6} {'solver':>9}  " + "  ".join(f"{n[:22]:>22}" for n in problems))
    for lr, beta1, solver in itertools.product(*CANDIDATES.values()) if FIRST else ():
        ratios = []
        for name, (_, jiio) in problems.items():
            start = time.perf_counter()
            value = jiio(step_size=Adaptive(lr=lr, beta1=beta1, backoff=1.0), solver=solver)
            ratios.append(f"{value / targets[name]:>14.3f} ({time.perf_counter() - start:4.1f}s)")
        print(f"{lr:>5} {beta1:>6} {solver:>9}  " + "  ".join(ratios), flush=True)
    print("damping and budget at lr 0.1, beta1 0, damped (no rate control):")
    for options in SECOND if SECOND_SWEEP else ():
        ratios = []
        for name, (_, jiio) in problems.items():
            start = time.perf_counter()
            value = jiio(step_size=Adaptive(backoff=1.0), **options)
            ratios.append(f"{value / targets[name]:>14.3f} ({time.perf_counter() - start:4.1f}s)")
        print(f"  {options}  " + "  ".join(ratios), flush=True)

    print("objective-driven rate control at lr 0.1, beta1 0, damped, 150 iterations:")
    for control in THIRD:
        ratios = []
        for name, (_, jiio) in problems.items():
            start = time.perf_counter()
            value = jiio(step_size=Adaptive(**control), max_iter=150)
            ratios.append(f"{value / targets[name]:>14.3f} ({time.perf_counter() - start:4.1f}s)")
        print(f"  {control}  " + "  ".join(ratios), flush=True)


if __name__ == "__main__":
    main()
