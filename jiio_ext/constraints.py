"""Constraint sets for the optimised input and their Euclidean projections.

Every set acts per sample on a batch ``x`` of shape ``(B, ...)``. Centres and bounds may be
scalars or tensors broadcastable to ``x`` (batch first), so one constraint object can describe
a different ball around every sample, as adversarial attacks need. ``a & b`` intersects sets.

Example:
    >>> import torch
    >>> from jiio_ext import Box, LinfBall
    >>> images = torch.rand(4, 3, 8, 8)
    >>> threat = LinfBall(8 / 255, center=images) & Box(0.0, 1.0)
    >>> adv = threat.project(images + 0.1 * torch.randn_like(images))
    >>> bool(threat.contains(adv).all())
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["Box", "ComposedProjection", "Constraint", "Intersection", "L2Ball", "LinfBall"]

Bound = float | torch.Tensor


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    """L2 norm over all non-batch dimensions, shaped ``(B, 1, ..., 1)`` for broadcasting."""
    norms = v.flatten(1).norm(dim=1)
    return norms.view(-1, *([1] * (v.dim() - 1)))


def _select(value: Bound | None, index: torch.Tensor | None) -> Bound | None:
    """Rows ``index`` of a batch-first tensor bound; scalars and broadcast rows pass through."""
    if index is None or not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    if value.shape[0] == 1:
        return value
    return value.index_select(0, index.to(value.device))


def _as_like(value: Bound, x: torch.Tensor) -> torch.Tensor:
    """A number or tensor as a tensor of ``x``'s dtype and device (no float32 round trip)."""
    return torch.as_tensor(value, dtype=x.dtype, device=x.device)


def _as_radius(radius: Bound, name: str) -> Bound:
    if isinstance(radius, torch.Tensor):
        if not torch.is_floating_point(radius):
            raise TypeError(f"{name}: expected a float tensor, got dtype {radius.dtype}")
        if bool((radius <= 0).any()) or not bool(torch.isfinite(radius).all()):
            raise ValueError(f"{name}: every radius must be finite and > 0")
        return radius
    if not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {radius!r}")
    return float(radius)


def _radius_like(radius: Bound, x: torch.Tensor) -> Bound:
    """A per-sample radius tensor of shape (B,) becomes (B, 1, ..., 1)."""
    if isinstance(radius, torch.Tensor) and radius.dim() == 1:
        return radius.to(x).view(-1, *([1] * (x.dim() - 1)))
    if isinstance(radius, torch.Tensor):
        return radius.to(x)
    return radius


class Constraint:
    """A closed convex set acting per sample; subclasses implement :meth:`project`.

    Example:
        >>> import torch
        >>> from jiio_ext import L2Ball
        >>> ball = L2Ball(radius=1.0)
        >>> ball.project(torch.full((2, 4), 3.0)).norm(dim=1)
        tensor([1., 1.])
    """

    def project(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Nearest point of the set to each sample of ``x``.

        Args:
            x: batch ``(B, ...)`` to project.
            index: rows of the batch the per-sample centres and bounds refer to, when ``x``
                holds only a subset of the samples (the solvers pass the active samples).

        Returns:
            The projection, same shape and dtype as ``x``.
        """
        raise NotImplementedError

    def contains(self, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Per-sample membership test with an absolute tolerance ``tol``.

        Args:
            x: batch ``(B, ...)``.
            tol: allowed violation.

        Returns:
            Boolean tensor of shape ``(B,)``.

        Example:
            >>> import torch
            >>> from jiio_ext import Box
            >>> Box(0.0, 1.0).contains(torch.tensor([[0.5], [2.0]]))
            tensor([ True, False])
        """
        gap = (self.project(x) - x).flatten(1).abs().amax(dim=1)
        return gap <= tol

    def check_against(self, x: torch.Tensor, name: str = "constraint") -> None:
        """Raise a ValueError when per-sample tensors do not fit the batch ``x``.

        Args:
            x: the batch the constraint will act on.
            name: argument name used in the error message.

        Example:
            >>> import torch
            >>> from jiio_ext import Box
            >>> Box(0.0, 1.0).check_against(torch.zeros(3, 2))
        """
        for value in self._tensors():
            if value.dim() == 0:
                continue
            if value.device != x.device:
                raise ValueError(f"{name}: tensor on {value.device}, but x0 is on {x.device}")
            if value.shape[0] not in (1, x.shape[0]):
                raise ValueError(
                    f"{name}: per-sample tensor has batch size {value.shape[0]}, "
                    f"expected 1 or {x.shape[0]} (the batch size of x0)"
                )
        try:  # the other dimensions too: one trial projection of a batch shaped like x
            fits = self.project(torch.zeros_like(x)).shape == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            shapes = [tuple(v.shape) for v in self._tensors()]
            raise ValueError(
                f"{name}: tensors of shapes {shapes} do not fit x0 of shape {tuple(x.shape)}"
            )

    #: whether the set is a product of per-coordinate intervals (a diagonal preconditioner
    #: keeps projected stationarity as the fixed point of a projected step)
    separable: bool = True

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample size of the set in the units of one coordinate (``inf``: unbounded).

        Adaptive input updates measure their steps in this unit (see :mod:`jiio_ext.updates`).

        Args:
            x: a batch ``(B, ...)`` the set acts on.

        Returns:
            ``(B,)`` tensor: half-width of a box or L∞ ball, ``radius / sqrt(n)`` for an L2
            ball over ``n`` coordinates, the smallest part's for an intersection.

        Example:
            >>> import torch
            >>> from jiio_ext import Box
            >>> Box(0.0, 1.0).scale(torch.zeros(2, 3))
            tensor([0.5000, 0.5000])
        """
        lo = self.project(torch.full_like(x, -math.inf)).flatten(1)
        hi = self.project(torch.full_like(x, math.inf)).flatten(1)
        half = (hi - lo) / 2
        finite = torch.isfinite(half)
        count = finite.sum(dim=1)
        mean = torch.where(finite, half, torch.zeros_like(half)).sum(dim=1) / count.clamp_min(1)
        return torch.where(count > 0, mean, torch.full_like(mean, math.inf))

    def _tensors(self) -> list[torch.Tensor]:
        return []

    def __and__(self, other: Constraint) -> Intersection:
        if not isinstance(other, Constraint):
            return NotImplemented
        return Intersection([self, other])


class Box(Constraint):
    """Element-wise bounds ``lower <= x <= upper`` (either may be ``None`` for unbounded).

    Args:
        lower: scalar or tensor broadcastable to ``x``.
        upper: scalar or tensor broadcastable to ``x``.

    Example:
        >>> import torch
        >>> from jiio_ext import Box
        >>> Box(0.0, 1.0).project(torch.tensor([[-1.0, 0.5, 2.0]]))
        tensor([[0.0000, 0.5000, 1.0000]])
    """

    def __init__(self, lower: Bound | None = None, upper: Bound | None = None) -> None:
        if lower is None and upper is None:
            raise ValueError("Box: give at least one of lower and upper")
        for label, bound in (("lower", lower), ("upper", upper)):
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, (int, float, torch.Tensor))
            ):
                raise TypeError(
                    f"Box: {label}: expected a number or a tensor, got {type(bound).__name__}"
                )
        if (
            lower is not None
            and upper is not None
            and bool(torch.as_tensor(lower < upper).logical_not().any())
        ):
            raise ValueError("Box: lower must be < upper everywhere")
        self.lower = lower
        self.upper = upper

    def project(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Clamp ``x`` into the box (see :meth:`Constraint.project`)."""
        lower, upper = _select(self.lower, index), _select(self.upper, index)
        if lower is not None:
            x = torch.maximum(x, _as_like(lower, x))
        if upper is not None:
            x = torch.minimum(x, _as_like(upper, x))
        return x

    def _tensors(self) -> list[torch.Tensor]:
        return [v for v in (self.lower, self.upper) if isinstance(v, torch.Tensor)]


class LinfBall(Constraint):
    """The L∞ ball ``||x - center||_∞ <= radius`` per sample.

    Args:
        radius: scalar > 0 or a ``(B,)`` tensor of per-sample radii (the first parameter:
            ``L2Ball(0.3)`` is the ball of radius 0.3 around the origin).
        center: ``None`` (origin), scalar or batch-first tensor.

    Example:
        >>> import torch
        >>> from jiio_ext import LinfBall
        >>> LinfBall(0.5, center=torch.zeros(1, 2)).project(torch.tensor([[1.0, -0.2]]))
        tensor([[ 0.5000, -0.2000]])
    """

    def __init__(self, radius: Bound, center: Bound | None = None) -> None:
        self.center = center
        self.radius = _as_radius(radius, "LinfBall radius")

    def project(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Clamp ``x`` into the ball (see :meth:`Constraint.project`)."""
        center = _select(self.center, index)
        center = torch.zeros_like(x) if center is None else _as_like(center, x)
        radius = _as_like(_radius_like(_select(self.radius, index), x), x)
        return center + torch.minimum(torch.maximum(x - center, -radius), radius)

    def _tensors(self) -> list[torch.Tensor]:
        return [v for v in (self.center, self.radius) if isinstance(v, torch.Tensor)]


class L2Ball(Constraint):
    """The Euclidean ball ``||x - center||_2 <= radius`` per sample (norm over all non-batch dims).

    Args:
        radius: scalar > 0 or a ``(B,)`` tensor of per-sample radii (the first parameter:
            ``L2Ball(0.3)`` is the ball of radius 0.3 around the origin).
        center: ``None`` (origin), scalar or batch-first tensor.

    Example:
        >>> import torch
        >>> from jiio_ext import L2Ball
        >>> L2Ball(radius=2.0).project(torch.tensor([[3.0, 4.0]]))
        tensor([[1.2000, 1.6000]])
    """

    def __init__(self, radius: Bound, center: Bound | None = None) -> None:
        self.center = center
        self.radius = _as_radius(radius, "L2Ball radius")

    def project(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Scale ``x - center`` back onto the ball (see :meth:`Constraint.project`)."""
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"x: L2Ball.project needs a floating-point tensor, got {got}")
        center = _select(self.center, index)
        center = torch.zeros_like(x) if center is None else _as_like(center, x)
        radius = _as_like(_radius_like(_select(self.radius, index), x), x)
        offset = x - center
        norm = _per_sample_norm(offset)
        scale = torch.clamp(radius / norm.clamp_min(torch.finfo(x.dtype).tiny), max=1.0)
        return center + offset * scale

    separable = False

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """``radius / sqrt(n)`` per sample (see :meth:`Constraint.scale`)."""
        n = max(x[0].numel(), 1)
        radius = torch.as_tensor(self.radius, dtype=x.dtype, device=x.device).flatten()
        return (radius / math.sqrt(n)).expand(x.shape[0]).clone()

    def _tensors(self) -> list[torch.Tensor]:
        return [v for v in (self.center, self.radius) if isinstance(v, torch.Tensor)]


class Intersection(Constraint):
    """Intersection of boxes and at most one ball, projected exactly.

    Boxes and L∞ balls are per-coordinate intervals: clamping into each in turn projects onto
    their (non-empty) intersection exactly. For an L2 ball of
    centre ``c`` and radius ``r`` with a box, the KKT conditions give the projection of ``y`` as
    ``clamp(c + t (y - c))`` for the largest ``t`` in ``[0, 1]`` whose point lies in the ball;
    ``t`` is found per sample exactly by sorting the coordinates' breakpoints (the squared
    distance is piecewise quadratic in ``t``), differentiably in ``y``. This needs the centre to
    lie in the box (true for an attack around a valid image).

    Args:
        parts: the sets to intersect.

    Example:
        >>> import torch
        >>> from jiio_ext import Box, L2Ball
        >>> images = torch.rand(2, 1, 4, 4)
        >>> threat = L2Ball(0.5, center=images) & Box(0.0, 1.0)
        >>> out = threat.project(images + torch.randn_like(images))
        >>> bool(threat.contains(out).all())
        True
    """

    def __init__(self, parts: Sequence[Constraint]) -> None:
        flat: list[Constraint] = []
        for part in parts:
            flat.extend(part.parts if isinstance(part, Intersection) else [part])
        if any(not isinstance(p, (Box, LinfBall, L2Ball)) for p in flat):
            raise TypeError("Intersection: parts must be Box, LinfBall or L2Ball")
        balls = [p for p in flat if isinstance(p, L2Ball)]
        if len(balls) > 1:
            raise ValueError(
                "Intersection: at most one L2Ball is supported (boxes and L∞ balls merge exactly)"
            )
        self.parts = flat
        self.separable = not balls
        self._ball = balls[0] if balls else None
        self._boxes = [p for p in flat if p is not self._ball]

    def _box_project(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        for box in self._boxes:
            x = box.project(x, index)
        return x

    def project(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Project onto the intersection (see :meth:`Constraint.project`)."""
        if self._ball is None:
            return self._box_project(x, index)
        center = _select(self._ball.center, index)
        center = torch.zeros_like(x) if center is None else _as_like(center, x)
        radius = _as_like(_radius_like(_select(self._ball.radius, index), x), x)
        offset = x - center
        shape = (-1, *([1] * (x.dim() - 1)))

        def point(t: torch.Tensor) -> torch.Tensor:
            return self._box_project(center + t.view(shape) * offset, index)

        # ||clamp(c + t·o) - c||² is piecewise quadratic in t: a coordinate moves as t·o_i
        # until it hits its bound at t_i, then stays. Sorting the t_i gives each piece as
        # B_k + t² A_k; the answer is the root r² on the piece that contains it (exact, and
        # differentiable in x through A_k).
        lo = self._box_project(torch.full_like(x, -math.inf), index).flatten(1)
        hi = self._box_project(torch.full_like(x, math.inf), index).flatten(1)
        o = offset.flatten(1)
        c = center.expand_as(x).flatten(1)
        r2 = (radius * radius).reshape(-1, 1) if isinstance(radius, torch.Tensor) else radius**2
        bound = torch.where(o > 0, hi, lo)
        saturates = (o != 0) & torch.isfinite(bound)
        bound = torch.where(saturates, bound, c)  # finite everywhere: no inf in any graph
        gap = (bound - c) ** 2  # a saturated coordinate's contribution
        with torch.no_grad():  # locate the piece that holds the root
            safe_o = torch.where(saturates, o, torch.ones_like(o))
            hit = torch.where(saturates, ((bound - c) / safe_o).clamp_min(0), math.inf)
            hit_sorted, order = torch.sort(hit, dim=1)
            o2 = (o * o).gather(1, order)
            zero = o2.new_zeros(o2.shape[0], 1)
            a_k = o2.sum(1, keepdim=True) - torch.cat([zero, o2.cumsum(1)], dim=1)
            b_k = torch.cat([zero, gap.gather(1, order).cumsum(1)], dim=1)
            lower = torch.cat([zero, hit_sorted], dim=1)
            upper = torch.cat([hit_sorted, torch.full_like(zero, math.inf)], dim=1)
            positive = a_k > 0
            root = ((r2 - b_k).clamp_min(0) / torch.where(positive, a_k, 1.0)).sqrt()
            valid = positive & (b_k <= r2) & (root >= lower) & (root <= upper)
            found = valid.any(dim=1)
            first = valid.long().argmax(dim=1, keepdim=True)
            full_step = _per_sample_norm(point(torch.ones_like(found, dtype=x.dtype)) - center)
            full_ok = full_step.view(-1) <= torch.as_tensor(r2).flatten().sqrt()
        # the same root with a graph: coordinates saturated before the piece are the first
        # `first` in sort order; the others move with t
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(o.shape[1], device=o.device).expand_as(o)
        )
        saturated = rank < first
        free_norm = (o * o * ~saturated).sum(1)
        fixed = (gap * saturated).sum(1)
        r2_flat = torch.as_tensor(r2, dtype=x.dtype, device=x.device).flatten()
        numerator = r2_flat - fixed
        ok = found & ~full_ok & (free_norm.detach() > 0) & (numerator.detach() > 0)
        t_graph = (torch.where(ok, numerator, 1.0) / torch.where(ok, free_norm, 1.0)).sqrt()
        t = torch.where(ok, t_graph, torch.where(full_ok, 1.0, 0.0).to(x.dtype))
        return point(t.clamp(max=1.0))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The smallest part's scale per sample (see :meth:`Constraint.scale`)."""
        return torch.stack([part.scale(x) for part in self.parts]).amin(dim=0)

    def _tensors(self) -> list[torch.Tensor]:
        return [t for part in self.parts for t in part._tensors()]


class ComposedProjection(Constraint):
    """``then.project(first.project(x))``: the cheap two-step projection PGD codes use.

    For an L2 ball whose centre lies in a box, clamping to the box after projecting onto the
    ball stays in the ball (clamping moves every coordinate towards the centre's), so the
    result is feasible for the intersection but is not its exact (nearest-point) projection;
    torchattacks' ``PGDL2`` projects this way. :class:`Intersection` is exact and costlier.

    Args:
        first: projected onto first (e.g. the ball).
        then: projected onto second (e.g. the pixel box).

    Example:
        >>> import torch
        >>> centre = torch.full((1, 4), 0.9)
        >>> c = ComposedProjection(L2Ball(1.0, center=centre), Box(0.0, 1.0))
        >>> y = c.project(torch.tensor([[3.0, 0.9, 0.9, 0.9]]))
        >>> bool(c.contains(y)), y.tolist()
        (True, [[1.0, 0.8999999761581421, 0.8999999761581421, 0.8999999761581421]])
    """

    def __init__(self, first: Constraint, then: Constraint) -> None:
        for name, part in (("first", first), ("then", then)):
            if not isinstance(part, Constraint):
                raise TypeError(f"{name}: expected a Constraint, got {type(part).__name__}")
        self.first, self.then = first, then

    def project(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``then``'s projection of ``first``'s projection of ``x``."""
        return self.then.project(self.first.project(x, index), index)

    @property
    def separable(self) -> bool:  # type: ignore[override]
        """Separable when both parts are."""
        return self.first.separable and self.then.separable

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The smaller part's scale per sample (see :meth:`Constraint.scale`)."""
        return torch.minimum(self.first.scale(x), self.then.scale(x))

    def contains(self, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Per-sample membership in both sets."""
        return self.first.contains(x, tol) & self.then.contains(x, tol)
