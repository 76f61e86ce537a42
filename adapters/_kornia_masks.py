"""The kornia adapter's inpainting operators and their masks: box holes and brush strokes.

Private: the public names are re-exported by :mod:`jiio_ext.adapters.kornia`.
"""

from __future__ import annotations

import math
from typing import Any

import kornia.geometry.bbox
import kornia.morphology
import torch
from jiio_ext.adapters._kornia_base import (
    Degradation,
    Measurement,
    _check_int,
    _check_number,
    _device_of,
)

__all__ = ["BoxInpainting", "IrregularInpainting"]


# --------------------------------------------------------------------------- inpainting


class _Inpainting(Degradation):
    """``A(x) = mask·x`` (self-adjoint); the naive inverse fills holes with the observed mean."""

    uses_mask = True

    def _forward(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return image * mask

    def _adjoint(self, residual: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return residual * mask

    def _residual(
        self, image: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        return mask * (image - observed)

    def _naive(self, measurement: Measurement) -> torch.Tensor:
        observed, mask = measurement.observed, measurement.mask.to(measurement.observed.dtype)
        count = mask.sum(dim=(2, 3), keepdim=True).clamp_min(1)
        mean = (observed * mask).sum(dim=(2, 3), keepdim=True) / count
        return observed * mask + mean * (1 - mask)


class BoxInpainting(_Inpainting):
    """Inpainting with one square hole per image at a uniformly random position.

    The hole side is ``hole_size`` pixels, or ``round(hole_fraction · min(H, W))`` (default
    ``20/64``: the paper's 20×20 hole on 64×64 images, 5×5 on 16×16). Positions come from the
    seeded generator; the mask is drawn with kornia's box machinery (``bbox_generator`` and
    ``bbox_to_mask``, which back ``kornia.augmentation.RandomErasing``).

    Args:
        hole_fraction: hole side as a fraction of the smaller image side, in ``(0, 1)``.
        hole_size: hole side in pixels (replaces ``hole_fraction``).
        noise_sigma: measurement noise std on ``[0, 1]``.

    Example:
        >>> import torch
        >>> op = BoxInpainting()
        >>> mask = op.measure(torch.rand(1, 3, 64, 64), seed=0).mask
        >>> int((1 - mask).sum()), op.hole_side(64, 64)
        (400, 20)
    """

    name = "inpaint"

    def __init__(
        self,
        hole_fraction: float | None = None,
        hole_size: int | None = None,
        noise_sigma: float = 0.0,
    ) -> None:
        super().__init__(noise_sigma)
        if hole_fraction is not None and hole_size is not None:
            raise ValueError("hole_fraction, hole_size: give at most one of them")
        self.hole_size = None if hole_size is None else _check_int("hole_size", hole_size)
        if hole_size is None:
            fraction = 20 / 64 if hole_fraction is None else hole_fraction
            fraction = _check_number("hole_fraction", fraction, positive=True)
            if fraction >= 1:
                raise ValueError(
                    f"hole_fraction: expected a fraction of the image side in (0, 1), "
                    f"got {fraction}"
                )
            self.hole_fraction: float | None = fraction
        else:
            self.hole_fraction = None

    def _params(self) -> dict[str, Any]:
        size = {"hole_size": self.hole_size} if self.hole_size else {}
        return {**size, "hole_fraction": self.hole_fraction, "noise_sigma": self.noise_sigma}

    def hole_side(self, height: int, width: int) -> int:
        """Side in pixels of the square hole in ``height × width`` images."""
        if self.hole_size is not None:
            return self.hole_size
        return max(1, math.floor(self.hole_fraction * min(height, width) + 0.5))

    def _check_size(self, height: int, width: int) -> None:
        side = self.hole_side(height, width)
        if side >= min(height, width):
            raise ValueError(
                f"hole_size: expected a hole smaller than the {height}x{width} image, "
                f"got {side}x{side}"
            )

    def _draw_mask(self, clean: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        batch, _, height, width = clean.shape
        side = self.hole_side(height, width)
        device = _device_of(generator)
        ys = torch.randint(0, height - side + 1, (batch,), generator=generator, device=device)
        xs = torch.randint(0, width - side + 1, (batch,), generator=generator, device=device)
        sides = torch.full((batch,), float(side))
        boxes = kornia.geometry.bbox.bbox_generator(
            xs.cpu().float(), ys.cpu().float(), sides, sides
        )
        holes = kornia.geometry.bbox.bbox_to_mask(boxes, width, height)
        return (1 - holes).unsqueeze(1).to(device=clean.device, dtype=clean.dtype)


def _reflect(coordinate: torch.Tensor, limit: int) -> torch.Tensor:
    """``coordinate`` reflected once at 0 and ``limit``, then clamped into ``[0, limit]``."""
    coordinate = coordinate.abs()
    return torch.where(coordinate > limit, 2 * limit - coordinate, coordinate).clamp(0, limit)


class IrregularInpainting(_Inpainting):
    """Inpainting with random irregular (brush-stroke) holes covering a given pixel fraction.

    Each image draws a target coverage uniformly in ``coverage`` (in whole pixels), then paints
    random-walk strokes with round brushes (rasterised centre lines thickened by
    ``kornia.morphology.erosion`` of a stroke-order map) until enough pixels are painted; the
    hole is the first painted pixels in stroke order, so its coverage is exact.

    Args:
        coverage: ``(low, high)`` range of the hole fraction, ``0 <= low <= high < 1``.
        brush_radius: ``(low, high)`` brush radius in pixels (default: from ``min(H, W)/32``
            to ``min(H, W)/16``, at least 1).
        noise_sigma: measurement noise std on ``[0, 1]``.

    Example:
        >>> import torch
        >>> op = IrregularInpainting(coverage=(0.2, 0.3))
        >>> mask = op.measure(torch.rand(4, 1, 32, 32), seed=0).mask
        >>> holes = 1 - mask.mean(dim=(1, 2, 3))
        >>> bool(((holes >= 0.2) & (holes <= 0.3)).all())
        True
    """

    name = "inpaint-irregular"

    def __init__(
        self,
        coverage: tuple[float, float] = (0.1, 0.3),
        brush_radius: tuple[int, int] | None = None,
        noise_sigma: float = 0.0,
    ) -> None:
        super().__init__(noise_sigma)
        low, high = self._pair("coverage", coverage)
        low, high = _check_number("coverage", low), _check_number("coverage", high)
        if not low <= high < 1:
            raise ValueError(f"coverage: expected 0 <= low <= high < 1, got ({low}, {high})")
        self.coverage = (low, high)
        self.brush_radius = None
        if brush_radius is not None:
            r_low, r_high = self._pair("brush_radius", brush_radius)
            r_low, r_high = _check_int("brush_radius", r_low), _check_int("brush_radius", r_high)
            if r_low > r_high:
                raise ValueError(f"brush_radius: expected low <= high, got ({r_low}, {r_high})")
            self.brush_radius = (r_low, r_high)

    @staticmethod
    def _pair(name: str, value: Any) -> tuple[Any, Any]:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"{name}: expected a (low, high) pair, got {value!r}")
        return value[0], value[1]

    def _params(self) -> dict[str, Any]:
        return {
            "coverage": self.coverage,
            "brush_radius": self.brush_radius,
            "noise_sigma": self.noise_sigma,
        }

    def _hole_counts(self, height: int, width: int) -> tuple[int, int]:
        pixels = height * width
        low = math.ceil(self.coverage[0] * pixels - 1e-9)
        high = math.floor(self.coverage[1] * pixels + 1e-9)
        return low, high

    def _check_size(self, height: int, width: int) -> None:
        low, high = self._hole_counts(height, width)
        if low > high:
            raise ValueError(
                f"coverage: no whole number of pixels of a {height}x{width} image gives a hole "
                f"fraction in {self.coverage}; widen the range"
            )

    def _radii(self, height: int, width: int) -> tuple[int, int]:
        if self.brush_radius is not None:
            return self.brush_radius
        low = max(1, round(min(height, width) / 32))
        return low, max(low, round(min(height, width) / 16))

    @staticmethod
    def _stroke(height: int, width: int, generator: torch.Generator | None) -> torch.Tensor:
        """Centre line of one random-walk stroke: ``(N, 2)`` float (row, col), half-pixel steps."""
        draw = torch.rand(20, generator=generator, device=_device_of(generator)).cpu().double()
        vertices = 3 + int(draw[0] * 5)
        start = torch.stack([draw[1] * (height - 1), draw[2] * (width - 1)])
        heading = draw[3] * 2 * math.pi
        side = max(height, width)
        points = [start[None]]
        for k in range(vertices):
            heading = heading + (draw[4 + 2 * k] - 0.5) * math.pi
            length = (0.1 + 0.2 * draw[5 + 2 * k]) * side
            step = torch.stack([torch.sin(heading), torch.cos(heading)]) * length
            end = start + step
            if not 0 <= end[0] <= height - 1:  # bounce off the top / bottom edge
                heading = -heading
            if not 0 <= end[1] <= width - 1:  # bounce off the left / right edge
                heading = math.pi - heading
            end = torch.stack([_reflect(end[0], height - 1), _reflect(end[1], width - 1)])
            count = max(2, math.ceil(float((end - start).norm()) * 2) + 1)
            weights = torch.linspace(0, 1, count, dtype=torch.float64)[1:, None]
            points.append(start + weights * (end - start))
            start = end
        return torch.cat(points)

    def _draw_mask(self, clean: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        batch, _, height, width = clean.shape
        low, high = self._hole_counts(height, width)
        r_low, r_high = self._radii(height, width)
        device = _device_of(generator)
        masks = []
        for _ in range(batch):
            holes = int(torch.randint(low, high + 1, (1,), generator=generator, device=device))
            order = torch.full((height * width,), math.inf, dtype=torch.float64)
            painted, clock = 0, 0
            while painted < holes:
                line = self._stroke(height, width, generator).round().long()
                radius = int(
                    torch.randint(r_low, r_high + 1, (1,), generator=generator, device=device)
                )
                times = torch.arange(clock, clock + len(line), dtype=torch.float64)
                clock += len(line)
                centre = torch.full((height * width,), math.inf, dtype=torch.float64)
                centre = centre.scatter_reduce(0, line[:, 0] * width + line[:, 1], times, "amin")
                offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
                brush = (
                    offsets[:, None] ** 2 + offsets[None] ** 2 <= radius * (radius + 1)
                ).double()
                stroke = kornia.morphology.erosion(centre.view(1, 1, height, width), brush)
                order = torch.minimum(order, stroke.flatten())
                painted = int(torch.isfinite(order).sum())
            first = torch.argsort(order, stable=True)[:holes]
            mask = torch.ones(height * width, dtype=clean.dtype)
            mask[first] = 0
            masks.append(mask.view(1, height, width))
        if not masks:  # an empty batch has an empty mask, as the other problems do
            return clean.new_ones(0, 1, height, width)
        return torch.stack(masks).to(clean.device)
