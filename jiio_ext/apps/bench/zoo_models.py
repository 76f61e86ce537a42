"""Models of ``jiio bench zoo``, written the way torchdeq's documentation and DEQ-zoo write them.

None of them was tuned for JIIO: each uses torchdeq's own pieces as its authors would
(``get_deq``, ``apply_norm`` / ``reset_norm``, a head on ``z_out[-1]``), with the solver they
would pick. They are small enough for a CPU run.

* :class:`MultiResolutionDEQ` — an MDEQ-style classifier: two resolutions in a list state,
  residual cells with GroupNorm, fusion across resolutions, weight norm, Broyden.
* :class:`ImplicitRepresentation` — a DEQ-INR style coordinate network with Fourier
  features, returning a dict.
* :class:`GetStartedModel` — torchdeq's get-started ``DEQDemo`` with its injection and
  decoder around it.
* :class:`TupleStateDEQ` — a multi-equilibrium model whose ``f`` takes and returns two tensors.
* :class:`DocumentationDecoder` — a latent decoder in the documentation's style (weight norm,
  16-d latent).

Example:
    >>> import torch
    >>> from jiio_ext.apps.bench.zoo_models import ZOO_MODELS
    >>> model, x_true = ZOO_MODELS["get-started"](batch=3, seed=0)
    >>> model(x_true).shape
    torch.Size([3, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ZOO_MODELS",
    "DocumentationDecoder",
    "GetStartedModel",
    "ImplicitRepresentation",
    "MultiResolutionDEQ",
    "TupleStateDEQ",
]


def _torchdeq():
    try:
        import torchdeq
    except ImportError as err:
        raise ImportError("jiio bench zoo needs torchdeq: pip install 'jiio-ext[deq]'") from err
    return torchdeq


def _deq(**options):
    base = dict(f_solver="anderson", f_max_iter=30, f_tol=1e-3, ift=True)
    base.update(options)
    return _torchdeq().get_deq(**base)


class _Branch(nn.Module):
    """One resolution's residual cell: conv → GroupNorm → ReLU → conv → GroupNorm, + injection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(4, channels, affine=True)
        self.norm2 = nn.GroupNorm(4, channels, affine=True)

    def forward(self, z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(z)))
        return F.relu(self.norm2(self.conv2(out) + injection) + z) * 0.5


class MultiResolutionDEQ(nn.Module):
    """An MDEQ-style classifier with a fine and a coarse resolution (list state, Broyden).

    Args:
        channels: channels of both branches.
        size: input resolution (the coarse branch is half of it).
        classes: number of logits.

    Example:
        >>> import torch
        >>> MultiResolutionDEQ(channels=8, size=8)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, channels: int = 8, size: int = 12, classes: int = 10) -> None:
        super().__init__()
        torchdeq = _torchdeq()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.down_stem = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.fine, self.coarse = _Branch(channels), _Branch(channels)
        self.fuse_down = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)
        self.fuse_up = nn.Conv2d(channels, channels, 1, bias=False)
        self.head = nn.Linear(2 * channels, classes)
        self.channels, self.size = channels, size
        torchdeq.norm.apply_norm(self, norm_type="weight_norm", filter_out=["stem", "head"])
        self.deq = _deq(f_solver="broyden", b_solver="broyden", b_max_iter=30, b_tol=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 1, size, size)`` → logits."""
        torchdeq = _torchdeq()
        torchdeq.norm.reset_norm(self)
        u_fine = self.stem(x)
        u_coarse = self.down_stem(u_fine)

        def f(z_fine: torch.Tensor, z_coarse: torch.Tensor):
            up = F.interpolate(self.fuse_up(z_coarse), size=z_fine.shape[-2:], mode="nearest")
            new_fine = self.fine(z_fine, u_fine + up)
            new_coarse = self.coarse(z_coarse, u_coarse + self.fuse_down(z_fine))
            return new_fine, new_coarse

        z0 = [torch.zeros_like(u_fine), torch.zeros_like(u_coarse)]
        z_out, _ = self.deq(f, z0)
        fine, coarse = z_out[-1]
        pooled = torch.cat([fine.mean(dim=(2, 3)), coarse.mean(dim=(2, 3))], dim=1)
        return self.head(pooled)


class ImplicitRepresentation(nn.Module):
    """A DEQ-INR style network: coordinates → Fourier features → equilibrium → colour (dict).

    Args:
        hidden: width of the equilibrium state.
        frequencies: number of Fourier frequencies per coordinate.

    Example:
        >>> import torch
        >>> out = ImplicitRepresentation(hidden=16)(torch.zeros(4, 2))
        >>> sorted(out), out["rgb"].shape
        (['rgb', 'state'], torch.Size([4, 3]))
    """

    def __init__(self, hidden: int = 64, frequencies: int = 8) -> None:
        super().__init__()
        torchdeq = _torchdeq()
        self.register_buffer("bands", 2.0 ** torch.arange(frequencies).float() * math.pi / 4)
        self.inject = nn.Linear(4 * frequencies, hidden)
        self.layer = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 3)
        torchdeq.norm.apply_norm(self.layer, norm_type="weight_norm")
        self.deq = _deq(b_solver="anderson", b_max_iter=30, b_tol=1e-3)

    def forward(self, coords: torch.Tensor) -> dict[str, torch.Tensor]:
        """Coordinates ``(B, 2)`` → ``{"rgb": (B, 3), "state": (B, hidden)}``."""
        _torchdeq().norm.reset_norm(self.layer)
        angles = coords.unsqueeze(-1) * self.bands
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)
        u = self.inject(features)
        z_out, _ = self.deq(lambda z: torch.sin(self.layer(z) + u), torch.zeros_like(u))
        z = z_out[-1]
        return {"rgb": torch.sigmoid(self.head(z)), "state": z}


class _DEQFunc(nn.Module):
    """The get-started ``DEQFunc``: ``f(z, x) = tanh(W z + x)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(z) + x)


class _DEQDemo(nn.Module):
    """torchdeq's get-started ``DEQDemo``: ``forward(x, z0)`` returns ``self.deq(f, z0)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        torchdeq = _torchdeq()
        self.deq_func = _DEQFunc(width)
        torchdeq.norm.apply_norm(self.deq_func)
        self.deq = _deq(b_solver="anderson", b_max_iter=30, b_tol=1e-3)

    def forward(self, x: torch.Tensor, z0: torch.Tensor):
        _torchdeq().norm.reset_norm(self.deq_func)
        return self.deq(lambda z: self.deq_func(z, x), z0)


class GetStartedModel(nn.Module):
    """The get-started pipeline: ``Injection`` → ``DEQDemo`` → ``Decoder`` (the head on z_out[-1]).

    Args:
        inputs: input size.
        width: state size.
        outputs: output size.

    Example:
        >>> import torch
        >>> GetStartedModel()(torch.zeros(2, 20)).shape
        torch.Size([2, 10])
    """

    def __init__(self, inputs: int = 20, width: int = 64, outputs: int = 10) -> None:
        super().__init__()
        self.inj = nn.Linear(inputs, width)
        self.deq = _DEQDemo(width)
        self.decoder = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs ``(B, inputs)`` → outputs ``(B, outputs)``."""
        z0 = torch.zeros(x.shape[0], self.decoder.in_features, device=x.device, dtype=x.dtype)
        z_out, _ = self.deq(self.inj(x), z0)
        return self.decoder(z_out[-1])


class TupleStateDEQ(nn.Module):
    """Two coupled equilibria ``(a, b)``: ``f`` takes and returns a tuple (get-started style).

    Example:
        >>> import torch
        >>> TupleStateDEQ()(torch.zeros(2, 12)).shape
        torch.Size([2, 8])
    """

    def __init__(self, inputs: int = 12, width: int = 32, outputs: int = 8) -> None:
        super().__init__()
        torchdeq = _torchdeq()
        self.inj_a = nn.Linear(inputs, width)
        self.inj_b = nn.Linear(inputs, width)
        self.aa, self.ab = nn.Linear(width, width), nn.Linear(width, width, bias=False)
        self.ba, self.bb = nn.Linear(width, width, bias=False), nn.Linear(width, width)
        self.head = nn.Linear(2 * width, outputs)
        for layer in (self.aa, self.ab, self.ba, self.bb):
            torchdeq.norm.apply_norm(layer, norm_type="weight_norm")
        self.deq = _deq(b_solver="anderson", b_max_iter=30, b_tol=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs ``(B, inputs)`` → outputs ``(B, outputs)``."""
        torchdeq = _torchdeq()
        for layer in (self.aa, self.ab, self.ba, self.bb):
            torchdeq.norm.reset_norm(layer)
        u_a, u_b = self.inj_a(x), self.inj_b(x)

        def f(a: torch.Tensor, b: torch.Tensor):
            return (
                torch.tanh(0.5 * self.aa(a) + 0.5 * self.ab(b) + u_a),
                torch.tanh(0.5 * self.ba(a) + 0.5 * self.bb(b) + u_b),
            )

        z_out, _ = self.deq(f, (torch.zeros_like(u_a), torch.zeros_like(u_b)))
        a, b = z_out[-1]
        return self.head(torch.cat([a, b], dim=1))


class DocumentationDecoder(nn.Module):
    """A latent decoder in torchdeq's documentation style: weight norm, 16-d latent.

    Example:
        >>> import torch
        >>> DocumentationDecoder()(torch.zeros(2, 16)).shape
        torch.Size([2, 64])
    """

    def __init__(self, latent: int = 16, width: int = 64, outputs: int = 64) -> None:
        super().__init__()
        torchdeq = _torchdeq()
        self.inject = nn.Linear(latent, width)
        self.layer = nn.Linear(width, width)
        self.head = nn.Linear(width, outputs)
        torchdeq.norm.apply_norm(self.layer, norm_type="weight_norm")
        self.deq = _deq(b_solver="anderson", b_max_iter=30, b_tol=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, latent)`` → outputs ``(B, outputs)``."""
        _torchdeq().norm.reset_norm(self.layer)
        u = self.inject(x)
        z_out, _ = self.deq(lambda z: torch.tanh(self.layer(z) + u), torch.zeros_like(u))
        return self.head(z_out[-1])


def _build(factory: Callable[[], nn.Module], shape: Callable[[int], tuple[int, ...]], scale):
    def make(batch: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
        torch.manual_seed(seed)
        model = factory()
        model.requires_grad_(False)
        return model, scale * torch.randn(*shape(batch))

    return make


# name -> make(batch, seed) -> (model with frozen parameters, a true input x of that batch)
ZOO_MODELS: dict[str, Callable[..., tuple[nn.Module, torch.Tensor]]] = {
    "mdeq": _build(MultiResolutionDEQ, lambda b: (b, 1, 12, 12), 0.5),
    "deq-inr": _build(ImplicitRepresentation, lambda b: (b, 2), 1.0),
    "get-started": _build(GetStartedModel, lambda b: (b, 20), 1.0),
    "tuple-state": _build(TupleStateDEQ, lambda b: (b, 12), 1.0),
    "doc-decoder": _build(DocumentationDecoder, lambda b: (b, 16), 1.0),
}
