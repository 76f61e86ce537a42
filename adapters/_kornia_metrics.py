"""The kornia adapter's image metrics: per-image PSNR and SSIM on the ``[0, 1]`` scale.

Private: the public names are re-exported by :mod:`jiio_ext.adapters.kornia`.
"""

from __future__ import annotations

from typing import Any

import kornia.metrics
import torch
from jiio_ext.adapters._kornia_base import _check_images, _check_odd

__all__ = ["psnr", "ssim"]


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
