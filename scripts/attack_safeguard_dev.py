"""Choose the JIIO attacks' safeguard for non-contractive DEQ layers on development classifiers.

The user classifiers of ``jiio_ext.apps.bench.user_classifiers`` are held out; the rule is
chosen here, on classifiers of the same kind built only for this purpose (other cells, widths
and spectral norms), attacked on held-out digits the user rows do not use (test digits
128-255). Each variant runs JIIOPGD / JIIOPGDL2 with ``steps=10`` (or ``--steps``) next to
torchattacks' PGD with the same steps, L∞ (ε 0.1) and L2 (ε 1), α = ε / 4, untargeted and
targeted. The ``ips2`` / ``ips3`` / ``ips4`` variants sweep ``iterations_per_step``;
``no-model-check`` is ``model_check=False``. ``--held-out`` runs the same loop on the user
classifiers instead (test digits 0-127, the targets of ``jiio bench adversarial``): only for a
candidate already measured here. ``--held-out-wide`` attacks the user classifiers on every test
digit the development rows do not use (0-127 and 256-396, 269 images; the targets of the first
128 are the bench's), to tell a gap of two or three images from the sample's noise.

Usage::

    OMP_NUM_THREADS=1 python scripts/attack_safeguard_dev.py [--count 128] [--steps 10 20]
        [--variants ips2 ips3 ips4] [--held-out | --held-out-wide | --bench] [--json out.json]

Example:
    >>> sorted(DEV_CLASSIFIERS)
    ['dev-relu-16ch-1.3', 'dev-relu-8ch-1.7', 'dev-tanh-8ch-6']
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable

import torch

from jiio_ext.apps.bench.user_classifiers import _ANDERSON_IFT, UserClassifier

__all__ = ["DEV_CLASSIFIERS", "VARIANTS", "main", "run_dev"]

# development classifiers: non-contractive cells the user rows do not contain
DEV_CLASSIFIERS: dict[str, Callable[[], UserClassifier]] = {
    # a wider ReLU cell, milder spectral norm, another seed
    "dev-relu-16ch-1.3": lambda: UserClassifier(
        cell="relu", spectral_norm=1.3, channels=16, seed=1, deq_options=_ANDERSON_IFT
    ),
    # a ReLU cell like the user's, stronger, another seed
    "dev-relu-8ch-1.7": lambda: UserClassifier(
        cell="relu", spectral_norm=1.7, channels=8, seed=4, deq_options=_ANDERSON_IFT
    ),
    # a tanh cell tanh(0.3 conv(z) + u) with conv spectral norm 6 (1.8 after the 0.3)
    "dev-tanh-8ch-6": lambda: UserClassifier(
        cell="tanh", spectral_norm=6.0, channels=8, seed=2, deq_options=_ANDERSON_IFT
    ),
}

# variant name -> keyword arguments of JIIOPGD / JIIOPGDL2 (the default is "safeguard")
VARIANTS: dict[str, dict] = {
    "no-safeguard": {"safeguard": False},
    "safeguard": {},
    "no-model-check": {"model_check": False},
    "no-safeguard-ips8": {"safeguard": False, "iterations_per_step": 8},
    "no-safeguard-alpha_mu-1": {"safeguard": False, "alpha_mu": 1.0},
    "ips2": {"iterations_per_step": 2},
    "ips3": {"iterations_per_step": 3},
    "ips4": {"iterations_per_step": 4},
}


def _rate(model: torch.nn.Module, adv: torch.Tensor, wanted: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(adv).argmax(1) == wanted).float().mean())


def run_dev(
    count: int = 128,
    variants: list[str] | None = None,
    steps: tuple[int, ...] = (10,),
    held_out: bool = False,
    bench: bool = False,
    wide: bool = False,
) -> list[dict]:
    """Rows ``{model, norm, targeted, steps, pgd, <variant>...}`` of rate, time and flags.

    ``held_out``: attack the user classifiers on their own digits instead. ``bench``: attack
    the ``jiio bench adversarial`` classifier (``DEQClassifier``, trained 6 epochs as the
    bench does) on all 397 test digits (a development classifier too; ``count`` unused).
    ``wide``: the user classifiers on test digits 0-127 and 256-396 (``count`` unused).

    Example:
        >>> import inspect
        >>> list(inspect.signature(run_dev).parameters)
        ['count', 'variants', 'steps', 'held_out', 'bench', 'wide']
    """
    import torchattacks
    from jiio_ext.adapters.torchattacks import JIIOPGD, JIIOPGDL2

    from jiio_ext import Status
    from jiio_ext.apps.bench.user_classifiers import USER_CLASSIFIERS
    from jiio_ext.apps.data import load_digits
    from jiio_ext.apps.models import DEQClassifier, train_classifier

    device = torch.device("cpu")
    train_x, train_y, test_x, test_y = load_digits(device)
    held_out = held_out or wide
    first = 0 if held_out else 128  # the user rows' digits and target seed, or the dev ones
    gen = torch.Generator().manual_seed(0 if held_out else 1)
    if wide:  # every test digit but the development rows' 128-255; targets drawn over all
        # the test digits, so that digits 0-127 get the bench's targets
        targets = (test_y + torch.randint(1, 10, test_y.shape, generator=gen)) % 10
        rows_used = torch.cat([torch.arange(128), torch.arange(256, test_x.shape[0])])
        test_x, test_y, targets = test_x[rows_used], test_y[rows_used], targets[rows_used]
    else:
        if not bench:
            test_x, test_y = test_x[first : first + count], test_y[first : first + count]
        targets = (test_y + torch.randint(1, 10, test_y.shape, generator=gen)) % 10
    models = USER_CLASSIFIERS if held_out else DEV_CLASSIFIERS
    if bench:
        models = {"bench": DEQClassifier}
    rows = []
    for name, factory in models.items():
        model = factory()
        train_classifier(model, train_x, train_y, epochs=6 if bench else 4)
        clean = _rate(model, test_x, test_y)
        print(f"{name}: clean {clean:.3f}", flush=True)
        for norm, eps, stock_cls, jiio_cls in (
            ("linf", 0.1, torchattacks.PGD, JIIOPGD),
            ("l2", 1.0, torchattacks.PGDL2, JIIOPGDL2),
        ):
            for targeted, step_count in [(t, k) for k in steps for t in (False, True)]:
                row = {
                    "model": name,
                    "norm": norm,
                    "targeted": targeted,
                    "steps": step_count,
                    "clean": clean,
                }
                wanted = targets if targeted else test_y
                labels = targets if targeted else test_y
                attack = stock_cls(
                    model, eps=eps, alpha=eps / 4, steps=step_count, random_start=False
                )
                attack.set_model_training_mode(model_training=True)
                if targeted:
                    attack.set_mode_targeted_by_label(quiet=True)
                start = time.perf_counter()
                adv = attack(test_x, labels)
                elapsed = time.perf_counter() - start
                row["pgd"] = {"rate": _rate(model, adv, wanted), "time_s": elapsed}
                for variant in variants or list(VARIANTS):
                    attack = jiio_cls(
                        model,
                        eps=eps,
                        alpha=eps / 4,
                        steps=step_count,
                        random_start=False,
                        **VARIANTS[variant],
                    )
                    if targeted:
                        attack.set_mode_targeted_by_label(quiet=True)
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        adv = attack(test_x, labels)
                    elapsed = time.perf_counter() - start
                    info = attack.last_solution.info
                    first = info.get("status_joint", attack.last_solution.status)
                    flagged = int((first == Status.UNSETTLED).sum())
                    left = int((attack.last_solution.status == Status.UNSETTLED).sum())
                    row[variant] = {
                        "rate": _rate(model, adv, wanted),
                        "time_s": elapsed,
                        "unsettled": flagged,
                        "unsettled_after": left,
                    }
                rows.append(row)
                print(_format(row), flush=True)
    return rows


def _format(row: dict) -> str:
    mode = "targeted" if row["targeted"] else "untargeted"
    pgd, steps = row["pgd"], row["steps"]
    head = f"{row['model']} {row['norm']} {mode}: pgd{steps} {pgd['rate']:.3f}"
    cells = [f"{head} ({pgd['time_s']:.2f}s)"]
    for key, cell in row.items():
        if isinstance(cell, dict) and key != "pgd":
            speed = pgd["time_s"] / max(cell["time_s"], 1e-9)
            flags = f"u{cell['unsettled']}->{cell['unsettled_after']}"
            cells.append(f"{key} {cell['rate']:.3f} {speed:.1f}x {flags}")
    return " | ".join(cells)


def main() -> None:
    """Command line: run the development sweep, print rows, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--variants", nargs="*", default=None, choices=list(VARIANTS))
    parser.add_argument("--steps", nargs="*", type=int, default=[10])
    parser.add_argument("--held-out", action="store_true")
    parser.add_argument("--held-out-wide", action="store_true")
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = run_dev(
        args.count,
        args.variants,
        tuple(args.steps),
        args.held_out,
        args.bench,
        args.held_out_wide,
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
