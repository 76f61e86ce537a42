"""The ``jiio`` command: ``jiio demo``, ``jiio bench TASK`` and ``jiio train TASK``.

Example:
    >>> from jiio_ext.cli import build_parser
    >>> build_parser().parse_args(["bench", "latent", "--quick"]).quick
    True
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from jiio_ext import __version__
from jiio_ext.bench import TASKS, run_task

__all__ = ["build_parser", "format_report", "main"]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def format_report(report: dict) -> str:
    """A small text table of one benchmark report.

    Args:
        report: a report from :func:`jiio_ext.bench.run_task`.

    Returns:
        The table as text.

    Example:
        >>> side = {"name": "a", "time_s": 1.0, "f_evals": 3, "objective": 0.5, "peak_mem_mb": 1.0}
        >>> print(format_report({"task": "t", "device": "cpu", "baseline": side, "jiio": side,
        ...                      "speedup_time": 1.0}).splitlines()[0])
        jiio bench t on cpu
    """
    lines = [f"jiio bench {report['task']} on {report['device']}"]
    header = f"  {'side':<9}{'time (s)':>10}{'f evals':>9}{'objective':>12}{'peak MB':>9}  method"
    lines.append(header)
    for key in ("baseline", "jiio"):
        side = report[key]
        lines.append(
            f"  {key:<9}{_fmt(side.get('time_s')):>10}{_fmt(side.get('f_evals')):>9}"
            f"{_fmt(side.get('objective')):>12}{_fmt(side.get('peak_mem_mb')):>9}  "
            f"{side.get('name', '')}"
        )
    for key in ("speedup_time", "speedup_evals", "overhead"):
        if key in report:
            lines.append(f"  {key}: {_fmt(report[key])}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``jiio``.

    Example:
        >>> build_parser().prog
        'jiio'
    """
    parser = argparse.ArgumentParser(
        prog="jiio", description="Joint inference and input optimisation for DEQs."
    )
    parser.add_argument("--version", action="version", version=f"jiio-ext {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="run a benchmark: JIIO and its baseline side by side")
    bench.add_argument("task", choices=sorted(TASKS) + ["all"], help="benchmark task")
    bench.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    bench.add_argument("--json", action="store_true", help="print one JSON object per task")
    bench.add_argument("--quick", action="store_true", help="small batch and budget")
    bench.add_argument("--dtype", choices=("float32", "float64"), default="float32")

    train = sub.add_parser("train", help="train a model with JIIO or its baseline in the loop")
    train_sub = train.add_subparsers(dest="train_task", required=True)
    adv = train_sub.add_parser("adversarial", help="Madry adversarial training of a DEQ")
    adv.add_argument("--method", choices=("jiio", "pgd"), default="jiio")
    adv.add_argument("--norm", choices=("linf", "l2"), default="linf")
    adv.add_argument("--eps", type=float, default=None, help="radius (default 0.1 L∞, 1.0 L2)")
    adv.add_argument("--steps", type=int, default=10, help="attack steps (PGD-equivalent)")
    adv.add_argument(
        "--iterations-per-step",
        type=int,
        default=3,
        help="JIIO joint iterations per attack step in training (default 3)",
    )
    adv.add_argument("--epochs", type=int, default=5)
    adv.add_argument("--batch-size", type=int, default=64)
    adv.add_argument("--data", choices=("digits", "mnist", "cifar10"), default="digits")
    adv.add_argument("--data-dir", default=None, help="torchvision data folder (mnist/cifar10)")
    adv.add_argument("--out", default=None, help="run folder (default jiio-runs/<time>-adv)")
    adv.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    adv.add_argument("--device", default="cpu")
    adv.add_argument("--no-robust-eval", action="store_true", help="skip the final evaluation")

    for name, helptext in (
        ("generative", "train a DEQ decoder whose latents are inferred in the loop"),
        ("inverse", "train a DEQ decoder for an inverse problem (denoise, inpaint, ...)"),
    ):
        _add_generative_arguments(train_sub.add_parser(name, help=helptext), name == "inverse")

    from jiio_ext.tasks.meta import add_meta_arguments

    add_meta_arguments(
        train_sub.add_parser("meta", help="meta-learning of a FiLM DEQ: JIIO, MAML, FOMAML, iMAML")
    )

    demo = sub.add_parser("demo", help="run every available task on the default data")
    demo.add_argument("--device", default="cpu", help="torch device")
    demo.add_argument("--quick", action="store_true", help="small batch and budget")
    demo.add_argument("--out", default="jiio-runs", help="folder for the run record")
    demo.add_argument("--tasks", nargs="+", default=None, help="run only these tasks")
    return parser


def _add_generative_arguments(parser: argparse.ArgumentParser, inverse: bool) -> None:
    from jiio_ext.tasks.generative import METHODS, PROBLEMS
    from jiio_ext.tasks.images import DATASETS

    if inverse:
        parser.add_argument("--problem", choices=PROBLEMS[1:], default="denoise")
        parser.add_argument("--sigma", type=float, default=None, help="noise std on [0, 1]")
        parser.add_argument("--factor", type=int, default=None, help="superres factor (2 or 4)")
        parser.add_argument(
            "--hypergrad",
            choices=("envelope", "implicit"),
            default="envelope",
            help="JIIO's θ-gradient: x* held fixed, or the exact hypergradient through x*(θ)",
        )
    parser.add_argument("--method", choices=METHODS, default="jiio")
    parser.add_argument("--data", choices=DATASETS, default="digits")
    parser.add_argument("--data-dir", default=None, help="torchvision data folder")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--channels", type=int, default=16, help="DEQ state channels")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=None, help="first N training images")
    parser.add_argument("--inner-iters", type=int, default=40, help="JIIO iterations / Adam steps")
    parser.add_argument("--inner-lr", type=float, default=0.3, help="nested Adam lr on latents")
    parser.add_argument("--eval-iters", type=int, default=100, help="test-time inference budget")
    parser.add_argument(
        "--eval-inference",
        choices=("jiio", "nested"),
        default="jiio",
        help="test-time inference of the jiio and nested decoders (the same for both)",
    )
    parser.add_argument("--lr", type=float, default=2e-3, help="model learning rate")
    parser.add_argument("--jac-reg", type=float, default=0.0, help="trajectory Jacobian penalty")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run folder (default jiio-runs/<time>-...)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--device", default="cpu")


def _is_main_process() -> bool:
    """Under torchrun only rank 0 prints the results."""
    return int(os.environ.get("RANK", "0")) == 0


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise SystemExit(f"jiio: --device: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"jiio: --device {device}: CUDA is not available on this machine")


def _run_bench(args: argparse.Namespace) -> int:
    names = sorted(TASKS) if args.task == "all" else [args.task]
    for name in names:
        dtype = getattr(torch, args.dtype)
        report = run_task(name, device=args.device, quick=args.quick, dtype=dtype)
        print(json.dumps(report) if args.json else format_report(report), flush=True)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from jiio_ext.demo import run_demo

    budget = "quick" if args.quick else "full"
    try:
        run_demo(args.out, device=args.device, budget=budget, tasks=args.tasks)
    except ValueError as err:
        raise SystemExit(f"jiio demo: {err}") from None
    return 0


def _run_train_generative(args: argparse.Namespace) -> int:
    from jiio_ext.tasks.generative import train_generative

    problem = getattr(args, "problem", "reconstruct")
    options = {}
    if getattr(args, "sigma", None) is not None:
        options["sigma" if problem == "denoise" else "noise_sigma"] = args.sigma
    if getattr(args, "factor", None) is not None:
        options["factor"] = args.factor
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or str(Path("jiio-runs") / f"{stamp}-{args.train_task}-{args.method}")
    try:
        log = train_generative(
            problem=problem,
            method=args.method,
            data=args.data,
            data_dir=args.data_dir,
            image_size=args.image_size,
            latent_dim=args.latent_dim,
            channels=args.channels,
            epochs=args.epochs,
            batch_size=args.batch_size,
            train_size=args.train_size,
            inner_iters=args.inner_iters,
            inner_lr=args.inner_lr,
            eval_iters=args.eval_iters,
            eval_inference=args.eval_inference,
            lr=args.lr,
            hypergrad=getattr(args, "hypergrad", "envelope"),
            jac_reg=args.jac_reg,
            problem_options=options,
            seed=args.seed,
            out=out,
            resume=args.resume,
            device=args.device,
        )
    except (ValueError, TypeError) as err:
        raise SystemExit(f"jiio train {args.train_task}: {err}") from None
    if not _is_main_process():
        return 0
    for entry in log["epochs"]:
        print(
            f"epoch {entry['epoch']}: {entry['epoch_time_s']:.2f} s, train MSE "
            f"{entry['train_loss']:.4f}, test PSNR {entry['test_psnr']:.2f} dB, SSIM "
            f"{entry['test_ssim']:.3f}"
        )
    print(f"run folder: {out}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from jiio_ext.tasks.adversarial import train_adversarial

    if args.train_task in ("generative", "inverse"):
        return _run_train_generative(args)
    if args.train_task == "meta":
        from jiio_ext.tasks.meta import run_meta_cli

        return run_meta_cli(args)

    out = args.out or str(Path("jiio-runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-adversarial")
    try:
        log = train_adversarial(
            method=args.method,
            norm=args.norm,
            eps=args.eps,
            steps=args.steps,
            iterations_per_step=args.iterations_per_step,
            epochs=args.epochs,
            batch_size=args.batch_size,
            data=args.data,
            data_dir=args.data_dir,
            out=out,
            resume=args.resume,
            device=args.device,
            robust_eval=not args.no_robust_eval,
        )
    except ValueError as err:
        raise SystemExit(f"jiio train adversarial: {err}") from None
    if not _is_main_process():
        return 0
    for entry in log["epochs"]:
        print(
            f"epoch {entry['epoch']}: {entry['epoch_time_s']:.2f} s, loss "
            f"{entry['train_loss']:.3f}, clean {entry['clean_accuracy']:.3f}, robust "
            f"{entry['robust_accuracy']:.3f}"
        )
    if "robustness" in log:
        print("robust accuracy:", json.dumps(log["robustness"]))
    print(f"run folder: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jiio`` console script.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code.

    Example:
        >>> main(["--version"])  # prints "jiio-ext <version>" and exits with status 0
        Traceback (most recent call last):
            ...
        SystemExit: 0
        >>> main(["bench", "no-such-task"])  # a usage error: argparse exits with status 2
        Traceback (most recent call last):
            ...
        SystemExit: 2
    """
    args = build_parser().parse_args(argv)
    _check_device(args.device)
    if args.command == "bench":
        return _run_bench(args)
    if args.command == "train":
        return _run_train(args)
    return _run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
