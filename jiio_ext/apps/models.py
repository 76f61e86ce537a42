"""Models of the applications: the benches', the training tasks' and the demo's DEQs.

* :class:`ConvDEQDecoder`: a convolutional DEQ decoder written functionally (``f(z, x)``,
  ``head(z)``), the latent-inversion bench's problem.
* :class:`MultiScaleDecoder`: a torchdeq decoder with two resolutions (``jiio bench torchdeq``,
  the generative and inverse-problem training).
* :class:`DEQClassifier`: a convolutional torchdeq classifier (``jiio bench adversarial``, the
  adversarial training, the demo) and :func:`train_classifier`, its clean training recipe.

The torchdeq models need the ``deq`` extra; the module itself imports torch alone.

Example:
    >>> import torch
    >>> from jiio_ext.apps.models import ConvDEQDecoder
    >>> decoder = ConvDEQDecoder(latent_dim=8, channels=8, size=8)
    >>> x = torch.randn(2, 8)
    >>> decoder.f(decoder.initial_state(x), x).shape
    torch.Size([2, 8, 8, 8])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ConvDEQDecoder",
    "DEQClassifier",
    "MultiScaleDecoder",
    "scale_spectral_norm_",
    "train_classifier",
]


def _torchdeq():
    try:
        import torchdeq
    except ImportError as err:
        raise ImportError("this model needs torchdeq: pip install 'jiio-ext[deq]'") from err
    return torchdeq


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


class MultiScaleDecoder(nn.Module):
    """A torchdeq decoder with two resolutions (16×16 and 8×8), conv cells and weight norm.

    Written the way torchdeq's documentation writes models: ``self.deq = get_deq(...)``,
    ``reset_deq(self)`` at the start of ``forward``, ``z_out, info = self.deq(f, z0)`` with a
    tuple state, and a head on ``z_out[-1]``. With ``warm_start=True`` the forward starts
    from the previous call's fixed point (what a user does inside an optimisation loop).

    Args:
        latent_dim: size of the latent.
        channels: channels at both resolutions.
        size: the fine resolution (the coarse one is half of it; a multiple of 4).
        out_channels: image channels.
        squash: pass the image through a sigmoid (pixel values in ``[0, 1]``).
        deq_options: options of ``torchdeq.get_deq``.

    Example:
        >>> import torch
        >>> model = MultiScaleDecoder(latent_dim=8, channels=8, size=8, squash=True)
        >>> x = torch.randn(2, 8)
        >>> images = model(x)
        >>> images.shape, bool(((images >= 0) & (images <= 1)).all())
        (torch.Size([2, 1, 8, 8]), True)
        >>> cold = model.last_info["nstep"]  # torchdeq's solver statistics of the last call
        >>> model.warm_start = True  # start from the previous call's fixed point
        >>> _ = model(x)
        >>> bool((model.last_info["nstep"] < cold).all())
        True
    """

    def __init__(
        self,
        latent_dim: int = 16,
        channels: int = 16,
        size: int = 16,
        out_channels: int = 1,
        squash: bool = False,
        **deq_options,
    ) -> None:
        super().__init__()
        torchdeq = _torchdeq()
        if size % 4:
            raise ValueError(f"size: expected a multiple of 4, got {size}")
        self.channels, self.size, self.squash = channels, size, squash
        self.inject = nn.Linear(latent_dim, 2 * channels * (size // 4) ** 2)
        self.conv_fine = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_coarse = nn.Conv2d(channels, channels, 3, padding=1)
        self.fuse_down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.fuse_up = nn.Conv2d(channels, channels, 1)
        self.norm_fine = nn.GroupNorm(4, channels)
        self.norm_coarse = nn.GroupNorm(4, channels)
        self.head = nn.Conv2d(channels, out_channels, 3, padding=1)
        for conv, gain in (
            (self.conv_fine, 0.5),
            (self.conv_coarse, 0.5),
            (self.fuse_down, 0.25),
            (self.fuse_up, 0.25),
        ):
            scale_spectral_norm_(conv.weight, gain)
        torchdeq.norm.apply_norm(
            self, norm_type="weight_norm", filter_out=["inject", "head", "norm_fine", "norm_coarse"]
        )
        options = dict(
            core="sliced",
            f_solver="anderson",
            f_max_iter=30,
            f_tol=1e-3,
            ift=True,
            b_solver="anderson",
            b_max_iter=30,
            b_tol=1e-3,
        )
        options.update(deq_options)
        self.deq = torchdeq.get_deq(**options)
        self.warm_start = False
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_info: dict = {}

    def injection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent → (fine, coarse) feature maps."""
        c, s = self.channels, self.size
        coarse = self.inject(x).view(x.shape[0], 2 * c, s // 4, s // 4)
        u_fine = F.interpolate(coarse[:, :c], scale_factor=4, mode="bilinear", align_corners=False)
        u_coarse = F.interpolate(
            coarse[:, c:], scale_factor=2, mode="bilinear", align_corners=False
        )
        return self.norm_fine(u_fine), self.norm_coarse(u_coarse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Latent → image ``(B, out_channels, size, size)``."""
        _torchdeq().reset_deq(self)
        u_fine, u_coarse = self.injection(x)

        def cell(z_fine, z_coarse):
            up = F.interpolate(self.fuse_up(z_coarse), scale_factor=2, mode="nearest")
            new_fine = F.relu(self.conv_fine(z_fine) + up + u_fine)
            new_coarse = F.relu(self.conv_coarse(z_coarse) + self.fuse_down(z_fine) + u_coarse)
            return new_fine, new_coarse

        start = (torch.zeros_like(u_fine), torch.zeros_like(u_coarse))
        if self.warm_start and self._last is not None and self._last[0].shape == u_fine.shape:
            start = self._last
        z_out, self.last_info = self.deq(cell, start)
        z_fine, z_coarse = z_out[-1]
        self._last = (z_fine.detach(), z_coarse.detach())
        image = self.head(z_fine)
        return torch.sigmoid(image) if self.squash else image


class DEQClassifier(nn.Module):
    """A convolutional torchdeq classifier (10 classes) for small images.

    Images larger than 16 pixels are downsampled ×2 by the stem (MNIST 28 → 14, CIFAR-10
    32 → 16); the DEQ cell is a contractive conv with a GroupNorm-ed injection.

    Args:
        channels: feature channels of the DEQ state.
        core: torchdeq core; ``'jiio'`` keeps eval mode differentiable for stock attacks.
        seed: initialisation seed.
        in_channels: image channels.
        image_size: image height (= width).

    Example:
        >>> import torch
        >>> model = DEQClassifier(channels=8).eval()
        >>> images = torch.rand(2, 1, 8, 8, requires_grad=True)
        >>> logits = model(images)
        >>> logits.shape
        torch.Size([2, 10])
        >>> logits.sum().backward()  # the 'jiio' core: input gradients in eval mode
        >>> images.grad.shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        channels: int = 8,
        core: str = "jiio",
        seed: int = 0,
        in_channels: int = 1,
        image_size: int = 8,
    ) -> None:
        super().__init__()
        import jiio_ext.adapters.torchdeq  # noqa: F401  (registers the 'jiio' core)

        torchdeq = _torchdeq()

        torch.manual_seed(seed)
        stride = 2 if image_size > 16 else 1
        side = (image_size + stride - 1) // stride
        self.stem = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1)
        self.cell = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(2, channels)
        self.head = nn.Linear(channels * side * side, 10)
        scale_spectral_norm_(self.cell.weight, 0.6)
        self.deq = torchdeq.get_deq(
            core=core,
            f_solver="anderson",
            f_max_iter=40,
            f_tol=1e-5,
            ift=True,
            b_solver="anderson",
            b_max_iter=40,
            b_tol=1e-5,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in ``[0, 1]`` → logits ``(B, 10)``."""
        _torchdeq().reset_deq(self)
        u = self.norm(self.stem(x))
        z = self.deq(lambda z: torch.relu(self.cell(z) + u), torch.zeros_like(u))[0][-1]
        return self.head(z.flatten(1))


def train_classifier(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int
) -> None:
    """Train a classifier clean (cross-entropy, Adam lr 0.01, batches of 64, seed 0), then eval.

    The recipe of the bench's and the demo's digits classifiers.

    Args:
        model: a classifier ``(B, C, H, W) -> (B, classes)`` such as :class:`DEQClassifier`.
        images: training images.
        labels: their class labels.
        epochs: passes over the data.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> images = torch.randn(64, 1, 2, 2)
        >>> labels = (images.flatten(1).sum(1) > 0).long()
        >>> accuracy = lambda: float((model(images).argmax(1) == labels).float().mean())
        >>> before = accuracy()
        >>> train_classifier(model, images, labels, epochs=100)
        >>> model.training, round(before, 2), round(accuracy(), 2)
        (False, 0.7, 0.98)
    """
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=gen).to(images.device)
        for start in range(0, images.shape[0], 64):
            batch = order[start : start + 64]
            opt.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            opt.step()
    model.eval()
