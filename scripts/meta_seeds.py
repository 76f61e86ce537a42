"""Meta-test accuracy of JIIO and higher MAML on digits over several seeds (docs/meta.md).

Runs the ``jiio bench meta`` digits protocol (150 meta-steps of 4 tasks, 100 held-out tasks,
the bench's tuned inner settings) once per seed — the seed sets the model initialisation and
the task stream — and prints each method's accuracy per seed and the mean.

Usage::

    OMP_NUM_THREADS=1 python scripts/meta_seeds.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics

import torch

from jiio_ext.bench.meta import DIGITS_SETTINGS, _run_method


def main() -> None:
    """Run both methods for every seed; print the accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--meta-steps", type=int, default=150)
    parser.add_argument("--methods", nargs="+", default=["jiio", "maml"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    scores: dict[str, list[float]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            side = _run_method(
                "digits",
                method,
                DIGITS_SETTINGS,
                args.meta_steps,
                100,
                4,
                32,
                torch.device("cpu"),
                torch.float32,
                seed=seed,
            )
            scores[method].append(side["objective"])
            print(f"seed {seed} {method}: {100 * side['objective']:.1f} %", flush=True)
    for method, values in scores.items():
        line = " / ".join(f"{100 * v:.1f}" for v in values)
        print(f"{method}: {line} %, mean {100 * statistics.mean(values):.1f} %")


if __name__ == "__main__":
    main()
