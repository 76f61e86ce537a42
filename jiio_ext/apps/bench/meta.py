"""``jiio bench meta``: meta-learning with JIIO against higher MAML and nested iMAML.

Each method meta-trains the same FiLM-conditioned DEQ (same seed, same task stream, Adam
1e-3) for the same number of meta-steps, then adapts to a fixed set of held-out tasks with its
own inner loop. Reported per method: mean wall time per meta-step (``time_s``), meta-test
accuracy (digits 5-way 1-shot, ``objective``) or MSE (sinusoid), and the peak memory growth
during meta-training. The baseline is higher's MAML (unrolled through the DEQ; torchdeq
Anderson forward and IFT backward, warm-started solves); nested iMAML and FOMAML are in
``other_baselines``. ``memory_vs_budget`` gives the peak memory of JIIO and MAML meta-steps at
a small and a 4× larger inner budget.

On a CPU the benchmark runs with one intra-op thread (restored afterwards): the models are
small and, on a shared 2-core machine, two threads made every method 10–50× slower.

Example:
    >>> import torch
    >>> from jiio_ext.apps.bench.meta import bench_meta
    >>> report = bench_meta(torch.device("cpu"), quick=True)  # doctest: +SKIP
    >>> sorted(NAMES)
    ['fomaml', 'imaml', 'jiio', 'maml']
"""

from __future__ import annotations

import time

import torch

from jiio_ext.apps.bench.measure import PeakMemory, synchronize
from jiio_ext.apps.tasks.meta import TUNED_SETTINGS, evaluate_meta, make_meta_problem
from jiio_ext.apps.tasks.meta_data import TaskBatch
from jiio_ext.apps.tasks.meta_methods import MetaConfig, meta_step

__all__ = ["DIGITS_SETTINGS", "SINUSOID_SETTINGS", "bench_meta"]

NAMES = {
    "jiio": "innerloop_ctx (jiio_ext.adapters.higher), {jiio} joint iterations, batched tasks",
    "maml": "higher.innerloop_ctx MAML, {maml} SGD steps through the DEQ (torchdeq Anderson)",
    "imaml": "nested iMAML: {imaml} GD steps + {cg} CG steps (finite-difference HVPs)",
    "fomaml": "first-order MAML, {maml} SGD steps",
}


# Digits inner settings of the bench, tuned on a validation split (digits 5-6, never the
# meta-test digits; docs/meta.md): MAML lr 4 / 8 / 16 → 79.1 / 79.9 / 78.3 %; JIIO with one
# proximal weight 0.001 → 80.0 %, with the context at 0.01 and the head at 3e-4 / 1e-4 / 3e-5 /
# 1e-5 → 81.2 / 81.9 / 82.7 / 82.5 % (40 joint iterations); iMAML shares the proximal weights
DIGITS_SETTINGS = TUNED_SETTINGS["digits"]
# Sinusoid inner settings of the bench; validation MSE: MAML lr 1 / 2 / 4 → 3.12 / 3.06 / 2.98;
# JIIO prox 0.3 (of 0.01-3) with 10 or 20 joint iterations → 3.16 / 3.17 (converged at 10)
SINUSOID_SETTINGS = TUNED_SETTINGS["sinusoid"]


def _cast(batch: TaskBatch, dtype: torch.dtype) -> TaskBatch:
    parts = (batch.x_spt, batch.y_spt, batch.x_qry, batch.y_qry)
    return TaskBatch(*(t.to(dtype) if t.is_floating_point() else t for t in parts))


def _run_method(
    task,
    method,
    cfg,
    meta_steps,
    eval_tasks,
    tasks_per_batch,
    hidden,
    device,
    dtype,
    seed=0,
):
    model, sampler = make_meta_problem(task, device=device, hidden=hidden, seed=seed)
    model = model.to(dtype=dtype)
    meta_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    batches = [_cast(sampler(tasks_per_batch, True, generator), dtype) for _ in range(meta_steps)]
    times = []
    with PeakMemory(device) as mem:
        for batch in batches:
            synchronize(device)
            start = time.perf_counter()
            meta_opt.zero_grad()
            meta_step(model, method, batch, cfg)
            meta_opt.step()
            synchronize(device)
            times.append(time.perf_counter() - start)
    test = evaluate_meta(model, method, sampler, cfg, eval_tasks)
    per_step = sorted(times)[len(times) // 2] if len(times) > 2 else sum(times) / len(times)
    name = NAMES[method].format(
        jiio=cfg.jiio_steps, maml=cfg.maml_steps, imaml=cfg.imaml_steps, cg=cfg.cg_steps
    )
    return {
        "name": name,
        "time_s": round(per_step, 4),
        "f_evals": None,
        "objective": round(test["metric"], 4),
        "meta_test_loss": round(test["loss"], 4),
        "peak_mem_mb": round(mem.peak_mb, 1),
        "meta_steps": meta_steps,
        "total_train_time_s": round(sum(times), 2),
    }


def _memory_vs_budget(task, cfg, hidden, device, budgets) -> dict:
    """Peak memory of three meta-steps of JIIO and MAML at each inner budget."""
    out = {}
    generator = torch.Generator().manual_seed(1)
    for method in ("jiio", "maml"):
        out[method] = {}
        for budget in budgets:
            model, sampler = make_meta_problem(task, device=device, hidden=hidden)
            local = MetaConfig(**{**vars(cfg), "jiio_steps": budget, "maml_steps": budget})
            batch = sampler(2, True, generator)
            with PeakMemory(device) as mem:
                for _ in range(3):
                    model.zero_grad()
                    meta_step(model, method, batch, local)
            out[method][str(budget)] = round(mem.peak_mb, 1)
    return out


def _compare(task, cfg, meta_steps, eval_tasks, tasks_per_batch, hidden, device, dtype, methods):
    sides = {
        m: _run_method(task, m, cfg, meta_steps, eval_tasks, tasks_per_batch, hidden, device, dtype)
        for m in methods
    }
    jiio = sides["jiio"]
    report = {
        "baseline": sides["maml"],
        "jiio": jiio,
        "other_baselines": [sides[m] for m in methods if m not in ("jiio", "maml")],
        "speedup_time": round(sides["maml"]["time_s"] / jiio["time_s"], 2),
    }
    if "imaml" in sides:
        report["speedup_time_vs_imaml"] = round(sides["imaml"]["time_s"] / jiio["time_s"], 2)
    return report


def bench_meta(
    device: torch.device,
    quick: bool = False,
    dtype: torch.dtype = torch.float32,
    *,
    meta_steps: int | None = None,
    eval_tasks: int | None = None,
) -> dict:
    """JIIO vs higher MAML vs nested iMAML (and FOMAML) on digits 5-way 1-shot and sinusoids.

    Args:
        device: torch device.
        quick: a few meta-steps on the digits only (well under a minute on a CPU).
        dtype: floating dtype of the models and data.
        meta_steps: override the number of meta-steps per method.
        eval_tasks: override the number of held-out tasks of the meta-test.

    Returns:
        The report: ``task``, ``device``, ``dtype``, ``baseline`` (higher MAML), ``jiio``,
        ``other_baselines``, ``speedup_time`` (and vs iMAML), for the digits task; the same
        for the sinusoid under ``"sinusoid"`` and ``memory_vs_budget`` (full run only).

    Example:
        >>> import torch
        >>> report = bench_meta(torch.device("cpu"), quick=True)  # doctest: +SKIP
        >>> report["speedup_time"] > 1  # doctest: +SKIP
        True
    """
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _bench(device, quick, dtype, meta_steps, eval_tasks)
    finally:
        torch.set_num_threads(threads)


def _bench(device, quick, dtype, meta_steps, eval_tasks) -> dict:
    steps = meta_steps or (4 if quick else 150)
    evals = eval_tasks or (8 if quick else 100)
    hidden = 16 if quick else 32
    methods = ("jiio", "maml") if quick else ("jiio", "maml", "imaml", "fomaml")
    cfg = DIGITS_SETTINGS
    report = {
        "task": "meta",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "setting": f"digits 5-way 1-shot, {2 if quick else 4} tasks per meta-step, {steps} "
        "meta-steps, "
        f"{evals} held-out tasks; objective = meta-test accuracy; one CPU thread",
        **_compare("digits", cfg, steps, evals, 2 if quick else 4, hidden, device, dtype, methods),
    }
    if quick:
        return report
    sine_cfg = SINUSOID_SETTINGS
    report["sinusoid"] = {
        "setting": f"sinusoid 10-shot, 4 tasks per meta-step, {steps} meta-steps; objective = "
        "meta-test MSE",
        **_compare("sinusoid", sine_cfg, steps, evals, 4, hidden, device, dtype, methods),
    }
    report["memory_vs_budget"] = _memory_vs_budget("digits", cfg, hidden, device, (5, 20))
    return report
