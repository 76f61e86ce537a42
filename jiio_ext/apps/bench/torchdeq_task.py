"""``jiio bench torchdeq``: latent inversion through a torchdeq multi-scale DEQ decoder.

JIIO runs through the torchdeq adapter (``model.optimize_input``); the baseline is what a
torchdeq user writes today: Adam on the latent through ``model(x)`` with torchdeq's Anderson
forward solver and IFT backward, the forward warm-started from the previous step's fixed point
(torchdeq's backward always starts from zero). Compared at equal objective, measured at a tight
fixed point.

The model is :class:`~jiio_ext.apps.models.MultiScaleDecoder`.

Example:
    >>> import torch
    >>> from jiio_ext.apps.models import MultiScaleDecoder
    >>> MultiScaleDecoder()(torch.zeros(2, 16)).shape
    torch.Size([2, 1, 16, 16])
"""

from __future__ import annotations

import time

import torch

from jiio_ext.apps.bench.measure import (
    IterateRecorder,
    PeakMemory,
    default_options_side,
    first_reaching,
    side_report,
    synchronize,
)
from jiio_ext.apps.models import MultiScaleDecoder

__all__ = ["bench_torchdeq"]


def _torchdeq():
    try:
        import torchdeq
    except ImportError as err:
        raise ImportError(
            "jiio bench torchdeq needs torchdeq: pip install 'jiio-ext[deq]'"
        ) from err
    return torchdeq


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
    synchronize(device)
    with PeakMemory(device) as mem_base:
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            loss = objective(model(x), x).sum()
            forward_evals += int(model.last_info["nstep"].max()) + 1
            loss.backward()
            opt.step()
        synchronize(device)
        base_time = time.perf_counter() - start
    model.warm_start = False
    base_objective = _true_objective(model, x.detach(), objective)

    decorated = input_optimizable(model)
    record = IterateRecorder(x0, device)
    max_iter = 60 if quick else 300
    synchronize(device)
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
        synchronize(device)
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
        "baseline": side_report(
            f"Adam lr={lr}, {steps} steps through model(x): torchdeq anderson forward "
            "(warm-started, tol 1e-3) + IFT backward (f_evals: forward only)",
            base_time,
            forward_evals,
            base_objective,
            mem_base,
        ),
        "jiio": {
            **side_report(
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
