"""Step rules: how the x-gradient becomes a step direction.

``raw`` uses the gradient itself (generative models, inverse problems, meta-learning);
``sign`` is the L∞ steepest-descent direction (PGD-L∞); ``l2`` normalises the gradient per
sample to unit L2 norm (PGD-L2).

Example:
    >>> import torch
    >>> from jiio_ext.steps import get_step_rule
    >>> get_step_rule("l2")(torch.tensor([[3.0, 4.0]]))
    tensor([[0.6000, 0.8000]])
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

__all__ = ["STEP_RULES", "StepRule", "get_step_rule", "l2_step", "raw_step", "sign_step"]

# A step rule maps the x-gradient (B, ...) to a step direction of the same shape.
StepRule = Callable[[torch.Tensor], torch.Tensor]


def raw_step(grad: torch.Tensor) -> torch.Tensor:
    """The gradient itself.

    Example:
        >>> import torch
        >>> raw_step(torch.tensor([[1.0, -2.0]]))
        tensor([[ 1., -2.]])
    """
    return grad


def sign_step(grad: torch.Tensor) -> torch.Tensor:
    """Element-wise sign of the gradient (steepest descent for the L∞ norm).

    Example:
        >>> import torch
        >>> sign_step(torch.tensor([[0.3, -2.0]]))
        tensor([[ 1., -1.]])
    """
    return grad.sign()


def l2_step(grad: torch.Tensor) -> torch.Tensor:
    """Gradient divided by its per-sample L2 norm (zero gradients stay zero).

    Example:
        >>> import torch
        >>> l2_step(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    norms = grad.flatten(1).norm(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)
    return grad / norms.view(-1, *([1] * (grad.dim() - 1)))


# The built-in step rules by name (as accepted by get_step_rule).
STEP_RULES: dict[str, StepRule] = {"l2": l2_step, "raw": raw_step, "sign": sign_step}


def _shape_checked(rule: StepRule) -> StepRule:
    """``rule`` with a check that its direction has the gradient's shape (no broadcasting)."""

    @functools.wraps(rule)
    def checked(grad: torch.Tensor) -> torch.Tensor:
        direction = rule(grad)
        if not isinstance(direction, torch.Tensor) or direction.shape != grad.shape:
            got = tuple(direction.shape) if isinstance(direction, torch.Tensor) else direction
            raise ValueError(
                f"step_rule: the custom rule returned {got!r} for a gradient of shape "
                f"{tuple(grad.shape)}; a step rule must return a direction of the same shape"
            )
        return direction

    return checked


def get_step_rule(name: str | StepRule) -> StepRule:
    """Look a step rule up by name (``"raw"``, ``"sign"``, ``"l2"``) or pass a callable through.

    Args:
        name: rule name or a callable ``grad -> direction``.

    Returns:
        The step rule.

    Raises:
        ValueError: for an unknown name. A custom callable is wrapped so that a direction of
            another shape than the gradient raises ``ValueError`` when it is used.

    Example:
        >>> get_step_rule("sign").__name__
        'sign_step'
    """
    if callable(name):
        return name if name in STEP_RULES.values() else _shape_checked(name)
    if name not in STEP_RULES:
        raise ValueError(f"step_rule: unknown rule {name!r}; expected one of {sorted(STEP_RULES)}")
    return STEP_RULES[name]
