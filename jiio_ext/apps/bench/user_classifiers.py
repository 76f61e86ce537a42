"""Digit classifiers written the way users write torchdeq models (none tuned for JIIO).

Used by ``jiio bench adversarial`` for its user-model rows, next to its own classifier:

* ``get-started``: ``tanh(0.3 · conv(z) + u)`` with torchdeq's default ``get_deq()`` (plain
  fixed-point iteration, 40 steps, one-step gradient);
* ``non-contractive``: a ReLU cell whose convolution is scaled to spectral norm 1.5, solved
  with torchdeq's Anderson (plain iteration does not converge on it);
* ``weight-norm``: a cell with torchdeq's weight norm (``apply_norm`` / ``reset_norm``),
  Anderson forward and IFT backward.

Example:
    >>> import torch
    >>> from jiio_ext.apps.bench.user_classifiers import USER_CLASSIFIERS
    >>> sorted(USER_CLASSIFIERS)
    ['get-started', 'non-contractive', 'weight-norm']
    >>> USER_CLASSIFIERS["get-started"]()(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["USER_CLASSIFIERS", "UserClassifier", "bench_user_attacks", "format_user_attacks"]


class UserClassifier(nn.Module):
    """stem → DEQ cell on 8×8 feature maps → linear head.

    Args:
        cell: ``"tanh"`` (``tanh(0.3 · conv(z) + u)``) or ``"relu"`` (``relu(conv(z) + u)``).
        deq_options: options of ``torchdeq.get_deq`` (empty: torchdeq's defaults).
        spectral_norm: if given, the cell's convolution is scaled to this spectral norm.
        weight_norm: apply torchdeq's weight norm to the cell.
        channels: feature channels.
        seed: initialisation seed.

    Example:
        >>> import torch
        >>> model = UserClassifier(cell="relu", spectral_norm=1.5,
        ...                        deq_options={"f_solver": "anderson"})
        >>> model(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        cell: str = "tanh",
        deq_options: dict | None = None,
        spectral_norm: float | None = None,
        weight_norm: bool = False,
        channels: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from torchdeq import get_deq
        from torchdeq.norm import apply_norm

        from jiio_ext.apps.models import scale_spectral_norm_

        if cell not in ("tanh", "relu"):
            raise ValueError(f"cell: expected 'tanh' or 'relu', got {cell!r}")
        torch.manual_seed(seed)
        self.kind = cell
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.cell = nn.Conv2d(channels, channels, 3, padding=1)
        self.head = nn.Linear(channels * 64, 10)
        if spectral_norm is not None:
            scale_spectral_norm_(self.cell.weight, spectral_norm)
        self.weight_norm = weight_norm
        if weight_norm:
            apply_norm(self.cell, norm_type="weight_norm")
        self.deq = get_deq(**(deq_options or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 1, 8, 8)`` in ``[0, 1]`` → logits ``(B, 10)``."""
        from torchdeq.norm import reset_norm

        if self.weight_norm:
            reset_norm(self.cell)
        u = self.stem(x)
        if self.kind == "tanh":
            z_out, _ = self.deq(lambda z: torch.tanh(0.3 * self.cell(z) + u), torch.zeros_like(u))
        else:
            z_out, _ = self.deq(lambda z: torch.relu(self.cell(z) + u), torch.zeros_like(u))
        return self.head(z_out[-1].flatten(1))


_ANDERSON_IFT = {
    "f_solver": "anderson",
    "f_max_iter": 40,
    "f_tol": 1e-4,
    "ift": True,
    "b_solver": "anderson",
    "b_max_iter": 40,
    "b_tol": 1e-4,
}

# name -> factory of an untrained classifier
USER_CLASSIFIERS: dict[str, Callable[[], UserClassifier]] = {
    "get-started": lambda: UserClassifier(cell="tanh"),
    "non-contractive": lambda: UserClassifier(
        cell="relu", spectral_norm=1.5, deq_options=_ANDERSON_IFT
    ),
    "weight-norm": lambda: UserClassifier(cell="tanh", weight_norm=True, deq_options=_ANDERSON_IFT),
}


def _hit_rate(model: nn.Module, adv: torch.Tensor, wanted: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(adv).argmax(1) == wanted).float().mean())


def _unsettled_counts(solution) -> dict[str, int]:
    """Images UNSETTLED after the joint solve and after the safeguard, and model-checked ones.

    ``model_checked``: the images the attack's model check replaced by an earlier iterate.
    """
    from jiio_ext import Status

    first = solution.info.get("status_joint", solution.status)
    return {
        "unsettled": int((first == Status.UNSETTLED).sum()),
        "unsettled_after": int((solution.status == Status.UNSETTLED).sum()),
        "model_checked": len(solution.info.get("model_checked", ())),
    }


def bench_user_attacks(
    device: torch.device, *, quick: bool = False, dtype: torch.dtype = torch.float32
) -> dict:
    """PGD-10 / PGD-20 (torchattacks) vs JIIOPGD-10 / JIIOPGDL2-10 at default options.

    Every classifier of :data:`USER_CLASSIFIERS` is trained (untimed) on the bundled digits
    and attacked on 128 held-out digits (32 with ``quick``), L∞ (ε 0.1) and L2 (ε 1), α = ε/4,
    untargeted (robust accuracy: lower is stronger) and targeted (torchattacks' random target
    labels, the same for every attack; hit rate: higher is stronger). Stock attacks run with
    the model in training mode (torchdeq's eval mode has no input gradient); all images are
    judged in eval mode.

    Returns:
        ``{"task": "adversarial-user-models", "rows": [...]}``.

    Example:
        >>> import inspect
        >>> list(inspect.signature(bench_user_attacks).parameters)
        ['device', 'quick', 'dtype']
    """
    import time

    import torchattacks

    from jiio_ext.adapters.torchattacks import JIIOPGD, JIIOPGDL2
    from jiio_ext.apps.data import load_digits
    from jiio_ext.apps.models import train_classifier

    train_x, train_y, test_x, test_y = load_digits(device, dtype)
    count = 32 if quick else 128
    test_x, test_y = test_x[:count], test_y[:count]
    gen = torch.Generator().manual_seed(0)
    targets = (test_y + torch.randint(1, 10, test_y.shape, generator=gen).to(device)) % 10
    rows = []
    for name, factory in USER_CLASSIFIERS.items():
        model = factory().to(device=device, dtype=dtype)
        train_classifier(model, train_x, train_y, epochs=1 if quick else 4)
        clean = _hit_rate(model, test_x, test_y)
        for norm, eps, stock_cls, jiio_cls in (
            ("linf", 0.1, torchattacks.PGD, JIIOPGD),
            ("l2", 1.0, torchattacks.PGDL2, JIIOPGDL2),
        ):
            for targeted in (False, True):
                row = {"model": name, "norm": norm, "targeted": targeted, "clean": clean}
                wanted = targets if targeted else test_y
                for label, cls, steps in (
                    ("pgd10", stock_cls, 10),
                    ("pgd20", stock_cls, 20),
                    ("jiio10", jiio_cls, 10),
                ):
                    attack = cls(model, eps=eps, alpha=eps / 4, steps=steps, random_start=False)
                    if cls is stock_cls:
                        attack.set_model_training_mode(model_training=True)
                    if targeted:
                        attack.set_mode_targeted_by_label(quiet=True)
                    start = time.perf_counter()
                    adv = attack(test_x, targets if targeted else test_y)
                    elapsed = time.perf_counter() - start
                    row[label] = {"rate": _hit_rate(model, adv, wanted), "time_s": elapsed}
                    if cls is jiio_cls:
                        row[label].update(_unsettled_counts(attack.last_solution))
                rows.append(row)
    return {"task": "adversarial-user-models", "device": str(device), "rows": rows}


def _unsettled_cell(cell: dict) -> str:
    """``"joint->after safeguard"`` counts of UNSETTLED images, or ``"-"`` if not recorded."""
    if "unsettled" not in cell:
        return "-"
    return f"{cell['unsettled']}->{cell['unsettled_after']}"


def format_user_attacks(report: dict) -> str:
    """The user-model attack rows as a text table.

    Example:
        >>> cell = {"rate": 0.5, "time_s": 1.0}
        >>> row = {"model": "m", "norm": "linf", "targeted": False, "clean": 0.9,
        ...        "pgd10": cell, "pgd20": cell, "jiio10": cell}
        >>> print(format_user_attacks({"rows": [row]}).splitlines()[2].split()[:3])
        ['m', 'linf', 'untargeted']
    """
    lines = [
        "user-written classifiers (untargeted: robust accuracy, lower is stronger; "
        "targeted: hit rate, higher is stronger)",
        f"  {'model':<16}{'norm':<6}{'mode':<12}{'PGD-10':>14}{'PGD-20':>14}{'JIIO-10':>14}"
        f"{'speed-up vs PGD-10':>20}{'unsettled':>12}",
    ]
    for row in report["rows"]:
        cells = [
            f"{row[k]['rate']:.3f} {row[k]['time_s']:5.2f}s" for k in ("pgd10", "pgd20", "jiio10")
        ]
        mode = "targeted" if row["targeted"] else "untargeted"
        speed = row["pgd10"]["time_s"] / max(row["jiio10"]["time_s"], 1e-9)
        lines.append(
            f"  {row['model']:<16}{row['norm']:<6}{mode:<12}"
            + "".join(f"{c:>14}" for c in cells)
            + f"{speed:>19.1f}x"
            + f"{_unsettled_cell(row['jiio10']):>12}"
        )
    return "\n".join(lines)
