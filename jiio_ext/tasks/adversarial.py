"""``jiio train adversarial``: Madry adversarial training of a DEQ classifier, and evaluation.

Methods: ``jiio`` (JIIOPGD / JIIOPGDL2 in the inner loop; the training logits come from the
attack's own solution, see :func:`jiio_ext.adapters.torchattacks.adversarial_logits`) and
``pgd`` (torchattacks' PGD / PGDL2 in the inner loop, then a training forward at ``x_adv``;
the DEQ uses the 'jiio' core so the stock attack has real gradients in eval mode).

Every run writes ``log.json``, ``checkpoint.pt`` (each epoch; ``resume=True`` continues from
it), ``curves.png`` and ``examples.png`` into its output folder and shows a tqdm bar with the
live loss and accuracy.

Example:
    >>> import tempfile
    >>> from jiio_ext.tasks.adversarial import train_adversarial
    >>> log = train_adversarial(epochs=1, train_size=64, eval_size=32, steps=2, eval_steps=2,
    ...                         out=tempfile.mkdtemp(), progress=False, robust_eval=False)
    >>> sorted(log["epochs"][0])
    ['clean_accuracy', 'epoch', 'epoch_time_s', 'robust_accuracy', 'train_loss']
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

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
    from jiio_ext.bench.adversarial import load_digits

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
) -> dict[str, float]:
    """Clean and robust accuracy under stock torchattacks attacks and JIIOPGD.

    Attacks: PGD-``steps``; PGD-50 with ``restarts`` random restarts (a sample counts as robust
    only if every restart fails); APGD-CE; Square (gradient-free, rules out gradient
    obfuscation); and the JIIO attack with ``steps``. The model must keep gradients in eval
    mode (the 'jiio' DEQ core does).

    Example:
        >>> import torch
        >>> from jiio_ext.bench.adversarial import DEQClassifier
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

    results = {"clean": float(correct(images).float().mean())}
    alpha = eps / 4
    results[f"pgd{steps}"] = float(
        correct(pgd_cls(model, eps=eps, alpha=alpha, steps=steps)(images, labels)).float().mean()
    )
    robust = torch.ones_like(labels, dtype=torch.bool)
    for _ in range(restarts):
        attack = pgd_cls(model, eps=eps, alpha=eps / 10, steps=50, random_start=True)
        robust &= correct(attack(images, labels))
    results["pgd50_restarts"] = float(robust.float().mean())
    apgd = torchattacks.APGD(
        model, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=steps, loss="ce"
    )
    results["apgd_ce"] = float(correct(apgd(images, labels)).float().mean())
    square = torchattacks.Square(
        model, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=square_queries
    )
    results["square"] = float(correct(square(images, labels)).float().mean())
    jiio = jiio_cls(model, eps=eps, alpha=alpha, steps=steps)
    results[f"jiio_pgd{steps}"] = float(correct(jiio(images, labels)).float().mean())
    return results


def _jacobian_term(model, attack, method: str, inputs: torch.Tensor) -> torch.Tensor:
    """Mean Hutchinson penalty of the DEQ layer (see ``train_adversarial``'s ``jac_reg``)."""
    from jiio_ext.adapters.torchdeq import input_optimizable, trajectory_penalty

    if method == "jiio":
        return trajectory_penalty(attack.last_solution).mean()
    # PGD-AT: at the DEQ's fixed point for the current batch (one cheap probe solve)
    probe = input_optimizable(model).optimize_input(
        inputs, lambda out, x: out.sum(1) * 0.0, step_size=1e-12, max_iter=60, rtol=1e-4
    )
    return trajectory_penalty(probe).mean()


def _plots(folder: Path, log: dict, clean: torch.Tensor, adversarial: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in log["epochs"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(epochs, [e["train_loss"] for e in log["epochs"]], marker="o")
    axes[0].set(xlabel="epoch", ylabel="adversarial training loss")
    axes[1].plot(epochs, [e["clean_accuracy"] for e in log["epochs"]], marker="o", label="clean")
    axes[1].plot(
        epochs, [e["robust_accuracy"] for e in log["epochs"]], marker="o", label="robust (PGD)"
    )
    axes[1].set(xlabel="epoch", ylabel="test accuracy")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=100)
    plt.close(fig)
    count = min(8, clean.shape[0])
    fig, axes = plt.subplots(2, count, figsize=(1.2 * count, 2.6))
    for i in range(count):
        for row, batch in enumerate((clean, adversarial)):
            image = batch[i].detach().cpu().permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
            axes[row, i].imshow(image, cmap="gray" if image.ndim == 2 else None)
            axes[row, i].axis("off")
    axes[0, 0].set_title("clean", fontsize=8, loc="left")
    axes[1, 0].set_title("adversarial", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(folder / "examples.png", dpi=100)
    plt.close(fig)


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
    eval_steps: int = 20,
    train_size: int | None = None,
    eval_size: int | None = 200,
    channels: int = 8,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    robust_eval: bool = True,
    jac_reg: float = 0.0,
) -> dict[str, Any]:
    """Madry adversarial training with JIIOPGD (``method='jiio'``) or PGD (``'pgd'``).

    Returns the run log (also written to ``out/log.json``): per epoch the training loss, the
    epoch's wall time, clean and PGD-``eval_steps`` robust test accuracy; and, with
    ``robust_eval``, the final :func:`evaluate_robustness` table. ``jac_reg > 0`` adds the
    Hutchinson Jacobian penalty of the DEQ layer with that weight: for ``'jiio'`` at a random
    point of the attack's joint trajectory (iteration 15 onwards), for ``'pgd'`` at the fixed
    point of the training forward.

    Example:
        >>> import tempfile
        >>> log = train_adversarial(method="pgd", epochs=1, train_size=32, eval_size=16,
        ...                         steps=1, eval_steps=1, out=tempfile.mkdtemp(),
        ...                         progress=False, robust_eval=False)
        >>> log["method"]
        'pgd'
    """
    from jiio_ext.adapters.torchattacks import adversarial_logits
    from jiio_ext.bench.adversarial import DEQClassifier

    if method not in ("jiio", "pgd"):
        raise ValueError(f"method: expected 'jiio' or 'pgd', got {method!r}")
    if norm not in THREATS:
        raise ValueError(f"norm: expected 'linf' or 'l2', got {norm!r}")
    for name, value in (("epochs", epochs), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    dev = torch.device(device)
    eps = THREATS[norm] if eps is None else eps
    train_x, train_y, test_x, test_y = load_dataset(data, data_dir, dev)
    if train_size:
        train_x, train_y = train_x[:train_size], train_y[:train_size]
    if eval_size:
        test_x, test_y = test_x[:eval_size], test_y[:eval_size]
    folder = Path(out)
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
        "data": data,
        "epochs": [],
    }
    start_epoch = 0
    checkpoint = folder / "checkpoint.pt"
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        log, start_epoch = state["log"], state["epoch"] + 1
    pgd_cls, jiio_cls = _attacks(norm)
    attack = (jiio_cls if method == "jiio" else pgd_cls)(model, eps=eps, alpha=eps / 4, steps=steps)
    evaluator = pgd_cls(model, eps=eps, alpha=eps / 4, steps=eval_steps)
    gen = torch.Generator().manual_seed(seed)
    adversarial = test_x
    for epoch in range(start_epoch, epochs):
        order = torch.randperm(train_x.shape[0], generator=gen).to(dev)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(batches, desc=f"{method} epoch {epoch + 1}/{epochs}", leave=False)
        total_loss, started = 0.0, time.perf_counter()
        for batch in bar if bar is not None else batches:
            images, labels = train_x[batch], train_y[batch]
            model.train()
            if method == "jiio":
                if jac_reg > 0:
                    budget = attack.iterations_per_step * attack.steps
                    attack.solve_options["trajectory"] = [random_trajectory_iteration(budget)]
                _, logits = adversarial_logits(attack, images, labels)
            else:
                adv = attack(images, labels)
                model.train()
                logits = model(adv)
            loss = F.cross_entropy(logits, labels)
            if jac_reg > 0:
                inputs = images if method == "jiio" else adv
                loss = loss + jac_reg * _jacobian_term(model, attack, method, inputs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(batch)
            if bar is not None:
                accuracy = float((logits.detach().argmax(1) == labels).float().mean())
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", adv_acc=f"{accuracy:.2f}")
        epoch_time = time.perf_counter() - started
        model.eval()
        adversarial = evaluator(test_x, test_y)
        with torch.no_grad():
            clean_acc = float((model(test_x).argmax(1) == test_y).float().mean())
            robust_acc = float((model(adversarial).argmax(1) == test_y).float().mean())
        log["epochs"].append(
            {
                "epoch": epoch + 1,
                "train_loss": total_loss / len(order),
                "epoch_time_s": round(epoch_time, 3),
                "clean_accuracy": clean_acc,
                "robust_accuracy": robust_acc,
            }
        )
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "log": log,
            },
            checkpoint,
        )
        (folder / "log.json").write_text(json.dumps(log, indent=2))
        if bar is not None:
            bar.close()
    if robust_eval:
        log["robustness"] = evaluate_robustness(
            model, test_x, test_y, norm=norm, eps=eps, steps=eval_steps
        )
    (folder / "log.json").write_text(json.dumps(log, indent=2))
    _plots(folder, log, test_x, adversarial)
    return log
