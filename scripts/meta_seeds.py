"""Meta-test accuracy of JIIO and higher MAML on digits over several seeds (docs/meta.md).

Runs the ``jiio bench meta`` digits protocol (150 meta-steps of 4 tasks, 100 held-out tasks,
the bench's tuned inner settings) once per seed — the seed sets the model initialisation and
the task stream — and prints each method's accuracy per seed and the mean. Each run is a fresh
process: higher's MAML through the torchdeq DEQ keeps about 47 MB per meta-step alive until its
process exits (measured; cause not found), so several runs in one process exhaust the memory.

Usage::

    OMP_NUM_THREADS=1 python scripts/meta_seeds.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor

import torch

from jiio_ext.bench.meta import DIGITS_SETTINGS, _run_method


def _accuracy(method: str, seed: int, meta_steps: int) -> float:
    torch.set_num_threads(1)
    side = _run_method(
        "digits",
        method,
        DIGITS_SETTINGS,
        meta_steps,
        100,
        4,
        32,
        torch.device("cpu"),
        torch.float32,
        seed=seed,
    )
    return side["objective"]


def main() -> None:
    """Run both methods for every seed; print the accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--meta-steps", type=int, default=150)
    parser.add_argument("--methods", nargs="+", default=["jiio", "maml"])
    args = parser.parse_args()
    scores: dict[str, list[float]] = {m: [] for m in args.methods}
    spawn = multiprocessing.get_context("spawn")
    for seed in args.seeds:
        for method in args.methods:
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                accuracy = pool.submit(_accuracy, method, seed, args.meta_steps).result()
            scores[method].append(accuracy)
            print(f"seed {seed} {method}: {100 * accuracy:.1f} %", flush=True)
    for method, values in scores.items():
        line = " / ".join(f"{100 * v:.1f}" for v in values)
        print(f"{method}: {line} %, mean {100 * statistics.mean(values):.1f} %")


if __name__ == "__main__":
    main()
