"""``jiio train adversarial``: Madry adversarial training of a DEQ classifier, and evaluation.

Methods: ``jiio`` (JIIOPGD / JIIOPGDL2 in the inner loop; the training logits come from the
attack's own solution, see :func:`jiio_ext.adapters.torchattacks.adversarial_logits`) and
``pgd`` (torchattacks' PGD / PGDL2 in the inner loop, then a training forward at ``x_adv``;
the DEQ uses the 'jiio' core so the stock attack has real gradients in eval mode).

Every run writes ``log.json``, ``checkpoint.pt`` (each epoch; ``resume=True`` continues from
it), ``curves.png`` and ``examples.png`` into its output folder and shows a tqdm bar with the
live loss and accuracy. It runs unchanged under ``torchrun`` (DistributedDataParallel over
:mod:`jiio_ext.apps.distributed`): each process attacks its part of every batch, the gradients are
averaged, the metrics summed, and rank 0 writes the files.

Example:
    >>> import tempfile
    >>> from jiio_ext.apps.tasks.adversarial import train_adversarial
    >>> log = train_adversarial(epochs=1, train_size=64, eval_size=32, steps=2, eval_steps=2,
    ...                         out=tempfile.mkdtemp(), progress=False, robust_eval=False)
    >>> sorted(log["epochs"][0])
    ['clean_accuracy', 'epoch', 'epoch_time_s', 'robust_accuracy', 'train_loss']
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from jiio_ext.apps.distributed import init_from_env
from jiio_ext.apps.runlog import log_header, write_json
from jiio_ext.apps.tasks.training import LOG, open_run, save_epoch
from jiio_ext.regularize import random_trajectory_iteration

__all__ = ["evaluate_robustness", "load_dataset", "train_adversarial"]

THREATS = {"linf": 0.1, "l2": 1.0}


def load_dataset(name: str, data_dir: str | None, device: torch.device):
    """``(train_x, train_y, test_x, test_y)`` with images in ``[0, 1]``.

    ``digits`` is scikit-learn's bundled set (no download); ``mnist`` and ``cifar10`` are read
    with torchvision's dataset classes from ``data_dir`` (``download=False``).

    Example:
        >>> import torch
        >>> load_dataset("digits", None, torch.device("cpu"))[0].shape
        torch.Size([1400, 1, 8, 8])
    """
    from jiio_ext.apps.data import load_digits

    if name == "digits":
        return load_digits(device)
    if name not in ("mnist", "cifar10"):
        raise ValueError(f"data: unknown data set {name!r}; expected digits, mnist or cifar10")
    if not data_dir or not Path(data_dir).is_dir():
        raise ValueError(f"data_dir: {data_dir!r} is not a readable folder (needed for {name})")
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.CIFAR10
    try:
        parts = [cls(root=data_dir, train=train, download=False) for train in (True, False)]
    except (RuntimeError, OSError) as err:
        raise ValueError(f"data_dir: cannot read {name} from {data_dir!r}: {err}") from err
    out = []
    for part in parts:
        data = torch.as_tensor(part.data, dtype=torch.float32) / 255.0
        data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
        out += [data.to(device), torch.as_tensor(part.targets, dtype=torch.long).to(device)]
    return tuple(out)


def _attacks(norm: str):
    import torchattacks

    from jiio_ext.adapters.torchattacks import JIIOPGD, JIIOPGDL2

    return (torchattacks.PGD, JIIOPGD) if norm == "linf" else (torchattacks.PGDL2, JIIOPGDL2)


def evaluate_robustness(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float | None = None,
    steps: int = 20,
    restarts: int = 2,
    square_queries: int = 300,
    progress: bool = False,
) -> dict[str, float]:
    """Clean and robust accuracy under stock torchattacks attacks and JIIOPGD.

    Attacks: PGD-``steps``; PGD-50 with ``restarts`` random restarts (a sample counts as robust
    only if every restart fails); APGD-CE; Square (gradient-free, rules out gradient
    obfuscation); and the JIIO attack with ``steps``. The model must keep gradients in eval
    mode (the 'jiio' DEQ core does). ``progress`` shows a bar over the attacks.

    Example:
        >>> import torch
        >>> from jiio_ext.apps.models import DEQClassifier
        >>> res = evaluate_robustness(DEQClassifier().eval(), torch.rand(4, 1, 8, 8),
        ...                           torch.arange(4), steps=2, restarts=1, square_queries=5)
        >>> sorted(res)[:2]
        ['apgd_ce', 'clean']
    """
    import torchattacks

    if norm not in THREATS:
        raise ValueError(f"norm: expected 'linf' or 'l2', got {norm!r}")
    eps = THREATS[norm] if eps is None else eps
    pgd_cls, jiio_cls = _attacks(norm)
    model.eval()

    def correct(adv: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(adv).argmax(1) == labels

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=4 + restarts, desc="robustness evaluation", leave=False)

    def done(attack: str) -> None:
        if bar is not None:
            bar.set_postfix_str(attack)
            bar.update()

    results = {"clean": float(correct(images).float().mean())}
    alpha = eps / 4
    results[f"pgd{steps}"] = float(
        correct(pgd_cls(model, eps=eps, alpha=alpha, steps=steps)(images, labels)).float().mean()
    )
    done(f"PGD-{steps}")
    robust = torch.ones_like(labels, dtype=torch.bool)
    for restart in range(restarts):
        attack = pgd_cls(model, eps=eps, alpha=eps / 10, steps=50, random_start=True)
        robust &= correct(attack(images, labels))
        done(f"PGD-50 restart {restart + 1}")
    results["pgd50_restarts"] = float(robust.float().mean())
    apgd = torchattacks.APGD(
        model, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=steps, loss="ce"
    )
    results["apgd_ce"] = float(correct(apgd(images, labels)).float().mean())
    done("APGD-CE")
    square = torchattacks.Square(
        model, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=square_queries
    )
    results["square"] = float(correct(square(images, labels)).float().mean())
    done("Square")
    jiio = jiio_cls(model, eps=eps, alpha=alpha, steps=steps)
    results[f"jiio_pgd{steps}"] = float(correct(jiio(images, labels)).float().mean())
    done(f"JIIOPGD-{steps}")
    if bar is not None:
        bar.close()
    return results


def _plots(
    folder: Path,
    log: dict,
    clean: torch.Tensor,
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    model: nn.Module,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jiio_ext.apps.figures import training_curves

    panels = [
        (
            "adversarial training loss",
            [("steps", "train_loss", "per batch"), ("epochs", "train_loss", "epoch mean")],
            False,
        ),
        (
            "accuracy",
            [
                ("steps", "train_adversarial_accuracy", "training batch, under attack"),
                ("epochs", "clean_accuracy", "test, clean"),
                ("epochs", "robust_accuracy", "test, robust (PGD)"),
            ],
            False,
        ),
    ]
    training_curves(log, folder / "curves.png", panels, f"adversarial training ({log['method']})")
    count = min(8, clean.shape[0])
    with torch.no_grad():
        predicted = [model(batch[:count]).argmax(1).cpu() for batch in (clean, adversarial)]
    fig, axes = plt.subplots(2, count, figsize=(1.2 * count, 3.0), squeeze=False)
    for i in range(count):
        for row, batch in enumerate((clean, adversarial)):
            image = batch[i].detach().cpu().permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
            axes[row, i].imshow(
                image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest"
            )
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
            axes[row, i].set_title(f"{int(labels[i])} → {int(predicted[row][i])}", fontsize=8)
    axes[0, 0].set_ylabel("clean", fontsize=8)
    axes[1, 0].set_ylabel("adversarial", fontsize=8)
    fig.suptitle("test digits: true class → predicted class", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "examples.png", dpi=100)
    plt.close(fig)


class _TrainingStep(nn.Module):
    """One training forward: attack the given samples, return per-sample losses and logits.

    This module (not the bare classifier) is what :meth:`DistContext.wrap` puts under
    DistributedDataParallel: the attack's many inner forwards and input gradients run on the
    bare classifier inside this one forward call, so DDP sees exactly one forward per step and
    all-reduces every parameter gradient of the training loss, whichever gradient path (PGD's
    training forward or JIIO's envelope gradient) produced it.
    """

    def __init__(self, model: nn.Module, attack: Any, method: str, jac_reg: float) -> None:
        super().__init__()
        self.model = model
        self.attack, self.method, self.jac_reg = attack, method, jac_reg

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample training losses ``(b,)`` and the logits at the adversarial images."""
        from jiio_ext.adapters.torchattacks import adversarial_logits
        from jiio_ext.adapters.torchdeq import input_optimizable, trajectory_penalty

        if self.method == "jiio":
            if self.jac_reg > 0:
                budget = self.attack.iterations_per_step * self.attack.steps
                self.attack.solve_options["trajectory"] = [random_trajectory_iteration(budget)]
            _, logits = adversarial_logits(self.attack, images, labels)
        else:
            adversarial = self.attack(images, labels)
            self.model.train()
            logits = self.model(adversarial)
        losses = F.cross_entropy(logits, labels, reduction="none")
        if self.jac_reg > 0:
            if self.method == "jiio":  # at a random point of the attack's joint trajectory
                solution = self.attack.last_solution
            else:  # at the DEQ's fixed point for the training input (one cheap probe solve)
                solution = input_optimizable(self.model).solve_forward(
                    adversarial, max_iter=60, rtol=1e-4
                )
            losses = losses + self.jac_reg * trajectory_penalty(solution)
        return losses, logits


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's shuffling and random starts (so a resumed run repeats them)."""
    return seed * 1009 + epoch


def train_adversarial(
    *,
    method: str = "jiio",
    norm: str = "linf",
    eps: float | None = None,
    steps: int = 10,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 0.01,
    data: str = "digits",
    data_dir: str | None = None,
    out: str = "jiio-runs/adversarial",
    resume: bool = False,
    overwrite: bool = False,
    eval_steps: int = 20,
    train_size: int | None = None,
    eval_size: int | None = 200,
    channels: int = 8,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    robust_eval: bool = True,
    jac_reg: float = 0.0,
    random_start: bool = True,
    iterations_per_step: int = 3,
) -> dict[str, Any]:
    """Madry adversarial training with JIIOPGD (``method='jiio'``) or PGD (``'pgd'``).

    Returns the run log (also written to ``out/log.json``): per epoch the training loss, the
    epoch's wall time, clean and PGD-``eval_steps`` robust test accuracy; and, with
    ``robust_eval``, the final :func:`evaluate_robustness` table. ``jac_reg > 0`` adds the
    Hutchinson Jacobian penalty of the DEQ layer with that weight: for ``'jiio'`` at a random
    point of the attack's joint trajectory (iteration 15 onwards), for ``'pgd'`` at the fixed
    point of the training forward. ``random_start`` starts the training and evaluation attacks
    at a random point of the threat ball (Madry's recipe; ``False`` starts at the clean image).
    ``iterations_per_step`` sets the JIIO training attack's budget (``iterations_per_step ×
    steps`` joint iterations; the attacks' own default is 4, the evaluation keeps it): 3 gave
    the same robust accuracy as 4 in 25–30 % less time (docs/results.md).

    Under ``torchrun`` (see :mod:`jiio_ext.apps.distributed`) every process takes an equal part of
    each global batch of ``batch_size`` samples (it must be a multiple of the number of
    processes; an epoch's last, smaller batch is split as evenly as possible and skipped if it
    has fewer samples than processes), attacks its own samples, and DDP averages the
    gradients: the parameters follow the single-process run with the same ``batch_size``
    (exactly, up to float rounding, without ``random_start`` and ``jac_reg``; with them,
    each process draws its own random starts and trajectory points). The test set is split
    the same way and the accuracies are summed over the processes; a CUDA ``device`` becomes
    ``cuda:LOCAL_RANK``. Only rank 0 writes files and shows the progress bar; ``resume``
    reads the checkpoint on rank 0 and broadcasts it.

    ``resume`` needs a checkpoint in ``out`` written with the same settings (all but
    ``epochs``, ``device``, ``progress`` and ``robust_eval``; the error lists the differing
    ones). A new run into a folder that holds a run is refused unless ``overwrite``.

    Example:
        >>> import tempfile
        >>> log = train_adversarial(method="pgd", epochs=1, train_size=32, eval_size=16,
        ...                         steps=1, eval_steps=1, out=tempfile.mkdtemp(),
        ...                         progress=False, robust_eval=False)
        >>> log["method"]
        'pgd'
    """
    from jiio_ext.apps.models import DEQClassifier

    if method not in ("jiio", "pgd"):
        raise ValueError(f"method: expected 'jiio' or 'pgd', got {method!r}")
    if norm not in THREATS:
        raise ValueError(f"norm: expected 'linf' or 'l2', got {norm!r}")
    for name, value in (
        ("epochs", epochs),
        ("steps", steps),
        ("batch_size", batch_size),
        ("iterations_per_step", iterations_per_step),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    ctx = init_from_env(device)
    try:
        ctx.check_batch_size(batch_size)
        dev = ctx.device
        eps = THREATS[norm] if eps is None else eps
        train_x, train_y, test_x, test_y = load_dataset(data, data_dir, dev)
        if train_size:
            train_x, train_y = train_x[:train_size], train_y[:train_size]
        if eval_size:
            test_x, test_y = test_x[:eval_size], test_y[:eval_size]
        if test_x.shape[0] < ctx.world_size:
            raise ValueError(
                f"eval_size: the test set has {test_x.shape[0]} samples, fewer than the "
                f"{ctx.world_size} processes; every process needs at least one"
            )
        # this process's part of the test set (the accuracies are summed over processes)
        test_rows = ctx.shard(test_x.shape[0])
        test_x, test_y = test_x[test_rows], test_y[test_rows]
        folder = Path(out)
        if ctx.is_main:
            folder.mkdir(parents=True, exist_ok=True)
        model = DEQClassifier(
            channels=channels, seed=seed, in_channels=train_x.shape[1], image_size=train_x.shape[-1]
        ).to(dev)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        log: dict[str, Any] = {
            "method": method,
            "norm": norm,
            "eps": eps,
            "steps": steps,
            "iterations_per_step": iterations_per_step if method == "jiio" else None,
            "data": data,
            "epochs": [],
        }
        start_epoch = 0
        settings = {
            "method": method,
            "norm": norm,
            "eps": eps,
            "steps": steps,
            "iterations_per_step": iterations_per_step,
            "batch_size": batch_size,
            "lr": lr,
            "data": data,
            "train_size": train_size,
            "eval_size": eval_size,
            "eval_steps": eval_steps,
            "channels": channels,
            "seed": seed,
            "jac_reg": jac_reg,
            "random_start": random_start,
        }
        log = {**log_header("adversarial", settings), **log}
        state = open_run(ctx, folder, settings, resume=resume, overwrite=overwrite)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            log, start_epoch = state["log"], state["epoch"] + 1
        pgd_cls, jiio_cls = _attacks(norm)
        budget = {"iterations_per_step": iterations_per_step} if method == "jiio" else {}
        attack = (jiio_cls if method == "jiio" else pgd_cls)(
            model, eps=eps, alpha=eps / 4, steps=steps, random_start=random_start, **budget
        )
        evaluator = pgd_cls(
            model, eps=eps, alpha=eps / 4, steps=eval_steps, random_start=random_start
        )
        step = ctx.wrap(_TrainingStep(model, attack, method, jac_reg))
        adversarial = test_x
        for epoch in range(start_epoch, epochs):
            ctx.manual_seed(_epoch_seed(seed, epoch))  # this process's random starts
            shuffle = torch.Generator().manual_seed(_epoch_seed(seed, epoch))  # same everywhere
            order = torch.randperm(train_x.shape[0], generator=shuffle).to(dev)
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            batches = [batch for batch in batches if len(batch) >= ctx.world_size]
            bar = None
            if progress and ctx.is_main:
                from tqdm.auto import tqdm

                bar = tqdm(batches, desc=f"{method} epoch {epoch + 1}/{epochs}", leave=False)
            loss_sum, seen, started = 0.0, 0, time.perf_counter()
            for batch in bar if bar is not None else batches:
                rows = batch[ctx.shard(len(batch))]
                images, labels = train_x[rows], train_y[rows]
                step.train()
                losses, logits = step(images, labels)
                optimizer.zero_grad()
                ctx.global_mean(losses, len(batch)).backward()
                optimizer.step()
                loss_sum += float(losses.detach().sum())
                seen += len(rows)
                correct = float((logits.detach().argmax(1) == labels).sum())
                step_totals = ctx.all_reduce_sum(
                    {"loss": float(losses.detach().sum()), "correct": correct, "n": len(rows)}
                )
                log.setdefault("training_steps", []).append(
                    {
                        "step": len(log["training_steps"]) + 1,
                        "epoch": epoch + 1,
                        "train_loss": step_totals["loss"] / step_totals["n"],
                        "train_adversarial_accuracy": step_totals["correct"] / step_totals["n"],
                    }
                )
                if bar is not None:
                    accuracy = float((logits.detach().argmax(1) == labels).float().mean())
                    bar.set_postfix(
                        loss=f"{float(losses.detach().mean()):.3f}", adv_acc=f"{accuracy:.2f}"
                    )
            epoch_time = time.perf_counter() - started
            model.eval()
            adversarial = evaluator(test_x, test_y)
            with torch.no_grad():
                clean = float((model(test_x).argmax(1) == test_y).sum())
                robust = float((model(adversarial).argmax(1) == test_y).sum())
            totals = ctx.all_reduce_sum(
                {
                    "loss": loss_sum,
                    "samples": float(seen),
                    "clean": clean,
                    "robust": robust,
                    "test": float(test_x.shape[0]),
                }
            )
            log["epochs"].append(
                {
                    "epoch": epoch + 1,
                    "train_loss": totals["loss"] / totals["samples"],
                    "epoch_time_s": round(epoch_time, 3),
                    "clean_accuracy": totals["clean"] / totals["test"],
                    "robust_accuracy": totals["robust"] / totals["test"],
                }
            )
            save_epoch(
                ctx,
                folder,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "log": log,
                    "settings": settings,
                },
                log,
            )
            if bar is not None:
                bar.close()
        if robust_eval:
            local = evaluate_robustness(
                model,
                test_x,
                test_y,
                norm=norm,
                eps=eps,
                steps=eval_steps,
                progress=progress and ctx.is_main,
            )
            count = float(test_x.shape[0])
            summed = ctx.all_reduce_sum({key: value * count for key, value in local.items()})
            total = ctx.all_reduce_sum(count)
            log["robustness"] = {key: value / total for key, value in summed.items()}
        if ctx.is_main:
            write_json(folder / LOG, log)
            _plots(folder, log, test_x, adversarial, test_y, model)
        return log
    finally:
        ctx.close()
