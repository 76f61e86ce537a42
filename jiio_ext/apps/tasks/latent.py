"""Latent inference in a DEQ decoder: the models, JIIO inference and the nested baseline.

Used by ``jiio train generative`` / ``jiio train inverse`` and ``jiio bench inverse``. The
decoder is a torchdeq multi-scale DEQ
(:class:`~jiio_ext.apps.models.MultiScaleDecoder`, 'jiio' core, sigmoid output)
decorated with
:func:`~jiio_ext.adapters.torchdeq.input_optimizable`. A latent ``x`` explains a measurement
when it minimises ``consistency(decoder(x), measurement) + latent_reg · mean(x²)``:

* :func:`infer_jiio` solves that with one joint fixed point (``model.optimize_input``);
* :func:`infer_nested` is what a torchdeq user writes today: Adam on ``x`` through
  ``model(x)``, each step a full forward solve (torchdeq's Anderson, warm-started from the
  previous step's fixed point) and a full implicit backward solve.

Example:
    >>> import torch
    >>> from jiio_ext.apps.tasks.latent import build_decoder, infer_jiio
    >>> decoder = build_decoder(latent_dim=8, channels=8, image_size=8)
    >>> target = torch.rand(2, 1, 8, 8)
    >>> objective = lambda image, x: (image - target).pow(2).flatten(1).mean(1)
    >>> infer_jiio(decoder, objective, torch.zeros(2, 8), max_iter=5).x.shape
    torch.Size([2, 8])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from jiio_ext.solution import JointSolution

__all__ = [
    "Encoder",
    "NestedResult",
    "build_decoder",
    "infer_jiio",
    "infer_nested",
    "latent_objective",
]

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_decoder(
    latent_dim: int = 16,
    channels: int = 16,
    image_size: int = 16,
    image_channels: int = 1,
    seed: int = 0,
    deq_tol: float = 1e-3,
) -> nn.Module:
    """A decoder-only multi-scale torchdeq DEQ, input-optimisable, pixels in ``[0, 1]``.

    Forward: torchdeq's Anderson (tolerance ``deq_tol``, at most 30 iterations, or 100 when
    ``deq_tol < 1e-4``); backward: implicit (IFT) with Anderson to the same tolerance,
    warm-startable from a joint adjoint (``'jiio'`` core: see
    :func:`~jiio_ext.adapters.torchdeq.adjoint_warm_start`).

    Args:
        latent_dim: size of the latent.
        channels: channels of the DEQ state at both resolutions.
        image_size: image side (a multiple of 4).
        image_channels: 1 (grey) or 3 (RGB).
        seed: initialisation seed.
        deq_tol: tolerance of the DEQ's forward and backward solves.

    Returns:
        The decoder (``decoder(x) -> (B, image_channels, image_size, image_size)``).

    Example:
        >>> import torch
        >>> build_decoder(latent_dim=4, channels=8, image_size=8)(torch.zeros(3, 4)).shape
        torch.Size([3, 1, 8, 8])
    """
    import jiio_ext.adapters.torchdeq as adapter  # registers the 'jiio' core
    from jiio_ext.apps.models import MultiScaleDecoder

    torch.manual_seed(seed)
    decoder = MultiScaleDecoder(
        latent_dim=latent_dim,
        channels=channels,
        size=image_size,
        out_channels=image_channels,
        squash=True,
        core="jiio",
        f_tol=deq_tol,
        b_tol=deq_tol,
        f_max_iter=30 if deq_tol >= 1e-4 else 100,
        b_max_iter=30 if deq_tol >= 1e-4 else 100,
    )
    return adapter.input_optimizable(decoder)


class Encoder(nn.Module):
    """The VAE baseline's encoder: image → Gaussian posterior ``(mean, log_variance)``.

    Args:
        latent_dim: size of the latent.
        image_size: image side.
        image_channels: image channels.
        width: channels of the first convolution.

    Example:
        >>> import torch
        >>> mean, log_var = Encoder(4, 8)(torch.rand(2, 1, 8, 8))
        >>> mean.shape, log_var.shape
        (torch.Size([2, 4]), torch.Size([2, 4]))
    """

    def __init__(
        self, latent_dim: int, image_size: int, image_channels: int = 1, width: int = 16
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(image_channels, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        side = (image_size + 3) // 4
        self.head = nn.Linear(2 * width * side * side, 2 * latent_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each ``(B, latent_dim)``."""
        mean, log_var = self.head(self.features(image)).chunk(2, dim=1)
        return mean, log_var.clamp(-8.0, 8.0)


def latent_objective(
    consistency: Callable[[torch.Tensor], torch.Tensor], latent_reg: float
) -> Objective:
    """Per-sample inner objective ``consistency(image) + latent_reg · mean(x²)``.

    Args:
        consistency: image ``(B, ...)`` → per-sample measurement misfit ``(B,)``.
        latent_reg: weight of the latent's Gaussian prior term.

    Returns:
        ``objective(image, x) -> (B,)``.

    Example:
        >>> import torch
        >>> objective = latent_objective(lambda image: image.flatten(1).mean(1), 0.5)
        >>> objective(torch.ones(2, 1, 2, 2), torch.ones(2, 3)).tolist()
        [1.5, 1.5]
    """

    def objective(image: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return consistency(image) + latent_reg * x.pow(2).mean(1)

    return objective


def infer_jiio(
    decoder: nn.Module,
    objective: Objective,
    x0: torch.Tensor,
    *,
    max_iter: int = 40,
    **options,
) -> JointSolution:
    """Latents minimising ``objective(decoder(x), x)`` by one joint fixed point (JIIO).

    The library's default solve (``step_size=None``: the scale-free
    :class:`~jiio_ext.updates.Adaptive` update with the damped iteration; the best iterate
    per sample) over a fixed budget: ``rtol=atol=0`` unless given, so that every batch costs
    ``max_iter`` iterations (the adaptive rate's cosine decay spans its first 80, or all of
    them when the budget is shorter). The tuned
    schedule used before, ``step_size=StepSwitch(3.0, 1.0), solver=Anderson(memory=5,
    kind="II")``, is an explicit option (docs/solver-options.md has both measured).

    Args:
        decoder: an input-optimisable decoder (:func:`build_decoder`).
        objective: per-sample ``objective(image, x) -> (B,)``.
        x0: initial latents ``(B, latent_dim)``.
        max_iter: joint iterations.
        **options: other :func:`jiio_ext.solve_joint` options (``step_size``, ``solver``,
            ``grad``, ``trajectory``, ``callback``, ``progress``...).

    Returns:
        The joint solution; ``solution.output`` is the decoded image at ``x*``.

    Example:
        >>> import torch
        >>> decoder = build_decoder(latent_dim=4, channels=8, image_size=8)
        >>> sol = infer_jiio(decoder, lambda im, x: im.flatten(1).mean(1), torch.zeros(2, 4),
        ...                  max_iter=3)
        >>> sol.output.shape, sol.info["solver"]
        (torch.Size([2, 1, 8, 8]), 'damped')
    """
    options.setdefault("rtol", 0.0)
    options.setdefault("atol", 0.0)
    return decoder.optimize_input(x0, objective, max_iter=max_iter, **options)


class NestedResult:
    """Latents found by :func:`infer_nested`, with the cost of finding them.

    Attributes:
        x: the final latents (detached).
        forward_iterations: torchdeq forward-solver iterations spent, summed over steps.
        steps: Adam steps taken.

    Example:
        >>> import torch
        >>> decoder = build_decoder(latent_dim=4, channels=8, image_size=8)
        >>> result = infer_nested(decoder, lambda im, x: im.flatten(1).mean(1),
        ...                       torch.zeros(2, 4), steps=2)
        >>> isinstance(result, NestedResult), result.x.shape, result.steps
        (True, torch.Size([2, 4]), 2)
        >>> result.forward_iterations > result.steps  # each step solves the forward anew
        True
    """

    def __init__(self, x: torch.Tensor, forward_iterations: int, steps: int) -> None:
        self.x, self.forward_iterations, self.steps = x, forward_iterations, steps


def infer_nested(
    decoder: nn.Module,
    objective: Objective,
    x0: torch.Tensor,
    *,
    steps: int = 40,
    lr: float = 0.1,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> NestedResult:
    """The nested baseline: Adam on the latents through ``decoder(x)``.

    Every step runs the decoder's torchdeq forward solver, warm-started from the previous
    step's fixed point, and its implicit backward solve; the decoder's parameters receive no
    gradient.

    Args:
        decoder: the decoder (:func:`build_decoder`).
        objective: per-sample ``objective(image, x) -> (B,)``.
        x0: initial latents.
        steps: Adam steps.
        lr: Adam's learning rate.
        callback: called as ``callback(step, x)`` after every step.

    Returns:
        A :class:`NestedResult`.

    Example:
        >>> import torch
        >>> decoder = build_decoder(latent_dim=4, channels=8, image_size=8)
        >>> result = infer_nested(decoder, lambda im, x: im.flatten(1).mean(1),
        ...                       torch.zeros(2, 4), steps=2)
        >>> result.x.shape, result.steps
        (torch.Size([2, 4]), 2)
    """
    if steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, got {lr}")
    flags = [p.requires_grad for p in decoder.parameters()]
    decoder.requires_grad_(False)
    decoder.warm_start, decoder._last = True, None
    x = x0.detach().clone().requires_grad_()
    optimiser = torch.optim.Adam([x], lr=lr)
    forward_iterations = 0
    try:
        for step in range(steps):
            optimiser.zero_grad()
            with torch.enable_grad():
                loss = objective(decoder(x), x).sum()
                forward_iterations += int(decoder.last_info["nstep"].max())
                loss.backward()
            optimiser.step()
            if callback is not None:
                callback(step, x.detach())
    finally:
        decoder.warm_start, decoder._last = False, None
        for parameter, flag in zip(decoder.parameters(), flags):
            parameter.requires_grad_(flag)
    return NestedResult(x.detach(), forward_iterations, steps)
