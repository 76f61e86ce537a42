"""Flattening of batch-first states (a tensor or a tuple of tensors) into one ``(B, n)`` matrix.

The solvers work on one flat vector per sample; models work on tensors or tuples of tensors
(multi-scale DEQs). :class:`Layout` converts between the two and describes the blocks.

Example:
    >>> import torch
    >>> from jiio_ext.layout import Layout
    >>> z = (torch.zeros(2, 3), torch.ones(2, 2, 2))
    >>> layout = Layout.of(z)
    >>> flat = layout.flatten(z)
    >>> flat.shape, layout.unflatten(flat)[1].shape
    (torch.Size([2, 7]), torch.Size([2, 2, 2]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Layout", "State", "as_tuple"]

State = torch.Tensor | tuple[torch.Tensor, ...]


def as_tuple(state: State) -> tuple[torch.Tensor, ...]:
    """A state as a tuple of tensors.

    Example:
        >>> import torch
        >>> len(as_tuple(torch.zeros(1)))
        1
    """
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


@dataclass(frozen=True)
class Layout:
    """Per-sample shapes of the tensors of a state and whether it is a tuple.

    Attributes:
        shapes: per-sample shape of each tensor (batch dimension removed).
        is_tuple: whether the state is a tuple (else a single tensor).
    """

    shapes: tuple[tuple[int, ...], ...]
    is_tuple: bool

    @staticmethod
    def of(state: State) -> Layout:
        """Layout of a batch-first state.

        Example:
            >>> import torch
            >>> Layout.of(torch.zeros(4, 3, 2)).sizes
            (6,)
        """
        parts = as_tuple(state)
        return Layout(tuple(tuple(p.shape[1:]) for p in parts), not isinstance(state, torch.Tensor))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements per sample of each tensor."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        """Total number of elements per sample."""
        return sum(self.sizes)

    def flatten(self, state: State) -> torch.Tensor:
        """Concatenate the per-sample flattened tensors into ``(B, numel)``."""
        parts = as_tuple(state)
        if len(parts) == 1:
            return parts[0].reshape(parts[0].shape[0], -1)
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)

    def unflatten(self, flat: torch.Tensor) -> State:
        """Inverse of :meth:`flatten` (views into ``flat`` where possible)."""
        if not self.is_tuple:
            return flat.reshape(flat.shape[0], *self.shapes[0])
        pieces = torch.split(flat, list(self.sizes), dim=1)
        parts = tuple(
            piece.reshape(flat.shape[0], *shape) for piece, shape in zip(pieces, self.shapes)
        )
        return parts if self.is_tuple else parts[0]
