"""Meta-test accuracy of JIIO and higher MAML on digits over several seeds (docs/meta.md).

Runs the ``jiio bench meta`` digits protocol (150 meta-steps of 4 tasks, the bench's tuned
inner settings) once per seed — the seed sets the model initialisation and the task stream —
scores ``--eval-tasks`` held-out tasks of digits 7–9 (the bench uses 100; docs/meta.md reports
300) and prints each method's accuracy and time per meta-step per seed, and the means.

Usage::

    OMP_NUM_THREADS=1 python scripts/meta_seeds.py --seeds 0 1 2 --eval-tasks 300
"""

from __future__ import annotations

import argparse
import statistics

import torch

from jiio_ext.bench.meta import DIGITS_SETTINGS, _run_method


def _run(method: str, seed: int, meta_steps: int, eval_tasks: int) -> dict:
    return _run_method(
        "digits",
        method,
        DIGITS_SETTINGS,
        meta_steps,
        eval_tasks,
        4,
        32,
        torch.device("cpu"),
        torch.float32,
        seed=seed,
    )


def main() -> None:
    """Run both methods for every seed; print the accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
            side = _run(method, seed, args.meta_steps, args.eval_tasks)
            scores[method].append(side["objective"])
            times[method].append(side["time_s"])
            print(
                f"seed {seed} {method}: {100 * side['objective']:.1f} %, "
                f"{side['time_s']:.3f} s/meta-step",
                flush=True,
            )
    for method, values in scores.items():
        line = " / ".join(f"{100 * v:.1f}" for v in values)
        print(
            f"{method}: {line} %, mean {100 * statistics.mean(values):.1f} %, "
            f"median {statistics.median(times[method]):.3f} s/meta-step"
        )


if __name__ == "__main__":
    main()
