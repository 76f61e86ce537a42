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
    >>> from jiio_ext.bench.user_classifiers import USER_CLASSIFIERS
    >>> sorted(USER_CLASSIFIERS)
    ['get-started', 'non-contractive', 'weight-norm']
    >>> USER_CLASSIFIERS["get-started"]()(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["USER_CLASSIFIERS", "UserClassifier"]


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

        from jiio_ext.bench.models import scale_spectral_norm_

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
