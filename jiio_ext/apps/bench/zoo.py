"""``jiio bench zoo``: JIIO with default options against Adam on models nobody here tuned.

Every row is one model of :mod:`jiio_ext.apps.bench.zoo_models`, one objective and one scale of
that objective (``× 1e-3``, ``× 1``, ``× 1e3``):

* **recovery**: find the input that produced given outputs, ``mean((model(x) − y)²)``;
* **inversion**: the same from half of the outputs, with a Gaussian prior on the input,
  ``mean(mask · (model(x) − y)²) / mean(mask) + 1e-3 · mean(x²)`` (MAP latent inversion).

The baseline is what a torchdeq user writes: Adam on the input for 40 steps through
``model(x)`` (the model's own solver forward and IFT backward), best of lr 0.03 / 0.1 / 0.3
per row; the winning lr is reported. JIIO is ``input_optimizable(model).optimize_input(x0,
objective)`` with default options, the same for every row. Both objectives are evaluated the
same way, at a tight fixed point of ``x``; JIIO's time is the time at which its iterate first
reaches the best Adam objective (``ratio`` is the baseline's time over it).

Example:
    >>> import torch
    >>> report = bench_zoo(torch.device("cpu"), quick=True, models=["get-started"],
    ...                    objectives=["recovery"], scales=[1.0], progress=False)
    >>> row = report["rows"][0]
    >>> sorted(row["jiio"]) == sorted(row["baseline"])
    True
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from jiio_ext.adapters._deq_intercept import named_deqs
from jiio_ext.apps.bench.zoo_models import ZOO_MODELS

__all__ = ["OBJECTIVES", "SCALES", "bench_zoo", "format_zoo", "run_cli"]

# The objectives of every zoo model (see the module docstring).
OBJECTIVES = ("recovery", "inversion")
# The factors each objective is run at (JIIO's defaults must not care).
SCALES = (1e-3, 1.0, 1e3)
ADAM_RATES = (0.03, 0.1, 0.3)
ADAM_STEPS = 40


def _output(out: object) -> torch.Tensor:
    """The tensor an objective compares: the output itself, or a dict output's first entry."""
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out


@contextlib.contextmanager
def _tight(model: nn.Module) -> Iterator[None]:
    """Every DEQ of ``model`` swapped for a tight Anderson solve (measurement only)."""
    from torchdeq import get_deq

    swapped = []
    for parent, name in named_deqs(model):
        swapped.append((parent, name, getattr(parent, name)))
        setattr(parent, name, get_deq(f_solver="anderson", f_max_iter=300, f_tol=1e-6))
    try:
        yield
    finally:
        for parent, name, deq in swapped:
            setattr(parent, name, deq)


@contextlib.contextmanager
def _counting(model: nn.Module) -> Iterator[list[int]]:
    """Count the calls of every DEQ's ``f`` (forward evaluations) while the block runs."""
    count = [0]
    handles = []

    def hook(module: nn.Module, args: tuple):
        func, *rest = args

        def counted(*inner, **kw):
            count[0] += 1
            return func(*inner, **kw)

        return (counted, *rest)

    for parent, name in named_deqs(model):
        handles.append(getattr(parent, name).register_forward_pre_hook(hook))
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def _objective(kind: str, targets: torch.Tensor, scale: float, seed: int) -> Callable:
    if kind == "recovery":

        def recovery(out: object, x: torch.Tensor) -> torch.Tensor:
            return scale * (_output(out) - targets).pow(2).flatten(1).mean(1)

        return recovery
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(targets.shape, generator=gen) < 0.5).to(targets)
    weight = mask.flatten(1).mean(1).clamp_min(1e-6)

    def inversion(out: object, x: torch.Tensor) -> torch.Tensor:
        miss = (mask * (_output(out) - targets).pow(2)).flatten(1).mean(1) / weight
        return scale * (miss + 1e-3 * x.pow(2).flatten(1).mean(1))

    return inversion


def _true_objective(model: nn.Module, objective: Callable, x: torch.Tensor) -> float:
    with _tight(model), torch.no_grad():
        return float(objective(model(x), x).mean())


def _adam(model: nn.Module, objective: Callable, x0: torch.Tensor, lr: float) -> dict:
    x = x0.clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=lr)
    with _counting(model) as count:
        start = time.perf_counter()
        for _ in range(ADAM_STEPS):
            opt.zero_grad()
            objective(model(x), x).sum().backward()
            opt.step()
        elapsed = time.perf_counter() - start
    return {"time_s": elapsed, "f_evals": count[0], "x": x.detach()}


def _row(model: nn.Module, x0: torch.Tensor, objective: Callable, *, name: str) -> dict:
    from jiio_ext.adapters.torchdeq import input_optimizable
    from jiio_ext.apps.bench.measure import default_options_side

    runs = {lr: _adam(model, objective, x0, lr) for lr in ADAM_RATES}
    scored = {lr: _true_objective(model, objective, run["x"]) for lr, run in runs.items()}
    best_lr = min(scored, key=lambda lr: scored[lr])
    base = runs[best_lr]
    target = scored[best_lr]

    decorated = input_optimizable(model)
    measure = functools.partial(_true_objective, model, objective)
    jiio = default_options_side(
        lambda callback: decorated.optimize_input(x0, objective, callback=callback),
        measure,
        x0,
        x0.device,
        target,
        base["time_s"],
    )
    final = jiio["full_run"]["objective"]
    reached = jiio["reached_baseline"] or final <= target
    reach_time = jiio["time_s"] if jiio["reached_baseline"] else jiio["full_run"]["time_s"]
    return {
        "name": name,
        "baseline": {
            "method": f"Adam-{ADAM_STEPS}, lr {best_lr} (best of {list(ADAM_RATES)})",
            "lr": best_lr,
            "objective": target,
            "time_s": round(base["time_s"], 4),
            "f_evals": base["f_evals"],
        },
        "jiio": {
            "method": "optimize_input, default options",
            "lr": None,
            "objective": final,
            "time_s": jiio["full_run"]["time_s"],
            "f_evals": jiio["f_evals"],
        },
        "reached": reached,
        "reach_time_s": round(reach_time, 4) if reached else None,
        "ratio": round(base["time_s"] / reach_time, 2) if reached else None,
        "objective_ratio": final / target if target > 0 else None,
    }


def bench_zoo(
    device: torch.device,
    *,
    quick: bool = False,
    dtype: torch.dtype = torch.float32,
    models: Sequence[str] | None = None,
    objectives: Sequence[str] = OBJECTIVES,
    scales: Sequence[float] = SCALES,
    progress: bool = True,
) -> dict:
    """Run the zoo rows (every model × objective × scale) and summarise them.

    Args:
        device: torch device.
        quick: batch 4 instead of 8.
        dtype: floating-point type of the models and inputs.
        models: model names (default all of :data:`~jiio_ext.apps.bench.zoo_models.ZOO_MODELS`).
        objectives: ``"recovery"`` and / or ``"inversion"``.
        scales: factors the objective is multiplied by.
        progress: show a tqdm bar with the last row's ratio.

    Returns:
        ``{"task": "zoo", "rows": [...], "summary": {...}}``: per row both sides' objective,
        time and f evaluations, the ratio at equal objective and whether JIIO reached Adam.

    Example:
        >>> import inspect
        >>> list(inspect.signature(bench_zoo).parameters)[:3]
        ['device', 'quick', 'dtype']
    """
    names = list(ZOO_MODELS) if models is None else list(models)
    unknown = [n for n in names if n not in ZOO_MODELS]
    if unknown:
        raise ValueError(f"models: unknown {unknown}; expected names from {sorted(ZOO_MODELS)}")
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad:
        raise ValueError(f"objectives: unknown {bad}; expected from {list(OBJECTIVES)}")
    batch = 4 if quick else 8
    plan = [(m, o, s) for m in names for o in objectives for s in scales]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="jiio bench zoo")
    rows = []
    try:
        for model_name, kind, scale in plan:
            model, x_true = ZOO_MODELS[model_name](batch=batch, seed=0)
            model = model.to(device=device, dtype=dtype)
            x_true = x_true.to(device=device, dtype=dtype)
            with _tight(model), torch.no_grad():
                targets = _output(model(x_true)).detach()
            objective = _objective(kind, targets, scale, seed=1)
            x0 = torch.zeros_like(x_true)
            row = _row(model, x0, objective, name=f"{model_name} / {kind} / x{scale:g}")
            rows.append(row)
            if bar is not None:
                bar.set_postfix(row=row["name"], ratio=row["ratio"])
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    summary = {
        "rows": len(rows),
        "reached": sum(r["reached"] for r in rows),
        "at_least_3x": sum((r["ratio"] or 0) >= 3 for r in rows),
        "median_ratio": round(statistics.median(ratios), 2) if ratios else None,
        "min_ratio": min(ratios) if len(ratios) == len(rows) and ratios else None,
    }
    return {
        "task": "zoo",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": batch,
        "rows": rows,
        "summary": summary,
    }


def format_zoo(report: dict) -> str:
    """The zoo report as a text table (objectives: lower is better).

    Example:
        >>> side = {"objective": 0.5, "time_s": 1.0, "f_evals": 3, "lr": 0.1}
        >>> row = {"name": "m / recovery / x1", "baseline": side, "jiio": side, "reached": True,
        ...        "ratio": 2.0}
        >>> print(format_zoo({"device": "cpu", "rows": [row], "summary": {}}).splitlines()[0])
        jiio bench zoo on cpu (objective: lower is better; ratio: Adam time / JIIO time to reach it)
    """
    lines = [
        f"jiio bench zoo on {report['device']} "
        "(objective: lower is better; ratio: Adam time / JIIO time to reach it)",
        f"  {'model / objective / scale':<34}{'Adam lr':>8}{'Adam obj':>11}{'Adam s':>8}"
        f"{'JIIO obj':>11}{'JIIO s':>8}{'evals A/J':>12}{'ratio':>7}",
    ]
    for row in report["rows"]:
        base, jiio = row["baseline"], row["jiio"]
        ratio = f"{row['ratio']:.1f}" if row["ratio"] is not None else "not reached"
        lines.append(
            f"  {row['name']:<34}{base['lr']:>8}{base['objective']:>11.3g}{base['time_s']:>8.2f}"
            f"{jiio['objective']:>11.3g}{jiio['time_s']:>8.2f}"
            f"{str(base['f_evals']) + '/' + str(jiio['f_evals']):>12}{ratio:>7}"
        )
    summary = report.get("summary", {})
    if summary:
        lines.append(
            f"  reached Adam on {summary['reached']}/{summary['rows']} rows, >= 3x on "
            f"{summary['at_least_3x']}, median ratio {summary['median_ratio']}"
        )
    return "\n".join(lines)


def run_cli(args) -> int:
    """``jiio bench zoo [--quick] [--json] [--device D]``.

    Example:
        >>> import inspect
        >>> list(inspect.signature(run_cli).parameters)
        ['args']
    """
    report = bench_zoo(
        torch.device(args.device), quick=args.quick, dtype=getattr(torch, args.dtype)
    )
    print(json.dumps(report) if args.json else format_zoo(report), flush=True)
    return 0
