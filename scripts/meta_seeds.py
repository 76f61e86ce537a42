"""Meta-test results of JIIO and higher MAML over several seeds (docs/meta.md).

Runs the ``jiio bench meta`` protocol of a task (150 meta-steps of 4 tasks, the bench's tuned
inner settings) once per seed — the seed sets the model initialisation and the task stream —
scores ``--eval-tasks`` held-out tasks (digits 7–9, or fresh sinusoids; the bench uses 100,
docs/meta.md reports 300) and prints each method's meta-test accuracy (digits) or MSE
(sinusoid) and time per meta-step per seed, and the means.

Usage::

    OMP_NUM_THREADS=1 python scripts/meta_seeds.py --seeds 0 1 2 --eval-tasks 300
    OMP_NUM_THREADS=1 python scripts/meta_seeds.py --task sinusoid --eval-tasks 300
"""

from __future__ import annotations

import argparse
import statistics

import torch

from jiio_ext.apps.bench.meta import _run_method
from jiio_ext.apps.tasks.meta import TUNED_SETTINGS


def _run(task: str, method: str, seed: int, meta_steps: int, eval_tasks: int) -> dict:
    return _run_method(
        task,
        method,
        TUNED_SETTINGS[task],
        meta_steps,
        eval_tasks,
        4,
        32,
        torch.device("cpu"),
        torch.float32,
        seed=seed,
    )


def main() -> None:
    """Run every method for every seed; print the meta-test results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["digits", "sinusoid"], default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--meta-steps", type=int, default=150)
    parser.add_argument("--eval-tasks", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=["jiio", "maml"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    scores: dict[str, list[float]] = {m: [] for m in args.methods}
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            side = _run(args.task, method, seed, args.meta_steps, args.eval_tasks)
            scores[method].append(side["objective"])
            times[method].append(side["time_s"])
            print(
                f"seed {seed} {method}: {_shown(args.task, side['objective'])}, "
                f"{side['time_s']:.3f} s/meta-step",
                flush=True,
            )
    for method, values in scores.items():
        line = " / ".join(_shown(args.task, v) for v in values)
        print(
            f"{method}: {line}, mean {_shown(args.task, statistics.mean(values))}, "
            f"median {statistics.median(times[method]):.3f} s/meta-step"
        )


def _shown(task: str, objective: float) -> str:
    """Accuracy in percent (digits) or the MSE (sinusoid)."""
    return f"{100 * objective:.1f} %" if task == "digits" else f"MSE {objective:.3f}"


if __name__ == "__main__":
    main()
