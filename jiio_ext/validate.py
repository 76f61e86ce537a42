"""Argument checks shared by the public entry points; every error names the argument.

Example:
    >>> import torch
    >>> from jiio_ext.validate import check_problem
    >>> check_problem(torch.zeros(2, 3), torch.zeros(2, 4), None)
"""

from __future__ import annotations

import math

import torch

from jiio_ext.constraints import Constraint
from jiio_ext.layout import State, as_tuple

__all__ = [
    "check_fraction",
    "check_positive",
    "check_problem",
    "check_state_like",
    "check_targets",
]


def _check_tensor(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not torch.is_floating_point(t):
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if t.dim() < 1:
        raise ValueError(f"{name}: expected a batch-first tensor (at least 1-D), got a scalar")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (B = 0); pass at least one sample")
    return t


def check_problem(
    x0: torch.Tensor, z0: State, constraint: Constraint | None, *, x_name: str = "x0"
) -> None:
    """Check that ``x0`` and ``z0`` are float tensors of one dtype, device and batch size.

    Args:
        x0: initial input ``(B, ...)``.
        z0: initial state, a tensor or a tuple of tensors ``(B, ...)``.
        constraint: optional constraint whose per-sample tensors must fit ``x0``.
        x_name: the caller's name of ``x0``, used in the error messages.

    Raises:
        TypeError: wrong types or dtypes.
        ValueError: mismatched batch sizes or devices.

    Example:
        >>> import torch
        >>> check_problem(torch.zeros(2, 1), (torch.zeros(2, 3), torch.zeros(2, 5)), None)
    """
    _check_tensor(x0, x_name)
    if isinstance(z0, list):
        z0 = tuple(z0)
    if not isinstance(z0, (torch.Tensor, tuple)) or (isinstance(z0, tuple) and not z0):
        raise TypeError(f"z0: expected a tensor or a non-empty tuple of tensors, got {type(z0)}")
    for i, part in enumerate(as_tuple(z0)):
        name = "z0" if isinstance(z0, torch.Tensor) else f"z0[{i}]"
        _check_tensor(part, name)
        if part.shape[0] != x0.shape[0]:
            raise ValueError(
                f"{name}: batch size {part.shape[0]} does not match {x_name}'s batch size "
                f"{x0.shape[0]}"
            )
        if part.device != x0.device:
            raise ValueError(f"{name}: on device {part.device}, but {x_name} is on {x0.device}")
        if part.dtype != x0.dtype:
            raise TypeError(f"{name}: dtype {part.dtype} differs from {x_name}'s dtype {x0.dtype}")
    if constraint is not None:
        if not isinstance(constraint, Constraint):
            raise TypeError(
                f"constraint: expected a jiio_ext Constraint (L2Ball, LinfBall, Box, or an "
                f"intersection with &), got {type(constraint).__name__}"
            )
        constraint.check_against(x0, "constraint")


def check_state_like(state: State | None, like: State, name: str) -> None:
    """Check that a warm-start state has the structure, shapes, dtype and device of ``like``.

    Args:
        state: the state to check (``None`` passes).
        like: the reference state.
        name: argument name for error messages.

    Example:
        >>> import torch
        >>> check_state_like(torch.zeros(2, 3), torch.ones(2, 3), "mu0")
    """
    if state is None:
        return
    parts, ref = as_tuple(state), as_tuple(like)
    if len(parts) != len(ref):
        raise ValueError(f"{name}: expected {len(ref)} tensor(s) like z0, got {len(parts)}")
    for part, r in zip(parts, ref):
        _check_tensor(part, name)
        if part.shape != r.shape:
            raise ValueError(f"{name}: shape {tuple(part.shape)} differs from {tuple(r.shape)}")
        if part.device != r.device:
            raise ValueError(f"{name}: on device {part.device}, but z0 is on {r.device}")
        if part.dtype != r.dtype:
            raise TypeError(f"{name}: dtype {part.dtype} differs from z0's dtype {r.dtype}")


def check_fraction(value: float, name: str) -> float:
    """Check ``0 < value <= 1`` (damping factors).

    Example:
        >>> check_fraction(0.8, "alpha_z")
        0.8
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number in (0, 1], got {type(value).__name__}")
    if not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"{name}: expected a number in (0, 1], got {value}")
    return float(value)


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """Check a finite number ``> 0`` (or ``>= 0`` with ``allow_zero``).

    Example:
        >>> check_positive(1e-4, "rtol", allow_zero=True)
        0.0001
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    bad = value < 0 if allow_zero else value <= 0
    if not math.isfinite(value) or bad:
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {expected}, got {value}")
    return float(value)


def check_targets(targets: object, x0: torch.Tensor) -> None:
    """Check that per-sample ``targets`` are tensors with ``x0``'s batch size and device.

    Example:
        >>> import torch
        >>> check_targets((torch.zeros(2, 3), torch.zeros(2)), torch.zeros(2, 5))
    """
    if targets is None:
        return
    parts = (targets,) if isinstance(targets, torch.Tensor) else targets
    if not isinstance(parts, (tuple, list)):
        raise TypeError(f"targets: expected a tensor or a tuple of tensors, got {type(targets)}")
    for part in parts:
        if not isinstance(part, torch.Tensor) or part.dim() < 1:
            raise TypeError("targets: expected batch-first tensors")
        if part.shape[0] != x0.shape[0]:
            raise ValueError(
                f"targets: batch size {part.shape[0]} does not match x0's batch size {x0.shape[0]}"
            )
        if part.device != x0.device:
            raise ValueError(f"targets: on device {part.device}, but x0 is on {x0.device}")
