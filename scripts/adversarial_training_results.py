"""Reproduce the adversarial-training table of docs/results.md (JIIO-AT vs PGD-AT).

The two methods' epochs are interleaved in one process — PGD-AT epoch 1, JIIO-AT epoch 1,
PGD-AT epoch 2, ... (each call resumes its run from the checkpoint) — so that load changes on
a shared machine hit both methods alike. After the last epoch each run is evaluated with
stock torchattacks attacks (PGD-20, PGD-50 with restarts, APGD-CE, Square) and JIIOPGD-20.

Usage::

    OMP_NUM_THREADS=1 python scripts/adversarial_training_results.py --norm l2

Prints one line per epoch and a markdown table; each run's ``log.json`` is in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from jiio_ext.apps.tasks.adversarial import train_adversarial

ATTACKS = ("clean", "pgd20", "pgd50_restarts", "apgd_ce", "square", "jiio_pgd20")


def main() -> None:
    """Train both methods with interleaved epochs; print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm", choices=("linf", "l2"), default="linf")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="jiio-runs/adversarial-results")
    args = parser.parse_args()
    root = Path(args.out)
    logs = {}
    for epoch in range(1, args.epochs + 1):
        for method in ("pgd", "jiio"):
            logs[method] = train_adversarial(
                method=method,
                norm=args.norm,
                epochs=epoch,
                out=str(root / f"{args.norm}-{method}"),
                resume=epoch > 1,
                progress=False,
                robust_eval=epoch == args.epochs,
            )
            last = logs[method]["epochs"][-1]
            print(
                f"{method} epoch {epoch}: {last['epoch_time_s']:.2f} s, "
                f"PGD robust accuracy {last['robust_accuracy']:.3f}",
                flush=True,
            )
    means = {
        m: statistics.mean(e["epoch_time_s"] for e in log["epochs"]) for m, log in logs.items()
    }
    print("| method | epoch time | " + " | ".join(ATTACKS) + " | worst case |")
    print("|---" * (len(ATTACKS) + 3) + "|")
    for method, log in logs.items():
        table = log["robustness"]
        worst = min(v for k, v in table.items() if k != "clean")
        cells = " | ".join(f"{100 * table[k]:.1f} %" for k in ATTACKS)
        ratio = means["pgd"] / means[method]
        print(
            f"| {method} | {means[method]:.2f} s ({ratio:.2f}×) | {cells} | {100 * worst:.1f} % |"
        )
    (root / f"{args.norm}-summary.json").write_text(json.dumps(logs, indent=2))


if __name__ == "__main__":
    main()
