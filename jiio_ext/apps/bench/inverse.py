"""``jiio bench inverse``: test-time reconstruction with a trained DEQ decoder, JIIO vs nested.

A decoder (:func:`~jiio_ext.apps.tasks.latent.build_decoder`) is first trained with JIIO in the loop
on the bundled digits (16×16, untimed; the same seed gives the same model). Held-out digits are
then degraded (default: one 5×5 hole per image, the paper's 20/64 inpainting) and their latents
inferred by

* the baseline, what a torchdeq user writes: Adam on the latent through ``decoder(x)`` with
  torchdeq's Anderson forward (warm-started) and implicit backward, tuned learning rate, and
* JIIO (one joint fixed point) with the library's default options (the scale-free adaptive
  input update, damped iteration) over a fixed budget, and beside it (``jiio_tuned``) the
  hand-set schedule :data:`TUNED` it used before,

and compared at equal test PSNR: JIIO's time is the wall time until its iterate first reaches
the baseline's final PSNR against the clean images (decoded at a tight fixed point, untimed).

Example:
    >>> import torch
    >>> from jiio_ext.apps.bench.inverse import psnr_of_latents
    >>> from jiio_ext.apps.tasks.latent import build_decoder
    >>> decoder = build_decoder(latent_dim=4, channels=8, image_size=8)
    >>> psnr_of_latents(decoder, torch.zeros(2, 4), torch.rand(2, 1, 8, 8)) > 0
    True
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch

from jiio_ext.apps.bench.measure import (
    IterateRecorder,
    PeakMemory,
    first_reaching,
    side_report,
    synchronize,
)
from jiio_ext.apps.checkpoints import load_checkpoint_file
from jiio_ext.schedules import StepSwitch
from jiio_ext.solvers import Anderson

__all__ = ["TUNED", "bench_inverse", "compare_reconstruction", "psnr_of_latents"]

# The hand-set test-time setting used before the adaptive default: Anderson type II with a
# step switching from 6 to 2 (reported beside the default as ``jiio_tuned``).
TUNED: dict[str, Any] = {"step_size": StepSwitch(6.0, 2.0), "solver": Anderson(memory=5, kind="II")}


def psnr_of_latents(decoder, latents: torch.Tensor, clean: torch.Tensor) -> float:
    """Mean per-image PSNR (on ``[0, 1]``) of ``decoder(latents)`` at a tight fixed point.

    Args:
        decoder: a :class:`~jiio_ext.apps.models.MultiScaleDecoder`.
        latents: ``(B, latent_dim)``.
        clean: the clean images.

    Returns:
        The mean PSNR in dB.

    Example:
        >>> import torch
        >>> from jiio_ext.apps.tasks.latent import build_decoder
        >>> d = build_decoder(latent_dim=4, channels=8, image_size=8)
        >>> isinstance(psnr_of_latents(d, torch.zeros(1, 4), torch.rand(1, 1, 8, 8)), float)
        True
    """
    from torchdeq import get_deq

    from jiio_ext.adapters.kornia import psnr

    loose = decoder.deq
    decoder.deq = get_deq(f_solver="anderson", f_max_iter=200, f_tol=1e-6)
    try:
        with torch.no_grad():
            return float(psnr(decoder(latents), clean).mean())
    finally:
        decoder.deq = loose


def _setting_name(options: dict[str, Any]) -> str:
    """How a JIIO side was run, for its report's ``name``."""
    if options.get("step_size") is None and options.get("solver") is None:
        return "JIIO with default options (no step size, no solver setting), fixed budget"
    parts = []
    for key, value in options.items():
        if isinstance(value, Anderson):
            value = f"Anderson(memory={value.memory}, kind={value.kind!r})"
        parts.append(f"{key}={value}")
    return "optimize_input (torchdeq adapter), fixed budget, " + ", ".join(parts)


def _jiio_side(
    decoder,
    objective,
    x0: torch.Tensor,
    clean: torch.Tensor,
    base: tuple[float, float],
    max_iter: int,
    options: dict[str, Any],
    trace_stride: int,
) -> tuple[dict[str, Any], list, torch.Tensor]:
    """One JIIO side timed to the baseline's PSNR: its report, its trace and scored latents."""
    from jiio_ext.apps.tasks.latent import infer_jiio

    base_psnr, base_time = base
    device = clean.device
    record = IterateRecorder(x0, device)
    synchronize(device)
    with PeakMemory(device) as mem:
        record.start()
        begin = time.perf_counter()
        with torch.no_grad():
            solution = infer_jiio(
                decoder, objective, x0, max_iter=max_iter, callback=record, **options
            )
        synchronize(device)
        total = time.perf_counter() - begin
    reach = first_reaching(
        lambda x: -psnr_of_latents(decoder, x, clean), record.snapshots, -base_psnr
    )
    reach_time = record.stamps[reach] if reach is not None else total
    latents = record.snapshots[reach] if reach is not None else solution.x
    points = range(trace_stride - 1, len(record.snapshots), trace_stride)
    trace = [
        [round(record.stamps[k], 4) for k in points],
        [psnr_of_latents(decoder, record.snapshots[k], clean) for k in points],
    ]
    report = {
        **side_report(
            _setting_name(options),
            reach_time,
            (reach + 1) if reach is not None else solution.f_evals,
            psnr_of_latents(decoder, latents, clean),
            mem,
        ),
        "reached_baseline": reach is not None,
        # no speed-up is claimed when JIIO's budget ends below the baseline's PSNR
        "speedup_time": round(base_time / reach_time, 2) if reach is not None else None,
        "full_run": {
            "time_s": round(total, 4),
            "iterations": solution.f_evals,
            "objective": psnr_of_latents(decoder, solution.x, clean),
        },
    }
    return report, trace, latents


def compare_reconstruction(
    decoder,
    operator,
    clean: torch.Tensor,
    *,
    latent_dim: int,
    latent_reg: float = 1e-3,
    steps: int = 40,
    lr: float = 0.3,
    max_iter: int = 100,
    step_size: float | StepSwitch | None = None,
    solver: str | Anderson | None = None,
    alternatives: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    trace_stride: int = 5,
    return_latents: bool = False,
) -> dict[str, Any]:
    """JIIO vs the nested baseline reconstructing ``clean`` from its measurement, equal PSNR.

    JIIO runs :func:`~jiio_ext.apps.tasks.latent.infer_jiio`: by default the library's
    default solve (the scale-free ``Adaptive`` update, damped iteration) over a fixed budget
    of ``max_iter`` iterations. The hand-set test-time schedule used before,
    ``step_size=StepSwitch(6, 2), solver=Anderson(memory=5, kind="II")``, is an explicit
    option, or an alternative side (docs/solver-options.md compares them).

    Args:
        decoder: a trained :func:`~jiio_ext.apps.tasks.latent.build_decoder`.
        operator: a :class:`jiio_ext.adapters.kornia.Degradation`.
        clean: clean images ``(B, C, H, W)``.
        latent_dim: size of the latent.
        latent_reg: weight of the latent prior term.
        steps: the baseline's Adam steps.
        lr: the baseline's Adam learning rate.
        max_iter: JIIO's iteration budget.
        step_size: JIIO's latent step size or schedule (``None``: the library's adaptive
            update).
        solver: JIIO's solver (``None``: the library's choice for ``step_size``).
        alternatives: other JIIO settings, each reported as one more side under its key:
            ``{"jiio_tuned": {"step_size": StepSwitch(6.0, 2.0), "solver": "anderson"}}``.
        seed: seed of the measurement.
        trace_stride: PSNR-vs-time traces keep every ``trace_stride``-th step / iteration.
        return_latents: also return the scored latents of every side (tensors, not JSON).

    Returns:
        ``{"baseline": {...}, "jiio": {...}, "speedup_time": ..., "traces": ...}`` in the
        bench schema, with ``objective`` = test PSNR (dB, higher is better), plus one side
        per alternative (with its own ``speedup_time``); ``traces`` maps each side to
        ``[times_s, psnrs]`` (PSNR computed untimed). With ``return_latents``,
        ``"latents": {"baseline": ..., "jiio": ..., ...}`` holds the latents whose PSNR is
        reported.

    Example:
        >>> import torch
        >>> from jiio_ext.adapters.kornia import make_degradation
        >>> from jiio_ext.apps.tasks.latent import build_decoder
        >>> d = build_decoder(latent_dim=4, channels=8, image_size=8)
        >>> r = compare_reconstruction(d, make_degradation("denoise", 8, sigma=0.1),
        ...                            torch.rand(2, 1, 8, 8), latent_dim=4, steps=2, max_iter=4)
        >>> sorted(r), r["jiio"]["name"].startswith("JIIO with default options")
        (['baseline', 'jiio', 'speedup_time', 'traces'], True)
    """
    from jiio_ext.apps.tasks.latent import infer_nested, latent_objective

    sides = {"jiio": {"step_size": step_size, "solver": solver}, **(alternatives or {})}
    if "baseline" in sides or len(sides) != 1 + len(alternatives or {}):
        raise ValueError("alternatives: the keys 'baseline' and 'jiio' are taken")
    device = clean.device
    measurement = operator.measure(clean, seed=seed)
    targets = measurement.targets()
    objective = latent_objective(lambda image: operator.consistency(image, *targets), latent_reg)
    x0 = clean.new_zeros(clean.shape[0], latent_dim)
    decoder.requires_grad_(False)

    nested_path: list[tuple[float, torch.Tensor]] = []

    def keep(step: int, x: torch.Tensor) -> None:
        if step % trace_stride == trace_stride - 1 or step == steps - 1:
            synchronize(device)
            nested_path.append((time.perf_counter() - start, x.clone()))

    synchronize(device)
    with PeakMemory(device) as mem_base:
        start = time.perf_counter()
        nested = infer_nested(decoder, objective, x0, steps=steps, lr=lr, callback=keep)
        synchronize(device)
        base_time = time.perf_counter() - start
    base_psnr = psnr_of_latents(decoder, nested.x, clean)
    report: dict[str, Any] = {
        "baseline": side_report(
            f"Adam lr={lr}, {steps} steps through decoder(x): torchdeq anderson forward "
            "(warm-started, tol 1e-3) + IFT backward (f_evals: forward only)",
            base_time,
            nested.forward_iterations,
            base_psnr,
            mem_base,
        ),
    }
    traces = {
        "baseline": [
            [round(t, 4) for t, _ in nested_path],
            [psnr_of_latents(decoder, x, clean) for _, x in nested_path],
        ]
    }
    latents = {"baseline": nested.x.detach()}
    for key, options in sides.items():
        side, traces[key], scored = _jiio_side(
            decoder,
            objective,
            x0,
            clean,
            (base_psnr, base_time),
            max_iter,
            {name: value for name, value in options.items() if value is not None},
            trace_stride,
        )
        report[key], latents[key] = side, scored.detach()
        if key == "jiio":
            report["speedup_time"] = side.pop("speedup_time")
    report["traces"] = traces
    if return_latents:
        report["latents"] = latents
    return report


def bench_inverse(
    device: torch.device,
    *,
    quick: bool = False,
    dtype: torch.dtype = torch.float32,
    problem: str = "inpaint",
    sizes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Train a decoder on the digits (untimed), then time test-time reconstruction.

    Args:
        device: torch device.
        quick: smaller model training and test batch.
        dtype: floating dtype.
        problem: inverse problem (see :data:`jiio_ext.apps.tasks.generative.PROBLEMS`).
        sizes: overrides of ``epochs``, ``train_size``, ``batch``, ``steps`` (the baseline's
            Adam steps) and ``max_iter`` (JIIO's budget; the library's default, 150).

    Returns:
        The bench report (``objective`` = test PSNR in dB, higher is better): ``jiio`` is
        JIIO with default options, ``jiio_tuned`` the hand-set schedule :data:`TUNED`, each
        timed to the baseline's PSNR.

    Example:
        >>> import inspect
        >>> # a run trains a decoder first (seconds even with quick=True and small sizes), e.g.
        >>> # bench_inverse(torch.device("cpu"), quick=True,
        >>> #               sizes=dict(train_size=64, batch=2, steps=2, max_iter=3))["jiio"]
        >>> params = inspect.signature(bench_inverse).parameters
        >>> params["problem"].default, params["sizes"].default, params["quick"].default
        ('inpaint', None, False)
    """
    from jiio_ext.apps.data import load_images
    from jiio_ext.apps.tasks.generative import make_problem, train_generative
    from jiio_ext.apps.tasks.latent import build_decoder

    latent_dim = 16
    chosen = dict(epochs=1, train_size=256, batch=32) if quick else dict(epochs=4, batch=128)
    chosen = {"train_size": None, "steps": 40, "max_iter": 150, **chosen}
    chosen.update(sizes or {})
    epochs, batch = chosen["epochs"], chosen["batch"]
    with tempfile.TemporaryDirectory() as folder:
        train_generative(
            epochs=epochs,
            train_size=chosen["train_size"],
            eval_size=16,
            latent_dim=latent_dim,
            out=folder,
            progress=False,
            sample=False,
            device=device,
        )
        state = load_checkpoint_file(f"{folder}/checkpoint.pt")
    decoder = build_decoder(latent_dim=latent_dim).to(device)
    decoder.load_state_dict(state["decoder"])
    decoder.to(dtype)
    clean = load_images("digits", image_size=16, device=device, dtype=dtype)[2][:batch]
    options = {"sigma": 0.2} if problem == "denoise" else {}
    operator = make_problem(problem, 16, **options)
    torch.manual_seed(0)
    comparison = compare_reconstruction(
        decoder,
        operator,
        clean,
        latent_dim=latent_dim,
        steps=chosen["steps"],
        lr=0.3,  # best final PSNR among 0.03, 0.1, 0.3, 1.0 (docs/results.md)
        max_iter=chosen["max_iter"],
        alternatives={"jiio_tuned": TUNED},
    )
    return {
        "task": "inverse",
        "problem": problem,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": int(clean.shape[0]),
        "objective_name": "test PSNR (dB, [0, 1] scale; higher is better)",
        "training": f"decoder trained {epochs} epoch(s) with JIIO on the digits (untimed)",
        **comparison,
    }
