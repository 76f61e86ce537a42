"""The kornia adapter's degradation operators: noise, blur (Gaussian, motion), downsampling.

Private: the public names are re-exported by :mod:`jiio_ext.adapters.kornia`; the inpainting
operators, which draw masks, are in :mod:`jiio_ext.adapters._kornia_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import kornia.filters
import kornia.geometry.transform
import torch
import torch.nn.functional as F
from jiio_ext.adapters._kornia_base import (
    Degradation,
    Measurement,
    _check_border,
    _check_number,
    _check_odd,
)

__all__ = ["Downsample", "GaussianBlur", "GaussianNoise", "MotionBlur"]


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
