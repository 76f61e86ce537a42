"""DEQ interception of the higher adapter: what one ``fnet`` forward evaluates and records.

Internal to :mod:`jiio_ext.adapters.higher`. :class:`Tap` intercepts every torchdeq
``DEQBase`` submodule during an ``fnet`` call (with :func:`~jiio_ext.adapters._deq_intercept.
intercept`, the mechanism the torchdeq adapter uses too); :class:`Forward` is the record of
one call (DEQ states, their images ``f(state)`` and the adapted leaves).

Example:
    >>> import torch
    >>> record = Forward(None, "joint", Gate(), rows=2, batched=True)
    >>> record.flat([torch.ones(2, 3), torch.zeros(2, 1, 2)], torch.zeros(())).shape
    torch.Size([2, 5])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jiio_ext.adapters._deq_intercept import find_deqs, intercept, state_parts
from jiio_ext.adapters._higher_anderson import anderson_solve, plain_anderson_budget
from jiio_ext.adapters._higher_backward import (
    AdjointSolve,
    Gate,
    ModelBackward,
    attach_ift,
    attach_ift_vmapped,
    rank_above,
)
from torch import nn

from jiio_ext.layout import as_tuple

# find_deqs is the shared discovery of _deq_intercept, re-exported for the loop module
__all__ = ["Forward", "Tap", "find_deqs"]


@dataclass
class Forward:
    """What one ``fnet`` forward recorded: the DEQ states, ``f(state)`` and the adapted leaves.

    ``batched=True``: every tensor of ``z``, ``images`` and ``phi`` has a leading task dimension
    ``(rows, ...)`` and the lists run over DEQ-call parts (``z``, ``images``) or slots
    (``phi``, ``values``: before the first step, ``phi`` holds leaves and ``values`` the same
    numbers with their gradient path to the meta-parameters). ``batched=False``: the lists
    are task-major, ``rows`` equal chunks of per-task tensors.

    Example:
        >>> import torch
        >>> record = Forward(None, "solve", Gate(), rows=2, batched=False)
        >>> record.flat([torch.ones(3), torch.zeros(3)], torch.zeros(())).tolist()
        [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """

    support: tuple[torch.Tensor, torch.Tensor] | None  # first input: as passed, detached
    mode: str
    gate: Gate
    rows: int
    batched: bool
    z: list[torch.Tensor] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)
    phi: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)  # φ as used (first forward)
    limits: list[ModelBackward] = field(default_factory=list)  # each DEQ call's own backward
    total: torch.Tensor | None = None
    # the (rows, n) blocks that z and φ were split from (a joint forward): flat() of them
    z_rows: torch.Tensor | None = None
    phi_rows: torch.Tensor | None = None

    def flat(self, tensors: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """``(rows, n)``: one row per task, the tensors flattened in order (``like``: dtype)."""
        rows = self.rows
        if not tensors:
            return like.new_zeros(rows, 0)
        if self.batched and len(tensors) == 1:
            return tensors[0].reshape(rows, -1)
        if self.batched:
            return torch.cat([t.reshape(rows, -1) for t in tensors], dim=1)
        per = len(tensors) // rows
        return torch.stack(
            [
                torch.cat([t.reshape(-1) for t in tensors[r * per : (r + 1) * per]])
                for r in range(rows)
            ]
        )

    def split(self, rows: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        """Inverse of :meth:`flat` for the per-task ``shapes`` of one chunk."""
        sizes = [math.prod(s) for s in shapes]
        if self.batched:
            chunks = torch.split(rows, sizes, dim=1)
            return [c.reshape(self.rows, *s) for c, s in zip(chunks, shapes)]
        return [
            c.view(s) for r in range(self.rows) for c, s in zip(torch.split(rows[r], sizes), shapes)
        ]

    def leaves(self, mu: torch.Tensor) -> list[torch.Tensor]:
        """The inputs of the joint map in :meth:`flat` order of ``[z; φ]``, then ``μ``."""
        if self.batched:
            return [*self.z, *self.phi, mu]
        per_z, per_phi = len(self.z) // self.rows, len(self.phi) // self.rows
        return [
            *(
                t
                for r in range(self.rows)
                for t in (
                    *self.z[r * per_z : (r + 1) * per_z],
                    *self.phi[r * per_phi : (r + 1) * per_phi],
                )
            ),
            mu,
        ]

    def z_shapes(self) -> list[tuple[int, ...]]:
        """Per-task shapes of the DEQ-call states."""
        if self.batched:
            return [tuple(t.shape[1:]) for t in self.z]
        return [tuple(t.shape) for t in self.z[: len(self.z) // self.rows]]


class Tap:
    """Intercepts the torchdeq DEQ calls of the model during ``fnet`` forwards.

    Modes: ``solve`` runs the DEQ's own solver without a graph and returns ``f(z*)`` with an
    implicit backward; ``probe`` only solves and returns ``z*``; ``solved`` returns ``f(z*)``
    at given fixed points with the implicit backward of all tasks at once (inside
    ``torch.func.vmap``); ``joint`` returns ``f(z)`` at the given joint state (no solve).
    The states and images of the latest forward are in ``states`` and ``images``.

    Example:
        >>> tap = Tap([], AdjointSolve(10, 1e-6, 1e-10))
        >>> tap.mode
        'solve'
    """

    def __init__(self, deqs: Sequence[nn.Module], backward: AdjointSolve) -> None:
        self.deqs = list(deqs)
        self.backward = backward
        self.mode = "solve"
        self.given: list[torch.Tensor] = []
        self.states: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []
        self.limits: list[ModelBackward] = []
        self.gate = Gate()
        self.anchors: list[torch.Tensor] = []

    @contextlib.contextmanager
    def active(
        self,
        mode: str,
        given: list[torch.Tensor],
        gate: Gate,
        anchors: Sequence[torch.Tensor] = (),
    ) -> Iterator[None]:
        """Intercept the DEQ calls in ``mode`` (joint states ``given``) inside this block.

        ``anchors``: the adapted values of the call; the states of ``solve`` are ranked above
        their graphs (:func:`~jiio_ext.adapters._higher_backward.rank_above`).
        """
        self.mode, self.given, self.gate, self.anchors = mode, list(given), gate, list(anchors)
        self.states, self.images, self.limits = [], [], []

        def handle(deq, original, func, z_init, args, kwargs):
            self.limits.append(ModelBackward.of(deq))
            return self.handle(original, func, z_init, args, kwargs, deq)

        with intercept(self.deqs, handle):
            yield

    def handle(
        self, original: Callable, func: Callable, z_init: Any, args, kwargs, deq: Any = None
    ):
        """One intercepted DEQ call: ``[f(state)]`` (``[z*]`` when probing) and the solver info.

        A solve runs the DEQ's own forward, or, when that is one plain torchdeq Anderson solve,
        the same algorithm with the same settings in :mod:`~jiio_ext.adapters._higher_anderson`
        (cheaper per iteration; the state is torchdeq's ``z*``, so the returned image
        ``f(z*)`` is what torchdeq's IFT forward returns).
        """
        parts, is_tuple = state_parts(z_init)
        count = len(parts)
        info: dict[str, Any] = {}
        if self.mode in ("joint", "solved"):
            start = len(self.states)
            if start + count > len(self.given):
                raise RuntimeError(
                    "model: the support forward made more DEQ calls than the first one; the "
                    "number and shapes of DEQ calls must not depend on the adapted quantity"
                )
            state = tuple(self.given[start : start + count])
        else:
            budget = plain_anderson_budget(deq, z_init, args, kwargs)
            with torch.no_grad():
                if budget is None:
                    solved, info = original(func, z_init, *args, **kwargs)
                    solved = solved[-1]
                else:
                    solved, info = anderson_solve(func, z_init, budget, deq.f_tol, deq.f_stop_mode)
            state = tuple(
                rank_above(t.detach().requires_grad_(), self.anchors)
                for t in as_tuple(_as_state(solved))
            )
        if tuple(s.shape for s in state) != tuple(t.shape for t in parts):
            raise RuntimeError(
                f"model: DEQ state shapes {[tuple(s.shape) for s in state]} differ from the "
                f"call's z_init {[tuple(t.shape) for t in parts]}"
            )
        self.states.extend(state)
        if self.mode == "probe":
            return [list(state) if is_tuple else state[0]], info
        with torch.enable_grad():
            image = as_tuple(_as_state(func(*state) if is_tuple else func(state[0])))
        self.images.extend(image)
        model = self.limits[-1] if self.limits else None
        if self.mode == "solve":
            image = attach_ift(state, image, self.gate, self.backward, 1, model)
        elif self.mode == "solved":
            image = attach_ift_vmapped(state, image, self.gate, self.backward, model)
        out = list(image) if is_tuple else image[0]
        return [out], info


def _as_state(value: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
    return value if isinstance(value, torch.Tensor) else tuple(value)
