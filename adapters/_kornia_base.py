"""The kornia adapter's base: argument checks, :class:`Measurement` and :class:`Degradation`.

Private: the public names are re-exported by :mod:`jiio_ext.adapters.kornia` (which also
checks that kornia is installed). This module needs torch alone.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Degradation", "Measurement"]

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
        >>> from jiio_ext.adapters.kornia import GaussianBlur
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
