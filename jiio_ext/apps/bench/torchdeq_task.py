"""``jiio bench torchdeq``: latent inversion through a torchdeq multi-scale DEQ decoder.

JIIO runs through the torchdeq adapter (``model.optimize_input``); the baseline is what a
torchdeq user writes today: Adam on the latent through ``model(x)`` with torchdeq's Anderson
forward solver and IFT backward, the forward warm-started from the previous step's fixed point
(torchdeq's backward always starts from zero). Compared at equal objective, measured at a tight
fixed point.

Example:
    >>> import torch
    >>> from jiio_ext.apps.bench.torchdeq_task import MultiScaleDecoder
    >>> MultiScaleDecoder()(torch.zeros(2, 16)).shape
    torch.Size([2, 1, 16, 16])
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

from jiio_ext.apps.bench.models import scale_spectral_norm_

__all__ = ["MultiScaleDecoder", "bench_torchdeq"]


def _torchdeq():
    try:
        import torchdeq
    except ImportError as err:
        raise ImportError(
            "jiio bench torchdeq needs torchdeq: pip install 'jiio-ext[deq]'"
        ) from err
    return torchdeq


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


def _true_objective(model: MultiScaleDecoder, x: torch.Tensor, objective) -> float:
    """Objective at a tight fixed point (torchdeq's DEQ swapped for a tight one, no grad)."""
    torchdeq = _torchdeq()
    loose, warm = model.deq, model.warm_start
    model.deq = torchdeq.get_deq(f_solver="anderson", f_max_iter=200, f_tol=1e-6)
    model.warm_start = False
    try:
        with torch.no_grad():
            return float(objective(model(x), x).mean())
    finally:
        model.deq, model.warm_start = loose, warm


def bench_torchdeq(device: torch.device, *, quick: bool = False, dtype=torch.float32) -> dict:
    """JIIO through the adapter vs Adam through a torchdeq model, at equal objective.

    Example:
        >>> import inspect
        >>> # a run takes seconds even with quick=True, e.g.
        >>> # bench_torchdeq(torch.device("cpu"), quick=True)["speedup_time"]
        >>> list(inspect.signature(bench_torchdeq).parameters)
        ['device', 'quick', 'dtype']
    """
    from jiio_ext.adapters.torchdeq import input_optimizable
    from jiio_ext.apps.bench.tasks import (
        IterateRecorder,
        PeakMemory,
        _side,
        _sync,
        default_options_side,
        first_reaching,
    )

    batch, steps = (8, 20) if quick else (32, 80)
    torch.manual_seed(0)
    channels = 16 if quick else 64  # 64: a typical DEQ width (docs/results.md: 16, 32, 64)
    model = MultiScaleDecoder(channels=channels).to(device=device, dtype=dtype)
    model.requires_grad_(False)
    latents = torch.randn(batch, 16, device=device, dtype=dtype)
    targets = torch.empty(0)
    with torch.no_grad():
        loose = model.deq
        model.deq = _torchdeq().get_deq(f_solver="anderson", f_max_iter=200, f_tol=1e-6)
        targets = model(latents)
        model.deq = loose

    def objective(image: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (image - targets).pow(2).flatten(1).mean(1)

    x0 = torch.zeros(batch, 16, device=device, dtype=dtype)
    lr = 0.1  # best final objective among 0.05, 0.1, 0.3 at 40 and 80 steps (docs/results.md)

    # baseline: Adam through model(x), torchdeq's Anderson forward (warm-started) + IFT backward
    model.warm_start = True
    model._last = None
    x = x0.clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=lr)
    forward_evals = 0
    _sync(device)
    with PeakMemory(device) as mem_base:
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            loss = objective(model(x), x).sum()
            forward_evals += int(model.last_info["nstep"].max()) + 1
            loss.backward()
            opt.step()
        _sync(device)
        base_time = time.perf_counter() - start
    model.warm_start = False
    base_objective = _true_objective(model, x.detach(), objective)

    decorated = input_optimizable(model)
    record = IterateRecorder(x0, device)
    max_iter = 60 if quick else 300
    _sync(device)
    with PeakMemory(device) as mem_jiio:
        begin = time.perf_counter()
        record.start()
        solution = decorated.optimize_input(
            x0,
            objective,
            step_size=10.0,
            max_iter=max_iter,
            rtol=1e-5,
            atol=0.0,
            callback=record,
        )
        _sync(device)
        jiio_total = time.perf_counter() - begin
    reach = first_reaching(
        lambda x: _true_objective(model, x, objective), record.snapshots, base_objective
    )
    reach_time = record.stamps[reach] if reach is not None else jiio_total
    reached_objective = _true_objective(
        model, record.snapshots[reach] if reach is not None else solution.x, objective
    )
    return {
        "task": "torchdeq",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": batch,
        "channels": channels,
        "baseline": _side(
            f"Adam lr={lr}, {steps} steps through model(x): torchdeq anderson forward "
            "(warm-started, tol 1e-3) + IFT backward (f_evals: forward only)",
            base_time,
            forward_evals,
            base_objective,
            mem_base,
        ),
        "jiio": {
            **_side(
                "model.optimize_input (torchdeq adapter), Anderson type II, step 10",
                reach_time,
                (reach + 1) if reach is not None else solution.f_evals,
                reached_objective,
                mem_jiio,
            ),
            "reached_baseline": reach is not None,
            "full_run": {
                "time_s": round(jiio_total, 4),
                "iterations": solution.f_evals,
                "objective": _true_objective(model, solution.x, objective),
            },
        },
        "speedup_time": round(base_time / reach_time, 2),
        "speedup_evals": None,
        "jiio_default": default_options_side(
            lambda callback: decorated.optimize_input(
                x0, objective, max_iter=max_iter, callback=callback
            ),
            lambda x: _true_objective(model, x, objective),
            x0,
            device,
            base_objective,
            base_time,
        ),
    }
