"""The adapted quantity of the higher adapter: slots mapped from a plain SGD optimiser.

Internal to :mod:`jiio_ext.adapters.higher`. A slot is one adapted tensor: a model parameter
held by the inner optimiser, or the task-context keyword.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> slots = make_slots(net, torch.optim.SGD([net.bias], lr=0.1), None, None, "context",
    ...                    dict(net.named_parameters()))
    >>> [(s.name, s.lr) for s in slots]
    [('bias', 0.1)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Slot", "make_slots", "map_optimizer"]


@dataclass
class Slot:
    """One adapted tensor: a model parameter (``name``) or the context keyword.

    ``group`` is the index of the inner optimiser's param group it came from (0 for the
    context).

    Example:
        >>> import torch
        >>> Slot("context", torch.zeros(3), 0.5, 0.0, True).is_context
        True
    """

    name: str
    anchor: torch.Tensor
    lr: float
    weight_decay: float
    is_context: bool
    group: int = 0


def map_optimizer(
    opt: Any, override: dict[str, list[Any]] | None
) -> list[tuple[list, float, float]]:
    """``[(params, lr, weight_decay)]`` per param group of a plain SGD optimiser.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> [(len(p), lr, wd) for p, lr, wd in map_optimizer(torch.optim.SGD([w], lr=0.1), None)]
        [(1, 0.1, 0.0)]
    """
    if not isinstance(opt, torch.optim.SGD):
        raise TypeError(
            f"opt: cannot map {type(opt).__module__}.{type(opt).__name__} to a fixed-point step; "
            "expected torch.optim.SGD without momentum (its step φ ← φ − lr·∇ is the φ-update of "
            "the joint map)"
        )
    override = dict(override or {})
    unknown = sorted(set(override) - {"lr"})
    if unknown:
        raise ValueError(f"override: only 'lr' can be overridden, got {unknown}")
    lrs = override.get("lr")
    if lrs is not None and len(lrs) != len(opt.param_groups):
        raise ValueError(
            f"override: 'lr' needs one value per param group ({len(opt.param_groups)}), "
            f"got {len(lrs)}"
        )
    groups = []
    for i, group in enumerate(opt.param_groups):
        if group.get("momentum", 0) or group.get("nesterov", False):
            raise TypeError(
                f"opt: param group {i} uses momentum; expected torch.optim.SGD without momentum"
            )
        if group.get("maximize", False):
            raise TypeError(f"opt: param group {i} maximises; expected a minimising SGD")
        lr = float(lrs[i] if lrs is not None else group["lr"])
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"opt: param group {i} has lr={lr}; expected a finite lr > 0")
        groups.append((list(group["params"]), lr, float(group.get("weight_decay", 0.0))))
    return groups


def make_slots(
    model: nn.Module,
    opt: Any,
    override: dict[str, list[Any]] | None,
    context: int | torch.Tensor | None,
    context_arg: str,
    initial: dict[str, torch.Tensor],
) -> list[Slot]:
    """The adapted slots: ``opt``'s parameters (anchored at ``initial``) or the context.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.5)
        >>> make_slots(net, opt, None, 4, "ctx", dict(net.named_parameters()))[0].anchor.shape
        torch.Size([4])
    """
    groups = map_optimizer(opt, override)
    named = dict(model.named_parameters())
    by_id = {id(p): n for n, p in named.items()}
    if context is not None:
        init = torch.zeros(context) if isinstance(context, int) else context
        if not isinstance(init, torch.Tensor) or not torch.is_floating_point(init):
            raise TypeError(
                f"context: expected a context size (int) or a floating-point tensor, got "
                f"{type(context).__name__}"
            )
        ref = next(iter(named.values()), init)
        init = init.detach().to(device=ref.device, dtype=ref.dtype)
        _, lr, wd = groups[0]
        return [Slot(context_arg, init, lr, wd, True, 0)]
    slots = []
    for g, (params, lr, wd) in enumerate(groups):
        for i, p in enumerate(params):
            if id(p) not in by_id:
                raise ValueError(
                    f"opt: parameter {i} of param group {g} (shape {tuple(p.shape)}) is "
                    f"not a parameter of {type(model).__name__}; expected the model's "
                    "own parameters to adapt"
                )
            slots.append(Slot(by_id[id(p)], initial[by_id[id(p)]], lr, wd, False, g))
    if not slots:
        raise ValueError("opt: holds no parameters to adapt (or pass context=)")
    return slots
