"""``infer_jiio``'s settings measured: the library defaults against the tuned step schedules.

The shipped digits decoder (``jiio_ext/apps/weights/digits_decoder.pt``, the one ``jiio demo``
uses), 64 held-out 16×16 digits, the latent objective of the training tasks
(:func:`~jiio_ext.apps.tasks.latent.latent_objective`, ``latent_reg=1e-3``) for the four
problems (reconstruct, denoise σ = 0.2, inpaint, deblur). Every setting solves the same
targets in the same process; each row gives the test PSNR against the clean digits (decoded
at a tight fixed point), the mean objective at the returned latents (also at a tight fixed
point) and the wall time. Run::

    OMP_NUM_THREADS=1 python scripts/infer_jiio_defaults.py [--batch 64] [--float64]

Every setting calls ``decoder.optimize_input`` with a fixed budget (``rtol=atol=0``) and the
best iterate per sample, as ``infer_jiio`` does. ``defaults`` sets nothing else (the
library's ``Adaptive`` update and damped iteration); ``defaults, tol 1e-4`` stops at the
library's default tolerance instead of running the whole budget; the two tuned rows are the
hand-set schedules ``infer_jiio`` (training, ``StepSwitch(3, 1)``) and
``compare_reconstruction`` (test time, ``StepSwitch(6, 2)``) used before, both with Anderson
type II.
"""

from __future__ import annotations

import argparse
import time

import torch
from jiio_ext.adapters.kornia import psnr
from torchdeq import get_deq

from jiio_ext.apps.data import load_images
from jiio_ext.apps.demo_tasks import load_weights
from jiio_ext.apps.tasks.generative import make_problem
from jiio_ext.apps.tasks.latent import build_decoder, latent_objective
from jiio_ext.schedules import StepSwitch
from jiio_ext.solvers import Anderson

PROBLEMS = {"reconstruct": {}, "denoise": {"sigma": 0.2}, "inpaint": {}, "deblur": {}}
BUDGETS = (40, 100, 150)


def settings() -> dict[str, dict]:
    """The compared options (besides the budget)."""
    tuned = {"solver": Anderson(memory=5, kind="II")}
    return {
        "defaults": {},
        "defaults, tol 1e-4": {"rtol": 1e-4},
        "StepSwitch(3, 1), Anderson II": {**tuned, "step_size": StepSwitch(3.0, 1.0)},
        "StepSwitch(6, 2), Anderson II": {**tuned, "step_size": StepSwitch(6.0, 2.0)},
    }


def problem_objective(operator, measurement):
    """The training tasks' latent objective of one measurement (latent prior 1e-3)."""
    targets = measurement.targets()
    return latent_objective(lambda image: operator.consistency(image, *targets), 1e-3)


def main() -> None:
    """Print one row per problem, budget and setting."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = torch.float64 if args.float64 else torch.float32
    stored = load_weights("digits_decoder")
    latent_dim = stored["config"]["latent_dim"]
    decoder = build_decoder(latent_dim=latent_dim)
    decoder.load_state_dict(stored["state_dict"])
    decoder.to(dtype).requires_grad_(False)
    clean = load_images("digits", image_size=16, dtype=dtype)[2][: args.batch]
    tight = get_deq(f_solver="anderson", f_max_iter=200, f_tol=1e-6)

    def decode(x: torch.Tensor) -> torch.Tensor:
        loose, decoder.deq = decoder.deq, tight
        try:
            with torch.no_grad():
                return decoder(x)
        finally:
            decoder.deq = loose

    print(f"batch {clean.shape[0]}, {dtype}, shipped decoder ({stored['recipe']})")
    print(
        f"{'problem':12s} {'budget':>6s} {'setting':32s} {'PSNR':>7s} {'objective':>10s} "
        f"{'time s':>7s} {'iters':>6s}"
    )
    for problem in args.problems:
        operator = make_problem(problem, 16, **PROBLEMS[problem])
        objective = problem_objective(operator, operator.measure(clean, seed=0))
        x0 = clean.new_zeros(clean.shape[0], latent_dim)
        for budget in BUDGETS:
            for name, options in settings().items():
                start = time.perf_counter()
                with torch.no_grad():
                    sol = decoder.optimize_input(
                        x0, objective, max_iter=budget, **{"rtol": 0.0, "atol": 0.0, **options}
                    )
                elapsed = time.perf_counter() - start
                image = decode(sol.x)
                quality = float(psnr(image, clean).mean())
                value = float(objective(image, sol.x).mean())
                print(
                    f"{problem:12s} {budget:6d} {name:32s} {quality:7.2f} {value:10.3e} "
                    f"{elapsed:7.2f} {float(sol.nstep.float().mean()):6.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
