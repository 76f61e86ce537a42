"""The options of ``jiio train TASK``, defined without importing torch.

``jiio train TASK --help`` builds these options only, so it answers at once. The name tuples
below are the one definition of the tasks' choices: the task modules (which import torch)
take theirs from here.

Example:
    >>> import argparse
    >>> args = add_meta_arguments(argparse.ArgumentParser()).parse_args(["--task", "digits"])
    >>> args.task, args.method, args.meta_lr
    ('digits', 'jiio', 0.001)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = [
    "DATASETS",
    "GENERATIVE_METHODS",
    "META_METHODS",
    "META_TASKS",
    "PROBLEMS",
    "add_adversarial_arguments",
    "add_generative_arguments",
    "add_meta_arguments",
]

# the image data sets of the generative and inverse trainers (jiio_ext.apps.data.DATASETS;
# "digits" is bundled, the others are read from a data folder)
DATASETS = ("digits", "mnist", "cifar10", "celeba")
# latent inference in the decoder's training loop (jiio_ext.apps.tasks.generative.METHODS):
# joint JIIO inference, the nested (Adam) inner loop, a VAE baseline
GENERATIVE_METHODS = ("jiio", "nested", "vae")
# reconstruction, then the inverse problems of jiio_ext.adapters.kornia
# (jiio_ext.apps.tasks.generative.PROBLEMS)
PROBLEMS = (
    "reconstruct",
    "denoise",
    "inpaint",
    "inpaint-irregular",
    "deblur",
    "deblur-motion",
    "superres",
)
# the task families of meta-learning (jiio_ext.apps.tasks.meta.TASKS)
META_TASKS = ("sinusoid", "digits", "omniglot")
# the inner loops and meta-gradients (jiio_ext.apps.tasks.meta_methods.METHODS)
META_METHODS = ("jiio", "maml", "fomaml", "imaml")


def _add_data_arguments(parser: argparse.ArgumentParser, datasets: Sequence[str]) -> None:
    parser.add_argument("--data", choices=datasets, default="digits", help="data set")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="torchvision data folder, in torchvision's layout (needed by every --data but "
        "digits; nothing is downloaded)",
    )


def _add_run_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """The run folder, resume and device options every trainer takes."""
    parser.add_argument("--out", default=None, help=f"run folder (default {default_out})")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    parser.add_argument("--device", default="cpu", help="torch device")


def add_adversarial_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``jiio train adversarial`` to a (sub)parser.

    Args:
        parser: the parser to extend.

    Returns:
        ``parser``.

    Example:
        >>> args = add_adversarial_arguments(argparse.ArgumentParser()).parse_args([])
        >>> args.method, args.norm, args.epochs, args.batch_size
        ('jiio', 'linf', 5, 64)
    """
    parser.add_argument("--method", choices=("jiio", "pgd"), default="jiio", help="attack")
    parser.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model")
    parser.add_argument("--eps", type=float, default=None, help="radius (default 0.1 L∞, 1.0 L2)")
    parser.add_argument("--steps", type=int, default=10, help="attack steps (PGD-equivalent)")
    parser.add_argument(
        "--iterations-per-step",
        type=int,
        default=3,
        help="JIIO joint iterations per attack step in training",
    )
    parser.add_argument("--epochs", type=int, default=5, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.01, help="model learning rate (Adam)")
    parser.add_argument(
        "--train-size", type=int, default=None, help="first N training images (default: all)"
    )
    parser.add_argument("--eval-size", type=int, default=200, help="test images evaluated")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    _add_data_arguments(parser, ("digits", "mnist", "cifar10"))
    _add_run_arguments(parser, "jiio-runs/<time>-adversarial")
    parser.add_argument(
        "--no-robust-eval", action="store_true", help="skip the final robustness table"
    )
    return parser


def add_generative_arguments(
    parser: argparse.ArgumentParser, inverse: bool = False
) -> argparse.ArgumentParser:
    """Add the options of ``jiio train generative`` (or ``inverse``) to a (sub)parser.

    Args:
        parser: the parser to extend.
        inverse: add the inverse problem's options (``--problem``, ``--sigma``, ...).

    Returns:
        ``parser``.

    Example:
        >>> parser = add_generative_arguments(argparse.ArgumentParser(), inverse=True)
        >>> args = parser.parse_args(["--problem", "inpaint"])
        >>> args.problem, args.method, args.hypergrad
        ('inpaint', 'jiio', 'envelope')
    """
    if inverse:
        parser.add_argument(
            "--problem", choices=PROBLEMS[1:], default="denoise", help="degradation"
        )
        parser.add_argument(
            "--sigma", type=float, default=None, help="noise std on [0, 1] (denoise and others)"
        )
        parser.add_argument("--factor", type=int, default=None, help="superres factor (2 or 4)")
        parser.add_argument(
            "--hypergrad",
            choices=("envelope", "implicit"),
            default="envelope",
            help="JIIO's θ-gradient: x* held fixed, or the exact hypergradient through x*(θ)",
        )
    parser.add_argument(
        "--method", choices=GENERATIVE_METHODS, default="jiio", help="latent inference"
    )
    _add_data_arguments(parser, DATASETS)
    parser.add_argument("--image-size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--latent-dim", type=int, default=16, help="latent dimension")
    parser.add_argument("--channels", type=int, default=16, help="DEQ state channels")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument(
        "--train-size", type=int, default=None, help="first N training images (default: all)"
    )
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
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    _add_run_arguments(parser, "jiio-runs/<time>-...")
    return parser


def add_meta_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``jiio train meta`` to a (sub)parser.

    ``--lr`` and ``--batch-size``, the names every trainer takes, are aliases of ``--meta-lr``
    and ``--tasks-per-batch``.

    Args:
        parser: the parser to extend.

    Returns:
        ``parser``.

    Example:
        >>> args = add_meta_arguments(argparse.ArgumentParser()).parse_args(["--lr", "0.01"])
        >>> args.task, args.meta_lr, args.tasks_per_batch
        ('sinusoid', 0.01, 4)
    """
    parser.add_argument("--task", choices=META_TASKS, default="sinusoid", help="task family")
    parser.add_argument(
        "--method", choices=META_METHODS, default="jiio", help="inner loop / meta-gradient"
    )
    parser.add_argument("--epochs", type=int, default=5, help="training epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=50, help="meta-steps per epoch")
    parser.add_argument(
        "--tasks-per-batch", type=int, default=4, help="tasks per meta-step (global)"
    )
    parser.add_argument("--n-way", type=int, default=5, help="classes per task (digits, omniglot)")
    parser.add_argument(
        "--k-shot",
        type=int,
        default=None,
        help="support examples per class (default 1; sinusoid: 10 points)",
    )
    parser.add_argument(
        "--k-query",
        type=int,
        default=None,
        help="query examples per class (default 5; sinusoid: 10 points)",
    )
    parser.add_argument(
        "--inner-lr", type=float, default=None, help="inner step size (default: tuned per task)"
    )
    parser.add_argument(
        "--inner-steps", type=int, default=None, help="inner steps (default: tuned per task)"
    )
    parser.add_argument(
        "--prox", type=float, default=None, help="proximal weight (default: tuned per task)"
    )
    parser.add_argument(
        "--head-prox", type=float, default=None, help="proximal weight of the adapted head"
    )
    parser.add_argument("--meta-lr", type=float, default=1e-3, help="meta learning rate (Adam)")
    parser.add_argument(
        "--lr",
        dest="meta_lr",
        type=float,
        default=argparse.SUPPRESS,
        metavar="LR",
        help="the same as --meta-lr",
    )
    parser.add_argument(
        "--batch-size",
        dest="tasks_per_batch",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="the same as --tasks-per-batch",
    )
    parser.add_argument("--eval-tasks", type=int, default=64, help="held-out tasks evaluated")
    parser.add_argument("--data-dir", default=None, help="Omniglot folder (torchvision layout)")
    _add_run_arguments(parser, "jiio-runs/<time>-meta-...")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser
