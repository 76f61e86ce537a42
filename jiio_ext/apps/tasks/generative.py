"""``jiio train generative`` and ``jiio train inverse``: DEQ decoders with inferred latents.

A decoder-only multi-scale torchdeq DEQ (:func:`~jiio_ext.apps.tasks.latent.build_decoder`) maps a
per-image latent to an image. Every training step infers the batch's latents from its
measurements (the clean images for ``problem="reconstruct"``, degraded images from
:mod:`jiio_ext.adapters.kornia` otherwise), then updates the decoder on the outer loss:

* ``method="jiio"``: latents from one joint fixed point
  (:func:`~jiio_ext.apps.tasks.latent.infer_jiio`);
  θ-gradient ``grad="envelope"`` (exact for reconstruction, where outer = inner loss) or
  ``hypergrad="implicit"`` (exact hypergradient through ``x*(θ)``, for inverse problems whose
  outer loss is the clean-image MSE); optional trajectory Jacobian regularisation.
* ``method="nested"``: latents from Adam through the DEQ
  (:func:`~jiio_ext.apps.tasks.latent.infer_nested`), then a training forward at ``x*``.
* ``method="vae"``: an encoder (input: the measurement, upsampled/filled to full size) and the
  same decoder, trained on the ELBO (Gaussian likelihood, KL to N(0, I)).

Test quality is PSNR/SSIM against the clean held-out images. The decoders of ``jiio`` and
``nested`` are measured with the same inference (``eval_inference``: JIIO with ``eval_iters``
iterations by default, or the nested Adam loop), so the numbers compare decoders rather than
inference budgets; the VAE uses its encoder's mean, as a VAE does.
After training, latents of the training set (or the VAE prior) feed a Gaussian mixture from
which samples are decoded (the paper's two-stage sampling).

Each run writes ``log.json``, ``checkpoint.pt`` (every epoch; ``resume=True`` continues),
``reconstructions.png`` (targets, measurements, reconstructions), ``curves.png``,
``residuals.png`` (JIIO residual traces of the last batch) and ``samples.png``.

Example:
    >>> import tempfile
    >>> from jiio_ext.apps.tasks.generative import train_generative
    >>> log = train_generative(epochs=1, train_size=16, eval_size=8, batch_size=8,
    ...                        inner_iters=3, eval_iters=3, out=tempfile.mkdtemp(),
    ...                        progress=False, sample=False)
    >>> sorted(log["epochs"][0])[4:]
    ['test_psnr', 'test_reconstruction_time_s', 'test_ssim', 'train_loss']
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jiio_ext.apps import train_options
from jiio_ext.apps.data import DATASETS, load_images
from jiio_ext.apps.distributed import DistContext, init_from_env
from jiio_ext.apps.runlog import log_header, write_json
from jiio_ext.apps.tasks.generative_figures import save_figures, save_samples
from jiio_ext.apps.tasks.latent import (
    Encoder,
    build_decoder,
    infer_jiio,
    infer_nested,
    latent_objective,
)
from jiio_ext.apps.tasks.training import LOG, open_run, save_epoch
from jiio_ext.regularize import random_trajectory_iteration

__all__ = ["METHODS", "PROBLEMS", "make_problem", "reconstruct", "train_generative"]

# Training methods: joint JIIO inference, the nested (Adam) inner loop, a VAE baseline
# (defined with the CLI's options).
METHODS = train_options.GENERATIVE_METHODS
# Problems: plain reconstruction or an inverse problem of jiio_ext.adapters.kornia.
PROBLEMS = train_options.PROBLEMS


def make_problem(problem: str, image_size: int, **options: Any):
    """The degradation operator of a problem (``'reconstruct'``: noiseless identity).

    Args:
        problem: one of :data:`PROBLEMS`.
        image_size: image side.
        **options: options of :func:`jiio_ext.adapters.kornia.make_degradation`.

    Returns:
        A :class:`jiio_ext.adapters.kornia.Degradation`.

    Raises:
        ValueError: unknown problem or bad options.

    Example:
        >>> make_problem("denoise", 16, sigma=0.2).name
        'denoise'
    """
    from jiio_ext.adapters.kornia import make_degradation

    if problem not in PROBLEMS:
        raise ValueError(f"problem: unknown problem {problem!r}; expected one of {PROBLEMS}")
    if problem == "reconstruct":
        return make_degradation("denoise", image_size, sigma=0.0)
    return make_degradation(problem, image_size, **options)


def _objective(operator, measurement, latent_reg: float):
    targets = measurement.targets()
    return latent_objective(lambda image: operator.consistency(image, *targets), latent_reg)


def reconstruct(
    method: str,
    decoder: nn.Module,
    operator,
    measurement,
    *,
    latent_dim: int,
    iters: int,
    lr: float,
    latent_reg: float,
    encoder: nn.Module | None = None,
) -> torch.Tensor:
    """Reconstructed images from measurements, by a method's own inference (no gradients).

    Args:
        method: ``'jiio'``, ``'nested'`` or ``'vae'`` (encoder mean, then the decoder).
        decoder: the decoder.
        operator: the degradation operator.
        measurement: its measurement of the clean images.
        latent_dim: size of the latent.
        iters: JIIO iterations or nested Adam steps.
        lr: the nested baseline's Adam learning rate.
        latent_reg: weight of the latent prior term.
        encoder: the VAE's encoder (``method='vae'``).

    Returns:
        Images ``(B, C, H, W)`` in ``[0, 1]``.

    Example:
        >>> import torch
        >>> from jiio_ext.apps.tasks.latent import build_decoder
        >>> op = make_problem("reconstruct", 8)
        >>> images = torch.rand(2, 1, 8, 8)
        >>> reconstruct("jiio", build_decoder(4, 8, 8), op, op.measure(images, seed=0),
        ...             latent_dim=4, iters=3, lr=0.1, latent_reg=1e-3).shape
        torch.Size([2, 1, 8, 8])
    """
    observed = measurement.observed
    x0 = observed.new_zeros(observed.shape[0], latent_dim)
    objective = _objective(operator, measurement, latent_reg)
    if method == "jiio":
        with torch.no_grad():
            return infer_jiio(decoder, objective, x0, max_iter=iters).output.detach()
    if method == "nested":
        x = infer_nested(decoder, objective, x0, steps=iters, lr=lr).x
    elif method == "vae":
        if encoder is None:
            raise ValueError("encoder: method='vae' needs the VAE's encoder")
        with torch.no_grad():
            x = encoder(operator.naive_inverse(measurement))[0]
    else:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    with torch.no_grad():
        return decoder(x).detach()


def _check(method: str, problem: str, hypergrad: str, options: dict[str, Any]) -> None:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if problem not in PROBLEMS:
        raise ValueError(f"problem: unknown problem {problem!r}; expected one of {PROBLEMS}")
    if hypergrad not in ("envelope", "implicit"):
        raise ValueError(f"hypergrad: expected 'envelope' or 'implicit', got {hypergrad!r}")
    for name in ("epochs", "batch_size", "inner_iters", "eval_iters", "latent_dim", "channels"):
        value = options[name]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    for name in ("lr", "inner_lr"):
        if not options[name] > 0:
            raise ValueError(f"{name}: expected a positive number, got {options[name]!r}")
    if not options["deq_tol"] > 0:
        raise ValueError(f"deq_tol: expected a positive tolerance, got {options['deq_tol']!r}")
    for name in ("latent_reg", "jac_reg", "kl_weight"):
        if not options[name] >= 0:
            raise ValueError(f"{name}: expected a number ≥ 0, got {options[name]!r}")


def _batch_seed(seed: int, epoch: int, batch: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + batch) % (2**31)


class _TrainingStep(nn.Module):
    """One training forward: infer the latents of the given samples, return per-sample losses.

    This module is what :meth:`~jiio_ext.apps.distributed.DistContext.wrap` puts under
    DistributedDataParallel: the joint solves (or nested inner loops) run on the bare decoder
    inside this one forward, so DDP sees one forward per step and all-reduces every
    parameter gradient of the outer loss, whichever path produced it.
    """

    def __init__(
        self, decoder: nn.Module, encoder: nn.Module | None, operator, settings: dict[str, Any]
    ) -> None:
        super().__init__()
        self.decoder, self.encoder = decoder, encoder
        self.operator, self.settings = operator, settings
        self.last_traces: dict[str, list[float]] = {}

    def forward(
        self, clean: torch.Tensor, measurement, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Per-sample outer losses ``(b,)``, the inferred latents and solver statistics."""
        s = self.settings
        objective = _objective(self.operator, measurement, s["latent_reg"])
        x0 = clean.new_zeros(clean.shape[0], s["latent_dim"])
        stats: dict[str, float] = {}
        penalty = clean.new_zeros(clean.shape[0])
        if s["method"] == "jiio":
            trajectory = [random_trajectory_iteration(s["inner_iters"])] if s["jac_reg"] else []
            grad = s["hypergrad"] if s["problem"] != "reconstruct" else "envelope"
            solution = infer_jiio(
                self.decoder,
                objective,
                x0,
                max_iter=s["inner_iters"],
                grad=grad,
                trajectory=trajectory,
            )
            image, x_star = solution.output, solution.x.detach()
            if trajectory:
                from jiio_ext.adapters.torchdeq import trajectory_penalty

                penalty = s["jac_reg"] * trajectory_penalty(solution)
            stats["residual"] = float(solution.residuals["z"].mean())
            stats["iterations"] = float(solution.nstep.float().mean())
            self.last_traces = {
                key: trace.mean(1).tolist() for key, trace in solution.traces.items()
            }
        elif s["method"] == "nested":
            result = infer_nested(
                self.decoder, objective, x0, steps=s["inner_iters"], lr=s["inner_lr"]
            )
            x_star = result.x
            image = self.decoder(x_star)
            stats["iterations"] = float(result.forward_iterations)
        else:
            mean, log_var = self.encoder(self.operator.naive_inverse(measurement))
            image = self.decoder(mean + noise * (0.5 * log_var).exp())
            kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(1)
            penalty = s["kl_weight"] * kl / clean[0].numel()
            x_star = mean.detach()
        reconstruction = (image - clean).pow(2).flatten(1).mean(1)
        stats["loss"] = float(reconstruction.detach().mean())
        return reconstruction + penalty, x_star, stats


class _Run:
    """State of one training run: models, optimiser, data, log; checkpointed every epoch."""

    def __init__(self, settings: dict[str, Any], device: torch.device) -> None:
        self.settings = settings
        self.device = device
        train_x, _, test_x, _ = load_images(
            settings["data"],
            settings["data_dir"],
            settings["image_size"],
            device,
            train_size=settings["train_size"],
            test_size=settings["eval_size"],
        )
        self.train_x, self.test_x = train_x, test_x
        size, channels = train_x.shape[-1], train_x.shape[1]
        self.operator = make_problem(settings["problem"], size, **settings["problem_options"])
        self.decoder = build_decoder(
            settings["latent_dim"],
            settings["channels"],
            size,
            channels,
            settings["seed"],
            settings["deq_tol"],
        ).to(device)
        parameters = list(self.decoder.parameters())
        self.encoder = None
        if settings["method"] == "vae":
            self.encoder = Encoder(settings["latent_dim"], size, channels).to(device)
            parameters += list(self.encoder.parameters())
        self.optimiser = torch.optim.Adam(parameters, lr=settings["lr"])
        self.latents = torch.zeros(train_x.shape[0], settings["latent_dim"], device=device)
        self.updated = torch.zeros(train_x.shape[0], dtype=torch.bool, device=device)
        self.module = _TrainingStep(self.decoder, self.encoder, self.operator, settings)
        self.training_step: nn.Module = self.module
        task = "generative" if settings.get("problem") == "reconstruct" else "inverse"
        self.log: dict[str, Any] = {**log_header(task, settings), "epochs": []}
        self.epoch = 0

    def resumable_settings(self) -> dict[str, Any]:
        """The settings a resume must match (all but ``epochs``)."""
        return {k: v for k, v in self.settings.items() if k != "epochs"}

    def state(self) -> dict[str, Any]:
        return {
            "settings": self.resumable_settings(),
            "decoder": self.decoder.state_dict(),
            "encoder": None if self.encoder is None else self.encoder.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "latents": self.latents,
            "log": self.log,
            "epoch": self.epoch,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.decoder.load_state_dict(state["decoder"])
        if self.encoder is not None:
            self.encoder.load_state_dict(state["encoder"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.latents = state["latents"].to(self.device)
        self.log, self.epoch = state["log"], state["epoch"]
        self.log["settings"] = self.settings

    def step(self, index: torch.Tensor, seed: int, ctx: DistContext) -> dict[str, float]:
        """One training step on the global batch ``index``; this rank solves its own part."""
        torch.manual_seed(seed)  # Hutchinson probes: the same draws after a resume
        random.seed(seed)  # the trajectory iteration of the Jacobian penalty
        clean = self.train_x[index]
        measurement = self.operator.measure(clean, seed=seed)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(clean.shape[0], self.settings["latent_dim"], generator=generator)
        rows = ctx.shard(index.shape[0])
        losses, x_star, stats = self.training_step(
            clean[rows], measurement.index_select(rows), noise.to(clean)[rows]
        )
        self.optimiser.zero_grad()
        ctx.global_mean(losses, index.shape[0]).backward()
        self.optimiser.step()
        self.latents[index[rows]] = x_star
        self.updated[index[rows]] = True
        return stats

    def sync_latents(self, ctx: DistContext) -> None:
        """Every rank's latents of this epoch on every rank (each row came from one rank)."""
        if not ctx.is_distributed:
            return
        mine = self.updated.unsqueeze(1).to(self.latents.dtype)
        values = ctx.all_reduce_sum(self.latents * mine)
        counts = ctx.all_reduce_sum(mine)
        self.latents = torch.where(counts > 0, values / counts.clamp_min(1), self.latents)
        self.updated.zero_()

    def evaluate(self, ctx: DistContext) -> dict[str, Any]:
        """Test PSNR/SSIM of the method's own inference; each rank takes part of the test set."""
        from jiio_ext.adapters.kornia import psnr, ssim

        s = self.settings
        rows = ctx.shard(self.test_x.shape[0])
        clean = self.test_x[rows]
        measurement = self.operator.measure(self.test_x, seed=s["seed"] + 12_345)
        measurement = measurement.index_select(rows)
        start = time.perf_counter()
        images = reconstruct(
            "vae" if s["method"] == "vae" else s["eval_inference"],
            self.decoder,
            self.operator,
            measurement,
            latent_dim=s["latent_dim"],
            iters=s["eval_iters"],
            lr=s["inner_lr"],
            latent_reg=s["latent_reg"],
            encoder=self.encoder,
        )
        elapsed = time.perf_counter() - start
        naive = self.operator.naive_inverse(measurement)
        sums = ctx.all_reduce_sum(
            {
                "test_psnr": float(psnr(images, clean).sum()),
                "test_ssim": float(ssim(images, clean).sum()),
                "measurement_psnr": float(psnr(naive, clean).sum()),
                "count": float(clean.shape[0]),
            }
        )
        count = sums.pop("count")
        self.eval_images = (clean, measurement, images)
        return {
            **{key: value / count for key, value in sums.items()},
            "test_reconstruction_time_s": elapsed,
        }


def train_generative(
    *,
    problem: str = "reconstruct",
    method: str = "jiio",
    data: str = "digits",
    data_dir: str | None = None,
    image_size: int = 16,
    latent_dim: int = 16,
    channels: int = 16,
    epochs: int = 5,
    batch_size: int = 64,
    train_size: int | None = None,
    eval_size: int | None = 128,
    inner_iters: int = 40,
    eval_iters: int = 100,
    eval_inference: str = "jiio",
    inner_lr: float = 0.3,
    lr: float = 2e-3,
    latent_reg: float = 1e-3,
    hypergrad: str = "envelope",
    jac_reg: float = 0.0,
    kl_weight: float = 1.0,
    deq_tol: float = 1e-3,
    problem_options: dict[str, Any] | None = None,
    seed: int = 0,
    out: str | Path = "jiio-runs/generative",
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    sample: bool = True,
) -> dict[str, Any]:
    """Train a DEQ decoder whose latents are inferred in the loop (see the module docstring).

    Args:
        problem: ``'reconstruct'`` (generative) or an inverse problem of :data:`PROBLEMS`.
        method: ``'jiio'``, ``'nested'`` or ``'vae'``.
        data: one of :data:`~jiio_ext.apps.data.DATASETS`.
        data_dir: torchvision data folder (all sets but ``digits``).
        image_size: image side (a multiple of 4; digits are upsampled from 8).
        latent_dim: size of the latent.
        channels: channels of the DEQ state.
        epochs: training epochs (in total, counting resumed ones).
        batch_size: images per step (the last incomplete batch is dropped).
        train_size: first training images used (default: all).
        eval_size: test images evaluated each epoch.
        inner_iters: JIIO iterations or nested Adam steps per training step.
        eval_iters: JIIO iterations or nested Adam steps of the test-time inference.
        eval_inference: test-time inference of the ``jiio`` and ``nested`` decoders:
            ``'jiio'`` or ``'nested'`` (the same for both, so PSNRs compare decoders).
        inner_lr: the nested baseline's Adam learning rate on the latents.
        lr: Adam's learning rate on the model.
        latent_reg: weight of ``mean(x²)`` in the inner objective.
        hypergrad: JIIO's θ-gradient on inverse problems: ``'envelope'`` or ``'implicit'``.
        jac_reg: weight of the trajectory Jacobian penalty (JIIO).
        kl_weight: the VAE's KL weight.
        deq_tol: tolerance of the decoder's own forward and backward solves (torchdeq).
        problem_options: options of the degradation (``sigma``, ``factor``, ...).
        seed: seed of the initialisation, the data order and the measurements.
        out: run folder.
        resume: continue from ``out/checkpoint.pt`` (written with the same settings but
            ``epochs``).
        overwrite: let a new run replace the run already in ``out`` (else refused).
        device: torch device.
        progress: show a tqdm bar.
        sample: fit the latent density model and save ``samples.png`` at the end.

    Returns:
        The log (also in ``out/log.json``): settings, per-epoch ``train_loss``, ``test_psnr``,
        ``test_ssim``, ``epoch_time_s``, ``inner_iterations``, and ``samples``.

    Raises:
        ValueError: bad arguments, resuming with other settings (the message lists them) or
            without a checkpoint, or a new run into a folder that holds one.

    Example:
        >>> import tempfile
        >>> log = train_generative(problem="denoise", problem_options={"sigma": 0.2},
        ...                        epochs=1, train_size=8, eval_size=4, batch_size=4,
        ...                        inner_iters=2, out=tempfile.mkdtemp(), progress=False,
        ...                        sample=False)
        >>> log["epochs"][0]["epoch"]
        1
    """
    if eval_inference not in ("jiio", "nested"):
        raise ValueError(f"eval_inference: expected 'jiio' or 'nested', got {eval_inference!r}")
    settings = {
        "problem": problem,
        "method": method,
        "data": data,
        "data_dir": data_dir,
        "image_size": image_size,
        "latent_dim": latent_dim,
        "channels": channels,
        "epochs": epochs,
        "batch_size": batch_size,
        "train_size": train_size,
        "eval_size": eval_size,
        "inner_iters": inner_iters,
        "eval_iters": eval_iters,
        "eval_inference": eval_inference,
        "inner_lr": inner_lr,
        "lr": lr,
        "latent_reg": latent_reg,
        "hypergrad": hypergrad,
        "jac_reg": jac_reg,
        "kl_weight": kl_weight,
        "deq_tol": deq_tol,
        "problem_options": dict(problem_options or {}),
        "seed": seed,
    }
    _check(method, problem, hypergrad, settings)
    if data not in DATASETS:
        raise ValueError(f"data: unknown data set {data!r}; expected one of {DATASETS}")
    ctx = init_from_env(device)
    try:
        ctx.check_batch_size(batch_size)
        return _train(settings, ctx, Path(out), resume, overwrite, progress, sample)
    finally:
        ctx.close()


def _train(
    settings: dict[str, Any],
    ctx: DistContext,
    folder: Path,
    resume: bool,
    overwrite: bool,
    progress: bool,
    sample: bool,
) -> dict[str, Any]:
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    run = _Run(settings, ctx.device)
    if run.test_x.shape[0] < ctx.world_size:
        raise ValueError(
            f"eval_size: {run.test_x.shape[0]} test images for {ctx.world_size} processes; "
            "every process needs at least one"
        )
    state = open_run(ctx, folder, run.resumable_settings(), resume=resume, overwrite=overwrite)
    if state is not None:
        run.load(state)
    run.training_step = ctx.wrap(run.module)
    seed, epochs, batch_size = settings["seed"], settings["epochs"], settings["batch_size"]
    size = run.train_x.shape[0]
    steps_per_epoch = size // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size: {batch_size} is larger than the training set ({size})")
    bar = None
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=(epochs - run.epoch) * steps_per_epoch,
            desc=f"{settings['method']} {settings['problem']}",
        )
    for epoch in range(run.epoch, epochs):
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 7 + epoch))
        order = order.to(ctx.device)
        totals = {"loss": 0.0, "iterations": 0.0}
        start = time.perf_counter()
        for batch in range(steps_per_epoch):
            index = order[batch * batch_size : (batch + 1) * batch_size]
            stats = run.step(index, _batch_seed(seed, epoch, batch), ctx)
            for key in totals:
                totals[key] += stats.get(key, 0.0)
            reduced = ctx.all_reduce_mean({key: stats.get(key, 0.0) for key in totals})
            run.log.setdefault("training_steps", []).append(
                {
                    "step": len(run.log["training_steps"]) + 1,
                    "epoch": epoch + 1,
                    "train_loss": reduced["loss"],
                    "inner_iterations": reduced["iterations"],
                }
            )
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()}, refresh=False)
        epoch_time = time.perf_counter() - start
        run.sync_latents(ctx)
        totals = ctx.all_reduce_mean(totals)
        run.epoch = epoch + 1
        entry = {
            "epoch": run.epoch,
            "train_loss": totals["loss"] / steps_per_epoch,
            "inner_iterations": totals["iterations"] / steps_per_epoch,
            "epoch_time_s": epoch_time,
            **run.evaluate(ctx),
        }
        run.log["epochs"].append(entry)
        save_epoch(ctx, folder, run.state(), run.log)
        if ctx.is_main:
            save_figures(run, folder)
    if bar is not None:
        bar.close()
    run.training_step = run.module  # drop the DDP wrapper before the group can go
    if sample and run.epoch > 0 and ctx.is_main:
        run.log["samples"] = save_samples(run, folder)
        write_json(folder / LOG, run.log)
    return run.log
