"""kornia adapter: degradation operators and image metrics for inverse problems with JIIO.

Each :class:`Degradation` is a linear forward operator ``A`` (noise is additive, ``A = I``)
with an explicit adjoint and a per-sample measurement-consistency loss, so an inverse problem
over a DEQ decoder reads ``objective = lambda z, x, t: op.consistency(decode(z), *t)`` with
``targets=measurement.targets()``. Operators are built on kornia's filters (Gaussian and
motion kernels, ``filter2d``), its box machinery (``bbox_generator`` / ``bbox_to_mask``, as in
``RandomErasing``), morphology (brush strokes) and geometry (bicubic ``rescale``). Masks and
noise are drawn from a seeded generator, so the same seed gives the same measurement. Images are
``(B, C, H, W)`` floats in ``[0, 1]``.

Example:
    >>> import torch
    >>> from jiio_ext.adapters.kornia import make_degradation, psnr
    >>> op = make_degradation("inpaint", 16)
    >>> clean = torch.rand(2, 1, 16, 16)
    >>> meas = op.measure(clean, seed=0)
    >>> int((1 - meas.mask[0]).sum())  # one 5x5 hole: 20/64 of the side
    25
    >>> op.consistency(clean, *meas.targets())
    tensor([0., 0.])
    >>> bool((psnr(op.naive_inverse(meas), clean) > 10).all())
    True
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

try:
    import kornia.filters
    import kornia.geometry.bbox
    import kornia.geometry.transform
    import kornia.metrics
    import kornia.morphology
except ImportError as err:
    raise ImportError(
        'jiio_ext.adapters.kornia needs kornia: pip install "jiio-ext[inverse]"'
    ) from err

__all__ = [
    "PROBLEMS",
    "BoxInpainting",
    "Degradation",
    "Downsample",
    "GaussianBlur",
    "GaussianNoise",
    "IrregularInpainting",
    "Measurement",
    "MotionBlur",
    "make_degradation",
    "psnr",
    "ssim",
]

# Problem names accepted by make_degradation (one degradation operator each).
PROBLEMS = ("denoise", "inpaint", "inpaint-irregular", "deblur", "deblur-motion", "superres")

Seed = int | torch.Generator | None
_BORDERS = ("reflect", "replicate", "circular", "constant")


# --------------------------------------------------------------------------- argument checks


def _check_number(name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a float; TypeError if not a real number, ValueError if out of range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"{name}: expected {kind} finite number, got {value}")
    return value


def _check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def _check_odd(name: str, value: Any, *, minimum: int = 1) -> int:
    value = _check_int(name, value, minimum=minimum)
    if value % 2 == 0:
        raise ValueError(f"{name}: expected an odd size (the kernel needs a centre), got {value}")
    return value


def _check_images(name: str, tensor: Any) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 4:
        raise ValueError(
            f"{name}: expected a (B, C, H, W) image batch, got shape {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point tensor (float32 or float64), got {tensor.dtype}"
        )
    return tensor


def _check_border(border_type: Any) -> str:
    if border_type not in _BORDERS:
        raise ValueError(f"border_type: expected one of {_BORDERS}, got {border_type!r}")
    return border_type


def _generator(seed: Seed) -> torch.Generator | None:
    """A generator for ``seed``: an int seeds a fresh CPU generator, ``None`` means torch's."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(
            f"seed: expected an int, a torch.Generator or None, got {type(seed).__name__}"
        )
    return torch.Generator().manual_seed(seed)


def _device_of(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


# --------------------------------------------------------------------------- measurement


@dataclass
class Measurement:
    """A degraded observation ``y = A(x) + noise``, with the inpainting mask if there is one.

    Attributes:
        observed: ``y``, ``(B, C, h, w)`` (``h, w`` smaller than the image for superres).
        mask: ``(B, 1, H, W)`` float, 1 where a pixel is observed (inpainting), else ``None``.

    Example:
        >>> import torch
        >>> meas = Measurement(torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4))
        >>> [t.shape[0] for t in meas.targets()]
        [3, 3]
        >>> meas.index_select([0, 2]).observed.shape
        torch.Size([2, 1, 4, 4])
    """

    observed: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_images("observed", self.observed)
        if self.mask is not None:
            _check_images("mask", self.mask)
            batch = self.observed.shape[0]
            expected = (batch, 1, *self.observed.shape[-2:])
            if tuple(self.mask.shape) != expected:
                raise ValueError(
                    f"mask: expected shape {expected} (B, 1, H, W) matching observed, "
                    f"got {tuple(self.mask.shape)}"
                )

    def targets(self) -> tuple[torch.Tensor, ...]:
        """Per-sample tensors for ``solve_joint(targets=...)``: ``(observed,)`` or with the mask."""
        if self.mask is None:
            return (self.observed,)
        return (self.observed, self.mask)

    def index_select(self, index: torch.Tensor | Sequence[int]) -> Measurement:
        """The measurement of the given rows (batch positions)."""
        rows = torch.as_tensor(index, dtype=torch.long, device=self.observed.device)
        mask = None if self.mask is None else self.mask.index_select(0, rows)
        return Measurement(self.observed.index_select(0, rows), mask)

    def to(self, *args: Any, **kwargs: Any) -> Measurement:
        """A copy moved or cast with ``Tensor.to(*args, **kwargs)`` (observed and mask alike)."""
        mask = None if self.mask is None else self.mask.to(*args, **kwargs)
        return Measurement(self.observed.to(*args, **kwargs), mask)


# --------------------------------------------------------------------------- base class


class Degradation(ABC):
    """Base class: a linear forward operator ``A`` plus additive Gaussian measurement noise.

    Subclasses implement ``_forward`` (``A``), ``_adjoint`` (``Aᵀ``) and ``_naive`` (a simple
    reconstruction); inpainting operators (``uses_mask``) also draw a mask per image.

    Attributes:
        name: the problem name (one of :data:`PROBLEMS`).
        linear: ``True``: every operator here is linear.
        uses_mask: whether measurements carry a mask (inpainting).
        noise_sigma: measurement noise standard deviation on the ``[0, 1]`` scale (0: none).

    Example:
        >>> import torch
        >>> op = GaussianBlur(kernel_size=3, sigma=1.0, noise_sigma=0.05)
        >>> meas = op.measure(torch.rand(2, 3, 8, 8), seed=1)
        >>> op.consistency(meas.observed, *meas.targets()).shape
        torch.Size([2])
    """

    name: str = ""
    linear: bool = True
    uses_mask: bool = False

    def __init__(self, noise_sigma: float = 0.0) -> None:
        self.noise_sigma = _check_number("noise_sigma", noise_sigma)

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, Any]:
        return {"noise_sigma": self.noise_sigma}

    # ---- hooks for subclasses
    def _check_size(self, height: int, width: int) -> None:
        """Raise ValueError if the operator cannot act on ``height × width`` images (any here)."""
        return None

    def _draw_mask(self, clean: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The ``(B, 1, H, W)`` mask of one measurement (operators with ``uses_mask``)."""
        raise NotImplementedError(f"{type(self).__name__} draws no mask")

    @abstractmethod
    def _forward(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``A(image)`` on checked arguments."""

    @abstractmethod
    def _adjoint(self, residual: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``Aᵀ(residual)`` on checked arguments."""

    @abstractmethod
    def _naive(self, measurement: Measurement) -> torch.Tensor:
        """The naive reconstruction of a checked measurement."""

    # ---- checks shared by the public methods
    def _image(self, name: str, image: Any) -> torch.Tensor:
        image = _check_images(name, image)
        self._check_size(*image.shape[-2:])
        return image

    def _mask(self, mask: Any, image: torch.Tensor) -> torch.Tensor | None:
        if not self.uses_mask:
            return None
        if mask is None:
            raise ValueError(f"mask: {type(self).__name__} needs the (B, 1, H, W) mask, got None")
        mask = _check_images("mask", mask)
        expected = (image.shape[0], 1, *image.shape[-2:])
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask: expected shape {expected}, got {tuple(mask.shape)}")
        return mask.to(image.dtype)

    def measurement_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of ``A(image)`` for an image batch of shape ``image_shape``."""
        return tuple(image_shape)

    # ---- public API
    def measure(self, clean: torch.Tensor, seed: Seed = None) -> Measurement:
        """Degrade ``clean``: draw the mask (inpainting), apply ``A`` and add noise.

        Args:
            clean: ``(B, C, H, W)`` images in ``[0, 1]``.
            seed: an int or a ``torch.Generator`` (the same seed gives the same measurement;
                masks are drawn before noise), or ``None`` for torch's global generator.

        Returns:
            The :class:`Measurement`; noise falls on observed pixels only and is not clipped.
        """
        clean = self._image("clean", clean)
        generator = _generator(seed)
        mask = self._draw_mask(clean, generator) if self.uses_mask else None
        observed = self._forward(clean, mask)
        if self.noise_sigma > 0:
            noise = torch.randn(
                observed.shape,
                generator=generator,
                dtype=observed.dtype,
                device=_device_of(generator),
            )
            observed = observed + self.noise_sigma * noise.to(observed.device)
            if mask is not None:
                observed = observed * mask
        return Measurement(observed, mask)

    def apply(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The noiseless, differentiable forward operator ``A(image)``.

        Args:
            image: ``(B, C, H, W)``.
            mask: the ``(B, 1, H, W)`` mask (inpainting only; ignored otherwise).
        """
        image = self._image("image", image)
        return self._forward(image, self._mask(mask, image))

    def adjoint(self, residual: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The adjoint ``Aᵀ(residual)``, computed explicitly (not through autograd).

        Args:
            residual: a tensor shaped like ``A(image)``.
            mask: the ``(B, 1, H, W)`` mask (inpainting only; ignored otherwise).

        Returns:
            A tensor of the image's shape with ``<A x, r> = <x, Aᵀ r>``.
        """
        residual = _check_images("residual", residual)
        image_shape = self._image_shape(tuple(residual.shape))
        self._check_size(*image_shape[-2:])
        return self._adjoint(residual, self._mask(mask, residual.new_empty(image_shape)))

    def _image_shape(self, measurement_shape: tuple[int, ...]) -> tuple[int, ...]:
        return measurement_shape

    def _residual(
        self, image: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        return self._forward(image, mask) - observed

    def consistency(self, image: torch.Tensor, *targets: torch.Tensor) -> torch.Tensor:
        """Per-sample measurement-consistency loss: the mean of ``(A(image) - observed)²``.

        Args:
            image: ``(B, C, H, W)`` estimate (e.g. the decoded DEQ state).
            *targets: ``measurement.targets()``: ``observed``, then the mask for inpainting.

        Returns:
            ``(B,)`` losses; for inpainting ``sum(mask·(image - observed)²) / (C·H·W)``.
        """
        expected = ("observed", "mask") if self.uses_mask else ("observed",)
        if len(targets) != len(expected):
            raise ValueError(
                f"targets: {type(self).__name__}.consistency expects ({', '.join(expected)}) "
                f"after the image, got {len(targets)} tensor(s)"
            )
        image = self._image("image", image)
        observed = _check_images("observed", targets[0])
        shape = self.measurement_shape(image.shape)
        if tuple(observed.shape) != shape:
            raise ValueError(
                f"observed: expected shape {shape} for images of shape {tuple(image.shape)}, "
                f"got {tuple(observed.shape)}"
            )
        mask = self._mask(targets[1] if self.uses_mask else None, image)
        residual = self._residual(image, observed.to(image.dtype), mask)
        return residual.pow(2).flatten(1).mean(1)

    def naive_inverse(self, measurement: Measurement) -> torch.Tensor:
        """A simple full-size reconstruction from ``measurement`` (a baseline for tables/plots)."""
        if not isinstance(measurement, Measurement):
            raise TypeError(
                f"measurement: expected a Measurement, got {type(measurement).__name__}"
            )
        if self.uses_mask and measurement.mask is None:
            raise ValueError(f"measurement: {type(self).__name__} needs a measurement with a mask")
        self._check_size(*self._image_shape(tuple(measurement.observed.shape))[-2:])
        return self._naive(measurement)


# --------------------------------------------------------------------------- noise


class GaussianNoise(Degradation):
    """Denoising: ``y = x + σ·n`` with ``A`` the identity.

    Args:
        sigma: noise standard deviation on the ``[0, pixel_range]`` scale.
        pixel_range: the scale ``sigma`` is stated on (``255`` for ``σ = 25`` in 8-bit units).

    Example:
        >>> import torch
        >>> op = GaussianNoise(sigma=25, pixel_range=255)
        >>> round(op.noise_sigma, 4)
        0.098
        >>> meas = op.measure(torch.full((1, 1, 64, 64), 0.5), seed=0)
        >>> abs(float((meas.observed - 0.5).std()) - 25 / 255) < 0.01
        True
    """

    name = "denoise"

    def __init__(self, sigma: float, pixel_range: float = 1.0) -> None:
        self.sigma = _check_number("sigma", sigma)
        self.pixel_range = _check_number("pixel_range", pixel_range, positive=True)
        super().__init__(noise_sigma=self.sigma / self.pixel_range)

    def _params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "pixel_range": self.pixel_range}

    def _forward(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return image

    def _adjoint(self, residual: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return residual

    def _naive(self, measurement: Measurement) -> torch.Tensor:
        return measurement.observed


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


# --------------------------------------------------------------------------- blur


def _padding_adjoint(
    padded: torch.Tensor, pad: int, size: int, dim: int, border: str
) -> torch.Tensor:
    """Adjoint of padding ``size`` entries by ``pad`` on both sides of ``dim`` (F.pad's modes)."""
    source = torch.arange(-pad, size + pad, device=padded.device)
    if border == "reflect":
        source = source.abs()
        source = torch.where(source > size - 1, 2 * (size - 1) - source, source)
    elif border == "replicate":
        source = source.clamp(0, size - 1)
    elif border == "circular":
        source = source.remainder(size)
    keep = ((source >= 0) & (source < size)).nonzero().flatten()
    shape = list(padded.shape)
    shape[dim] = size
    return padded.new_zeros(shape).index_add(
        dim, source.index_select(0, keep), padded.index_select(dim, keep)
    )


class _Convolution(Degradation):
    """``A(x) = kernel ⋆ x`` per channel (kornia ``filter2d``, 'same' size, padded borders)."""

    def __init__(self, kernel: torch.Tensor, border_type: str, noise_sigma: float) -> None:
        super().__init__(noise_sigma)
        self.border_type = _check_border(border_type)
        self.kernel = kernel.detach().to(torch.float64).cpu()
        self._kernels: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _kernel_like(self, tensor: torch.Tensor) -> torch.Tensor:
        """The kernel on ``tensor``'s device and dtype (cached: one copy per device and dtype)."""
        key = (tensor.device, tensor.dtype)
        if key not in self._kernels:
            self._kernels[key] = self.kernel.to(device=tensor.device, dtype=tensor.dtype)
        return self._kernels[key]

    def _check_size(self, height: int, width: int) -> None:
        pad = self.kernel.shape[-1] // 2
        if self.border_type == "reflect" and pad >= min(height, width):
            raise ValueError(
                f"kernel_size: {self.kernel.shape[-1]} needs images larger than {pad} pixels "
                f"on each side with reflect borders, got {height}x{width}"
            )
        if self.border_type == "circular" and pad > min(height, width):
            raise ValueError(
                f"kernel_size: {self.kernel.shape[-1]} needs images of at least {pad} pixels "
                f"on each side with circular borders, got {height}x{width}"
            )

    def _blur(self, image: torch.Tensor) -> torch.Tensor:
        return kornia.filters.filter2d(
            image, self._kernel_like(image), border_type=self.border_type
        )

    def _blur_adjoint(self, residual: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = residual.shape
        kernel = self._kernel_like(residual)
        pad = kernel.shape[-1] // 2
        flat = residual.reshape(batch * channels, 1, height, width)
        padded = F.conv_transpose2d(flat, kernel[None])
        folded = _padding_adjoint(padded, pad, height, 2, self.border_type)
        folded = _padding_adjoint(folded, pad, width, 3, self.border_type)
        return folded.reshape(batch, channels, height, width)

    def _forward(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self._blur(image)

    def _adjoint(self, residual: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self._blur_adjoint(residual)

    def _naive(self, measurement: Measurement) -> torch.Tensor:
        return measurement.observed


class GaussianBlur(_Convolution):
    """Deblurring: an isotropic Gaussian blur (``kornia.filters.get_gaussian_kernel2d``).

    Args:
        kernel_size: odd kernel side.
        sigma: Gaussian standard deviation in pixels.
        noise_sigma: measurement noise std on ``[0, 1]``.
        border_type: ``'reflect'`` (default), ``'replicate'``, ``'circular'`` or ``'constant'``.

    Example:
        >>> import torch
        >>> op = GaussianBlur(kernel_size=5, sigma=1.0)
        >>> x, r = torch.rand(2, 3, 16, 16, dtype=torch.float64), torch.rand(2, 3, 16, 16)
        >>> lhs = (op.apply(x) * r.double()).sum()
        >>> bool(torch.isclose(lhs, (x * op.adjoint(r.double())).sum()))
        True
    """

    name = "deblur"

    def __init__(
        self,
        kernel_size: int = 5,
        sigma: float = 1.0,
        noise_sigma: float = 0.0,
        border_type: str = "reflect",
    ) -> None:
        self.kernel_size = _check_odd("kernel_size", kernel_size)
        self.sigma = _check_number("sigma", sigma, positive=True)
        kernel = kornia.filters.get_gaussian_kernel2d(
            kernel_size, (self.sigma, self.sigma), dtype=torch.float64
        )
        super().__init__(kernel, border_type, noise_sigma)

    def _params(self) -> dict[str, Any]:
        return {
            "kernel_size": self.kernel_size,
            "sigma": self.sigma,
            "noise_sigma": self.noise_sigma,
            "border_type": self.border_type,
        }


class MotionBlur(_Convolution):
    """Deblurring: a linear motion blur (``kornia.filters.get_motion_kernel2d``).

    Args:
        kernel_size: odd kernel side, at least 3 (the length of the motion).
        angle: motion direction in degrees.
        direction: in ``[-1, 1]``: 0 spreads evenly, -1 / 1 weighs one end (kornia's meaning).
        noise_sigma: measurement noise std on ``[0, 1]``.
        border_type: ``'reflect'`` (default), ``'replicate'``, ``'circular'`` or ``'constant'``.

    Example:
        >>> import torch
        >>> op = MotionBlur(kernel_size=7, angle=45.0)
        >>> op.apply(torch.rand(1, 1, 16, 16)).shape
        torch.Size([1, 1, 16, 16])
    """

    name = "deblur-motion"

    def __init__(
        self,
        kernel_size: int = 7,
        angle: float = 45.0,
        direction: float = 0.0,
        noise_sigma: float = 0.0,
        border_type: str = "reflect",
    ) -> None:
        self.kernel_size = _check_odd("kernel_size", kernel_size, minimum=3)
        if isinstance(angle, bool) or not isinstance(angle, (int, float)):
            raise TypeError(f"angle: expected a number of degrees, got {type(angle).__name__}")
        if isinstance(direction, bool) or not isinstance(direction, (int, float)):
            raise TypeError(f"direction: expected a number, got {type(direction).__name__}")
        if not -1 <= direction <= 1:
            raise ValueError(f"direction: expected a value in [-1, 1], got {direction}")
        self.angle, self.direction = float(angle), float(direction)
        kernel = kornia.filters.get_motion_kernel2d(kernel_size, self.angle, self.direction)
        super().__init__(kernel, border_type, noise_sigma)

    def _params(self) -> dict[str, Any]:
        return {
            "kernel_size": self.kernel_size,
            "angle": self.angle,
            "direction": self.direction,
            "noise_sigma": self.noise_sigma,
            "border_type": self.border_type,
        }


# --------------------------------------------------------------------------- super-resolution


class Downsample(_Convolution):
    """Super-resolution: antialiasing Gaussian blur, then ``factor × factor`` block averages.

    ``A(x) = avgpool_f(G ⋆ x)``. With the default ``antialias_sigma = factor / √6`` the Gaussian
    and the box together have a standard deviation of ``factor / 2`` pixels; ``0`` keeps the
    box average alone. The adjoint is nearest upsampling divided by ``factor²``, then the blur's
    adjoint. The naive inverse is bicubic upsampling (kornia ``rescale``), clipped to ``[0, 1]``.

    Args:
        factor: 2 or 4; image sides must be multiples of it.
        antialias_sigma: standard deviation of the antialiasing blur, in high-res pixels.
        noise_sigma: measurement noise std on ``[0, 1]``.
        border_type: border of the antialiasing blur (default ``'reflect'``).

    Example:
        >>> import torch
        >>> op = Downsample(factor=4)
        >>> meas = op.measure(torch.rand(2, 3, 32, 32), seed=0)
        >>> meas.observed.shape, op.naive_inverse(meas).shape
        (torch.Size([2, 3, 8, 8]), torch.Size([2, 3, 32, 32]))
    """

    name = "superres"

    def __init__(
        self,
        factor: int = 2,
        antialias_sigma: float | None = None,
        noise_sigma: float = 0.0,
        border_type: str = "reflect",
    ) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int):
            raise TypeError(f"factor: expected the int 2 or 4, got {type(factor).__name__}")
        if factor not in (2, 4):
            raise ValueError(f"factor: expected 2 or 4, got {factor}")
        self.factor = factor
        sigma = factor / math.sqrt(6) if antialias_sigma is None else antialias_sigma
        self.antialias_sigma = _check_number("antialias_sigma", sigma)
        if self.antialias_sigma > 0:
            size = 2 * math.ceil(3 * self.antialias_sigma) + 1
            sigmas = (self.antialias_sigma, self.antialias_sigma)
            kernel = kornia.filters.get_gaussian_kernel2d(size, sigmas, dtype=torch.float64)
        else:
            kernel = torch.ones(1, 1, 1, dtype=torch.float64)
        super().__init__(kernel, border_type, noise_sigma)

    def _params(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "antialias_sigma": self.antialias_sigma,
            "noise_sigma": self.noise_sigma,
            "border_type": self.border_type,
        }

    def _check_size(self, height: int, width: int) -> None:
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"factor: image sides must be multiples of {self.factor}, got {height}x{width}"
            )
        super()._check_size(height, width)

    def measurement_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of ``A(image)``: the image's, with both sides divided by ``factor``."""
        *lead, height, width = image_shape
        return (*lead, height // self.factor, width // self.factor)

    def _image_shape(self, measurement_shape: tuple[int, ...]) -> tuple[int, ...]:
        *lead, height, width = measurement_shape
        return (*lead, height * self.factor, width * self.factor)

    def _forward(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return F.avg_pool2d(self._blur(image), self.factor)

    def _adjoint(self, residual: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        spread = residual.repeat_interleave(self.factor, dim=2).repeat_interleave(self.factor, 3)
        return self._blur_adjoint(spread / self.factor**2)

    def _naive(self, measurement: Measurement) -> torch.Tensor:
        upsampled = kornia.geometry.transform.rescale(
            measurement.observed, float(self.factor), interpolation="bicubic", align_corners=False
        )
        return upsampled.clamp(0, 1)


# --------------------------------------------------------------------------- factory


_OPTIONS: dict[str, dict[str, str]] = {
    # problem -> {make_degradation option: constructor argument}
    "denoise": {"sigma": "sigma", "pixel_range": "pixel_range"},
    "inpaint": {"hole_fraction": "hole_fraction", "hole_size": "hole_size"},
    "inpaint-irregular": {"coverage": "coverage", "brush_radius": "brush_radius"},
    "deblur": {"kernel_size": "kernel_size", "blur_sigma": "sigma", "border_type": "border_type"},
    "deblur-motion": {
        "kernel_size": "kernel_size",
        "angle": "angle",
        "direction": "direction",
        "border_type": "border_type",
    },
    "superres": {"factor": "factor", "antialias_sigma": "antialias_sigma"},
}
_CLASSES: dict[str, type[Degradation]] = {
    "denoise": GaussianNoise,
    "inpaint": BoxInpainting,
    "inpaint-irregular": IrregularInpainting,
    "deblur": GaussianBlur,
    "deblur-motion": MotionBlur,
    "superres": Downsample,
}


def make_degradation(problem: str, image_size: int, **options: Any) -> Degradation:
    """Build the degradation operator of ``problem`` for square ``image_size`` images.

    Args:
        problem: one of :data:`PROBLEMS`.
        image_size: side of the (square) images, used to check the options.
        **options: ``sigma`` (default 0.1) and ``pixel_range`` (denoise); ``noise_sigma``
            (every other problem); ``hole_fraction`` / ``hole_size`` (inpaint); ``coverage``,
            ``brush_radius`` (inpaint-irregular); ``kernel_size``, ``blur_sigma``,
            ``border_type`` (deblur); ``kernel_size``, ``angle``, ``direction``, ``border_type``
            (deblur-motion); ``factor``, ``antialias_sigma`` (superres).

    Returns:
        The :class:`Degradation`.

    Raises:
        ValueError: unknown problem, out-of-range option (``sigma < 0``, a hole not smaller
            than the image, an even kernel size, a factor not dividing ``image_size``...).
        TypeError: an option the problem does not take, or an option of the wrong type.

    Example:
        >>> op = make_degradation("superres", 32, factor=4, noise_sigma=0.01)
        >>> type(op).__name__, op.measurement_shape((1, 3, 32, 32))
        ('Downsample', (1, 3, 8, 8))
        >>> make_degradation("deblur", 16, kernel_size=4)
        Traceback (most recent call last):
        ...
        ValueError: kernel_size: expected an odd size (the kernel needs a centre), got 4
    """
    if problem not in PROBLEMS:
        raise ValueError(f"problem: expected one of {PROBLEMS}, got {problem!r}")
    image_size = _check_int("image_size", image_size)
    names = _OPTIONS[problem]
    allowed = set(names) | ({"noise_sigma"} if problem != "denoise" else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"options: problem {problem!r} takes no option {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(allowed))}"
        )
    kwargs = {names.get(key, key): value for key, value in options.items()}
    if problem == "denoise":
        kwargs.setdefault("sigma", 0.1)
    operator = _CLASSES[problem](**kwargs)
    operator._check_size(image_size, image_size)
    return operator


# --------------------------------------------------------------------------- metrics


def _check_pair(estimate: Any, reference: Any) -> None:
    _check_images("estimate", estimate)
    _check_images("reference", reference)
    if estimate.shape != reference.shape:
        raise ValueError(
            f"estimate: expected the reference's shape {tuple(reference.shape)}, "
            f"got {tuple(estimate.shape)}"
        )


def psnr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB on the ``[0, 1]`` scale (``kornia.metrics.psnr``, max value 1).

    Args:
        estimate: ``(B, C, H, W)`` reconstruction.
        reference: ``(B, C, H, W)`` clean images.

    Returns:
        ``(B,)``; ``inf`` where the images are identical. Average with ``.mean()``.

    Example:
        >>> import torch
        >>> reference = torch.zeros(2, 1, 4, 4)
        >>> [round(v, 3) for v in psnr(reference + 0.1, reference).tolist()]  # MSE 0.01: 20 dB
        [20.0, 20.0]
    """
    _check_pair(estimate, reference)
    per_image = [kornia.metrics.psnr(e, r, 1.0) for e, r in zip(estimate, reference)]
    return torch.stack(per_image)


def ssim(
    estimate: torch.Tensor, reference: torch.Tensor, window_size: int | None = None
) -> torch.Tensor:
    """Per-image mean SSIM on the ``[0, 1]`` scale (``kornia.metrics.ssim``).

    Args:
        estimate: ``(B, C, H, W)`` reconstruction.
        reference: ``(B, C, H, W)`` clean images.
        window_size: odd Gaussian window side, at most the smaller image side. Default: 11, or
            the largest odd number up to half the smaller side for small images (7 on 16×16,
            3 on 8×8).

    Returns:
        ``(B,)`` SSIM averaged over channels and pixels; 1 for identical images.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 1, 8, 8)
        >>> ssim(x, x)
        tensor([1., 1.])
    """
    _check_pair(estimate, reference)
    side = min(estimate.shape[-2:])
    if window_size is None:
        if side < 3:
            raise ValueError(f"estimate: SSIM needs images of at least 3x3, got {side} pixels")
        window_size = min(11, max(3, (side // 2 - 1) | 1))
    window_size = _check_odd("window_size", window_size, minimum=3)
    if window_size > side:
        raise ValueError(
            f"window_size: expected at most the smaller image side {side}, got {window_size}"
        )
    similarity = kornia.metrics.ssim(estimate, reference, window_size, max_val=1.0)
    return similarity.flatten(1).mean(1)
