"""A small convolutional DEQ decoder written functionally (``f(z, x)``, ``head(z)``).

Used by ``jiio bench`` and the examples: latent ``x`` → injected feature map → a GroupNorm
conv cell iterated to its fixed point ``z*`` → a conv head producing an image.

Example:
    >>> import torch
    >>> from jiio_ext.apps.bench.models import ConvDEQDecoder
    >>> decoder = ConvDEQDecoder(latent_dim=8, channels=8, size=8)
    >>> x = torch.randn(2, 8)
    >>> decoder.f(decoder.initial_state(x), x).shape
    torch.Size([2, 8, 8, 8])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConvDEQDecoder", "scale_spectral_norm_"]


def scale_spectral_norm_(weight: torch.Tensor, value: float) -> torch.Tensor:
    """Rescale a (conv or linear) weight in place so its flattened spectral norm is ``value``.

    Example:
        >>> import torch
        >>> w = scale_spectral_norm_(torch.randn(4, 3), 0.5)
        >>> round(float(torch.linalg.matrix_norm(w, 2)), 4)
        0.5
    """
    with torch.no_grad():
        return weight.mul_(value / torch.linalg.matrix_norm(weight.flatten(1), 2))


class ConvDEQDecoder(nn.Module):
    """Decoder-only DEQ: ``z = relu(conv(z) + u(x))``, image ``= head(z)``.

    The latent enters through a linear map to a coarse feature map, upsampled ×4 and
    group-normalised (the injection ``u``). The cell's flattened convolution weight starts
    with spectral norm ``contraction < 1``, which keeps the cell contractive in ``z`` for every
    ``x`` in practice (ReLU is 1-Lipschitz); a GroupNorm inside the cell would rescale ``z``
    and break that.

    Args:
        latent_dim: size of the latent ``x``.
        channels: feature channels of ``z``.
        size: spatial size of ``z`` and of the image (a multiple of 4).
        out_channels: image channels.
        groups: GroupNorm groups.
        contraction: initial spectral norm of the cell's convolution.

    Example:
        >>> import torch
        >>> decoder = ConvDEQDecoder(latent_dim=4, channels=8, size=8)
        >>> x = torch.randn(2, 4)
        >>> z = decoder.initial_state(x)
        >>> for _ in range(100):  # the cell is contractive: plain iteration converges
        ...     z = decoder.f(z, x)
        >>> bool((decoder.f(z, x) - z).abs().max() < 1e-4)
        True
        >>> decoder(z).shape  # the head: state -> image
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        latent_dim: int = 32,
        channels: int = 32,
        size: int = 16,
        out_channels: int = 1,
        groups: int = 4,
        contraction: float = 0.9,
    ) -> None:
        super().__init__()
        if size % 4:
            raise ValueError(f"size: expected a multiple of 4, got {size}")
        self.latent_dim, self.channels, self.size = latent_dim, channels, size
        self.inject = nn.Linear(latent_dim, channels * (size // 4) ** 2)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(groups, channels)
        self.head = nn.Conv2d(channels, out_channels, 3, padding=1)
        scale_spectral_norm_(self.conv.weight, contraction)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """Zero state for a batch of latents."""
        return x.new_zeros(x.shape[0], self.channels, self.size, self.size)

    def injection(self, x: torch.Tensor) -> torch.Tensor:
        """Latent → feature map ``(B, C, size, size)``."""
        coarse = self.inject(x).view(x.shape[0], self.channels, self.size // 4, self.size // 4)
        fine = F.interpolate(coarse, scale_factor=4, mode="bilinear", align_corners=False)
        return self.norm(fine)

    def cell(self, z: torch.Tensor, injected: torch.Tensor) -> torch.Tensor:
        """The DEQ cell with a precomputed injection."""
        return F.relu(self.conv(z) + injected)

    def f(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The layer ``f(z, x)``."""
        return self.cell(z, self.injection(x))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The head: state → image."""
        return self.head(z)
