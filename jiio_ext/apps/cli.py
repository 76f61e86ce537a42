"""The ``jiio`` command: ``jiio demo``, ``jiio bench TASK`` and ``jiio train TASK``.

Heavy modules (torch and the optional libraries) are imported only once the arguments are
parsed and only for the subcommand that runs, so ``jiio --help`` and ``jiio --version`` answer
at once. Every subcommand takes ``--threads`` (intra-op CPU threads; default
``$OMP_NUM_THREADS`` if set, else 1, see :func:`configure_threads`).

Example:
    >>> from jiio_ext.apps.cli import build_parser
    >>> build_parser().parse_args(["bench", "latent", "--quick"]).quick
    True
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jiio_ext import __version__
from jiio_ext.apps.train_options import (
    add_adversarial_arguments,
    add_generative_arguments,
    add_meta_arguments,
)

__all__ = ["BENCH_TASKS", "EXTRAS", "build_parser", "configure_threads", "main"]

# Names of the benchmarks of ``jiio bench`` (the keys of :data:`jiio_ext.apps.bench.TASKS`,
# kept here so that building the parser imports no torch; tests/test_cli.py checks they agree).
BENCH_TASKS = ("adversarial", "autocast", "inverse", "latent", "meta", "overhead", "torchdeq")
# The optional libraries by the pip extra that installs them.
EXTRAS = {
    "torchdeq": "deq",
    "torchattacks": "attacks",
    "torchvision": "attacks",
    "higher": "meta",
    "kornia": "inverse",
    "matplotlib": "demo",
    "sklearn": "demo",
}
_TRAINERS = {
    "adversarial": "Madry adversarial training of a DEQ classifier",
    "generative": "train a DEQ decoder whose latents are inferred in the loop",
    "inverse": "train a DEQ decoder for an inverse problem (denoise, inpaint, ...)",
    "meta": "meta-learning of a FiLM DEQ: JIIO, MAML, FOMAML, iMAML",
}
_THREADS_HELP = (
    "intra-op CPU threads of torch (default: $OMP_NUM_THREADS if set, else 1: the batches here "
    "are small, so more threads gain little, and on a shared machine they oversubscribe the "
    "cores and can make a run many times slower)"
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows every option's default, also for options without a help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
        if not shown or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Use :class:`_HelpFormatter` in ``parser`` and its subparsers; give bare options a help."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:  # argparse has no public walk over its actions
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)
        elif action.help is None and action.option_strings:
            # argparse prints no help line, hence no default, for an option without a help
            action.help = "(default: %(default)s)" if action.default is not None else None


def _common() -> argparse.ArgumentParser:
    """The options every subcommand takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``jiio``; building it imports no torch.

    Returns:
        The parser.

    Example:
        >>> parser = build_parser()
        >>> parser.prog, parser.parse_args(["demo"]).threads is None
        ('jiio', True)
    """
    common = _common()
    parser = argparse.ArgumentParser(
        prog="jiio", description="Joint inference and input optimisation for DEQs."
    )
    parser.add_argument("--version", action="version", version=f"jiio-ext {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser(
        "bench", parents=[common], help="run a benchmark: JIIO and its baseline side by side"
    )
    bench.add_argument(
        "task", choices=sorted(BENCH_TASKS) + ["all", "meta-example", "zoo"], help="benchmark task"
    )
    bench.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    bench.add_argument("--json", action="store_true", help="print one JSON object per task")
    bench.add_argument("--quick", action="store_true", help="small batch and budget")
    bench.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    # meta-example only (jiio_ext.apps.bench.meta_example)
    bench.add_argument("--data-dir", default=None, help="meta-example: Omniglot folder")
    bench.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="meta-example")
    bench.add_argument("--meta-steps", type=int, default=12, help="meta-example")
    bench.add_argument("--out", default=".", help="meta-example: folder of the loss plot")

    train = sub.add_parser("train", help="train a model with JIIO or its baseline in the loop")
    train_sub = train.add_subparsers(dest="train_task", required=True)
    for name, helptext in _TRAINERS.items():
        task_parser = train_sub.add_parser(name, parents=[common], help=helptext)
        if name == "adversarial":
            add_adversarial_arguments(task_parser)
        elif name == "meta":
            add_meta_arguments(task_parser)
        else:
            add_generative_arguments(task_parser, inverse=name == "inverse")

    demo = sub.add_parser(
        "demo", parents=[common], help="run every available task on the default data"
    )
    demo.add_argument("--device", default="cpu", help="torch device")
    demo.add_argument(
        "--quick", action="store_true", help="small budgets: under 3 minutes on 2 CPU cores"
    )
    demo.add_argument("--out", default="jiio-runs", help="folder for the run record")
    demo.add_argument("--tasks", nargs="+", default=None, help="run only these tasks")
    _show_defaults(parser)
    return parser


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads; returns the number set.

    The default is ``$OMP_NUM_THREADS`` when it is set, else 1. The problems of this package
    run small batches, where more threads gain little; and on a machine whose cores are busy,
    OpenMP threads that spin waiting for each other make a run many times slower (a quick demo:
    158 s with 1 thread, 2,980 s with 2 on a loaded 2-core machine).

    Args:
        threads: the number asked for (``--threads``), or ``None`` for the default.

    Returns:
        The number of threads torch now uses.

    Raises:
        SystemExit: ``threads`` is below 1.

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> configure_threads(1)
        1
        >>> configure_threads(before) == before
        True
    """
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else 1
    if threads < 1:
        raise SystemExit(f"jiio: --threads: expected a positive integer, got {threads}")
    # before torch is imported this also reaches OpenMP, MKL and OpenBLAS in other libraries
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    return threads


def _is_main_process() -> bool:
    """Under torchrun only rank 0 prints the results."""
    return int(os.environ.get("RANK", "0")) == 0


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise SystemExit(f"jiio: --device: {err}") from None
    if dev.type == "meta":
        raise SystemExit(f"jiio: --device {device}: 'meta' tensors hold no data; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"jiio: --device {device}: CUDA is not available on this machine")


def _check_data_flags(args: argparse.Namespace) -> None:
    """Reject data and problem flags that the chosen data or problem would silently ignore."""
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and getattr(args, "data", None) == "digits":
        raise SystemExit(
            "jiio: --data-dir is only read with --data mnist/cifar10/...; the default digits "
            "are bundled (add --data NAME)"
        )
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SystemExit(f"jiio: --data-dir {data_dir}: no such folder")
    problem = getattr(args, "problem", None)
    if getattr(args, "factor", None) is not None and problem != "superres":
        raise SystemExit(f"jiio: --factor is an option of --problem superres, not {problem}")


def _flag_names(message: str, parser: argparse.ArgumentParser | None) -> str:
    """Name the CLI's flags in a library error: ``data_dir: ...`` becomes ``--data-dir: ...``."""
    match = re.match(r"([a-z_]+): ", message)
    if parser is not None and match:
        flag = "--" + match.group(1).replace("_", "-")
        if flag in parser._option_string_actions:  # argparse's own table of options
            message = flag + message[len(match.group(1)) :]
    return message.replace(
        "You can use download=True to download it",
        "Put the files there in torchvision's layout (jiio downloads nothing)",
    )


def _missing_extra(err: ImportError) -> str | None:
    """``pip install 'jiio-ext[EXTRA]'`` for an import error of an optional library, else None."""
    seen: ImportError | BaseException | None = err
    while seen is not None:
        name = getattr(seen, "name", None) or ""
        extra = EXTRAS.get(name.split(".")[0])
        if extra is not None:
            return f"{name.split('.')[0]} is not installed: pip install 'jiio-ext[{extra}]'"
        seen = seen.__cause__ or seen.__context__
    return None


def _run_bench(args: argparse.Namespace) -> int:
    import torch

    from jiio_ext.apps.bench import run_task

    if args.task == "meta-example":
        from jiio_ext.apps.bench.meta_example import run_cli

        return run_cli(args)
    if args.task == "zoo":
        from jiio_ext.apps.bench.zoo import run_cli as run_zoo

        return run_zoo(args)
    names = sorted(BENCH_TASKS) if args.task == "all" else [args.task]
    for name in names:
        dtype = getattr(torch, args.dtype)
        report = run_task(name, device=args.device, quick=args.quick, dtype=dtype)
        from jiio_ext.apps.summary import format_report

        print(json.dumps(report) if args.json else format_report(report), flush=True)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from jiio_ext.apps.demo import run_demo

    budget = "quick" if args.quick else "full"
    try:
        run_demo(args.out, device=args.device, budget=budget, tasks=args.tasks)
    except ValueError as err:
        raise SystemExit(f"jiio demo: {err}") from None
    except KeyboardInterrupt:  # run_demo has written the report of the finished tasks
        return 130
    return 0


def _run_train_generative(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jiio_ext.apps.tasks.generative import train_generative

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
            overwrite=args.overwrite,
            device=args.device,
        )
    except (ValueError, TypeError) as err:
        raise SystemExit(f"jiio train {args.train_task}: {_flag_names(str(err), parser)}") from None
    if not _is_main_process():
        return 0
    rows = [
        [
            str(entry["epoch"]),
            f"{entry['epoch_time_s']:.2f}",
            f"{entry['train_loss']:.4f}",
            f"{entry['test_psnr']:.2f}",
            f"{entry['test_ssim']:.3f}",
        ]
        for entry in log["epochs"]
    ]
    header = ["epoch", "time (s)", "train MSE", "test PSNR (dB)", "test SSIM"]
    print(_table(header, rows))
    print(f"run folder: {out}")
    return 0


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    return "\n".join([line(header)] + [line(row) for row in rows])


def _run_train_adversarial(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jiio_ext.apps.tasks.adversarial import train_adversarial

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
            lr=args.lr,
            train_size=args.train_size,
            eval_size=args.eval_size,
            seed=args.seed,
            data=args.data,
            data_dir=args.data_dir,
            out=out,
            resume=args.resume,
            overwrite=args.overwrite,
            device=args.device,
            robust_eval=not args.no_robust_eval,
        )
    except ValueError as err:
        raise SystemExit(f"jiio train adversarial: {_flag_names(str(err), parser)}") from None
    if not _is_main_process():
        return 0
    rows = [
        [
            str(entry["epoch"]),
            f"{entry['epoch_time_s']:.2f}",
            f"{entry['train_loss']:.3f}",
            f"{entry['clean_accuracy']:.3f}",
            f"{entry['robust_accuracy']:.3f}",
        ]
        for entry in log["epochs"]
    ]
    print(_table(["epoch", "time (s)", "loss", "clean acc.", "robust acc."], rows))
    if "robustness" in log:
        print("\nfinal evaluation (accuracy, higher is better; lowest = strongest attack):")
        rows = [[attack, f"{value:.3f}"] for attack, value in log["robustness"].items()]
        print(_table(["attack", "accuracy"], rows))
    print(f"run folder: {out}")
    return 0


def _run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.train_task in ("generative", "inverse"):
        return _run_train_generative(args, parser)
    if args.train_task == "meta":
        from jiio_ext.apps.tasks.meta import run_meta_cli

        return run_meta_cli(args)
    return _run_train_adversarial(args, parser)


def _subparser(parser: argparse.ArgumentParser, names: Sequence[str]) -> Any:
    """The parser of the subcommand ``names`` (e.g. ``["train", "inverse"]``)."""
    for name in names:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = actions[0].choices[name]
    return parser


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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    # torch warns on import when numpy is missing; nothing here needs numpy without the extras
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    configure_threads(args.threads)
    _check_device(args.device)
    _check_data_flags(args)
    command = " ".join([args.command] + [getattr(args, "train_task", None) or ""]).strip()
    try:
        if args.command == "bench":
            return _run_bench(args)
        if args.command == "train":
            return _run_train(args, _subparser(parser, ["train", args.train_task]))
        return _run_demo(args)
    except ImportError as err:
        missing = _missing_extra(err)
        if missing is None:
            raise
        raise SystemExit(f"jiio {command}: {missing}") from None


if __name__ == "__main__":
    sys.exit(main())
