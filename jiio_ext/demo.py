"""``jiio demo``: every task, JIIO against its baseline, on the bundled data; one HTML report.

The demo runs every benchmark of :data:`jiio_ext.bench.TASKS` (latent inversion, per-iteration
overhead, a torchdeq model, adversarial attack, an inverse problem, meta-learning) and two
training comparisons (adversarial training: JIIOPGD vs torchattacks' PGD in the loop;
generative inpainting training: JIIO vs the nested inner loop), then writes
``<out>/<timestamp>/record.json`` and a self-contained ``report.html`` with the tables,
convergence plots and image grids, and prints a summary table.

Budgets: ``"quick"`` (``jiio demo --quick``, a few minutes on 2 CPU cores), ``"full"`` and
``"tiny"`` (for tests).

Example:
    >>> import tempfile
    >>> from jiio_ext.demo import run_demo
    >>> folder = run_demo(tempfile.mkdtemp(), budget="tiny", tasks=["overhead"], verbose=False)
    >>> sorted(p.name for p in folder.iterdir())
    ['overhead', 'record.json', 'report.html']
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BUDGETS", "TRAINING", "run_demo"]

# Demo budgets: "tiny" (tests), "quick" (a few minutes on 2 CPU cores), "full".
BUDGETS = ("tiny", "quick", "full")
# benches whose full budget alone exceeds the full demo's 15 minutes (jiio bench meta: ~15 min
# on 2 cores) run their quick budget there too
QUICK_IN_FULL_DEMO = frozenset({"meta"})
# the "tiny" budget (tests) shrinks the benches that take options beyond quick=
TINY_BENCH_OPTIONS: dict[str, dict[str, Any]] = {
    "inverse": {"sizes": dict(train_size=64, batch=8, steps=10, max_iter=20)},
}


def _copy_images(source: Path, target: Path, names: Sequence[str], prefix: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (source / name).is_file():
            shutil.copy(source / name, target / f"{prefix}{name}")


def _training_side(name: str, log: dict[str, Any], objective: float, **extra: Any) -> dict:
    """One side of a training comparison: mean epoch time and the final quality."""
    epochs = log["epochs"]
    mean_epoch = sum(e["epoch_time_s"] for e in epochs) / len(epochs)
    return {
        "name": name,
        "time_s": round(mean_epoch, 3),
        "f_evals": None,
        "objective": objective,
        **extra,
    }


def _training_report(
    task: str, device: str, objective_name: str, epochs: int, baseline: dict, jiio: dict
) -> dict[str, Any]:
    """A training comparison in the bench report schema (time = mean epoch time)."""
    return {
        "task": task,
        "device": device,
        "objective_name": objective_name,
        "epochs": epochs,
        "baseline": baseline,
        "jiio": jiio,
        "speedup_time": round(baseline["time_s"] / jiio["time_s"], 2),
    }


def _adversarial_training(budget: str, device: str, folder: Path) -> dict[str, Any]:
    """JIIOPGD vs PGD in Madry adversarial training (digits, L∞ 0.1), epoch time and accuracy."""
    from jiio_ext.tasks.adversarial import train_adversarial

    sizes = {
        "tiny": dict(epochs=1, train_size=32, eval_size=16, steps=2, eval_steps=2),
        "quick": dict(epochs=1, train_size=256, eval_size=100, steps=10, eval_steps=10),
        "full": dict(epochs=3, train_size=None, eval_size=200, steps=10, eval_steps=20),
    }[budget]
    logs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in ("pgd", "jiio"):
            logs[method] = train_adversarial(
                method=method,
                out=f"{scratch}/{method}",
                device=device,
                progress=False,
                robust_eval=False,
                **sizes,
            )
        _copy_images(Path(scratch) / "jiio", folder, ("examples.png", "curves.png"), "jiio_")
    names = {
        "pgd": f"torchattacks PGD-{sizes['steps']} in the loop",
        "jiio": f"JIIOPGD ({sizes['steps']} PGD-equivalent steps) in the loop",
    }
    sides = {
        method: _training_side(
            names[method],
            log,
            log["epochs"][-1]["robust_accuracy"],
            clean_accuracy=log["epochs"][-1]["clean_accuracy"],
        )
        for method, log in logs.items()
    }
    return _training_report(
        "adversarial-training",
        device,
        f"robust accuracy under PGD-{sizes['eval_steps']} (higher is better)",
        sizes["epochs"],
        sides["pgd"],
        sides["jiio"],
    )


def _generative_training(budget: str, device: str, folder: Path) -> dict[str, Any]:
    """JIIO vs nested inner loop training a DEQ decoder for inpainting (digits, 16×16)."""
    from jiio_ext.tasks.generative import train_generative

    sizes = {
        "tiny": dict(
            epochs=1, train_size=32, eval_size=16, batch_size=16, inner_iters=5, eval_iters=5
        ),
        "quick": dict(epochs=1, train_size=384, eval_size=64, batch_size=64, inner_iters=40),
        "full": dict(epochs=2, train_size=None, eval_size=128, batch_size=64, inner_iters=40),
    }[budget]
    logs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in ("nested", "jiio"):
            logs[method] = train_generative(
                problem="inpaint",
                method=method,
                out=f"{scratch}/{method}",
                device=device,
                progress=False,
                **sizes,
            )
        names = ("reconstructions.png", "samples.png", "residuals.png")
        _copy_images(Path(scratch) / "jiio", folder, names, "jiio_")
    names = {
        "nested": f"nested: Adam, {sizes['inner_iters']} steps through torchdeq solves",
        "jiio": f"JIIO, {sizes['inner_iters']} joint iterations",
    }
    sides = {
        method: _training_side(names[method], log, round(log["epochs"][-1]["test_psnr"], 3))
        for method, log in logs.items()
    }
    return _training_report(
        "generative-training",
        device,
        "test PSNR of inpainted digits (dB; higher is better)",
        sizes["epochs"],
        sides["nested"],
        sides["jiio"],
    )


# Training comparisons of the demo by name: each maps (budget, device, folder) to a report.
TRAINING: dict[str, Callable[[str, str, Path], dict[str, Any]]] = {
    "adversarial-training": _adversarial_training,
    "generative-training": _generative_training,
}


def _bench(name: str, budget: str, device: str, folder: Path) -> dict[str, Any]:
    from jiio_ext.bench import run_task
    from jiio_ext.report import convergence_plot

    options = TINY_BENCH_OPTIONS.get(name, {}) if budget == "tiny" else {}
    quick = budget != "full" or name in QUICK_IN_FULL_DEMO
    report = run_task(name, device=device, quick=quick, **options)
    traces = report.get("traces")
    if traces:
        convergence_plot(
            {side: tuple(trace) for side, trace in traces.items()},
            folder / "convergence.png",
            f"{name}: quality against wall time",
            report.get("objective_name", "objective"),
        )
    return report


def run_demo(
    out: str | Path = "jiio-runs",
    *,
    device: str = "cpu",
    budget: str = "quick",
    tasks: Sequence[str] | None = None,
    verbose: bool = True,
) -> Path:
    """Run the demo and write its record and report; returns the run folder.

    Args:
        out: parent folder; the run goes to ``out/<timestamp>/``.
        device: torch device.
        budget: ``'tiny'``, ``'quick'`` or ``'full'``.
        tasks: names to run (benchmarks of :data:`jiio_ext.bench.TASKS` and
            :data:`TRAINING`); default: all.
        verbose: print each task's table, the summary and the paths.

    Returns:
        The run folder (``record.json``, ``report.html`` and one image folder per task).

    Raises:
        ValueError: unknown budget or task.

    Example:
        >>> import json, tempfile
        >>> folder = run_demo(tempfile.mkdtemp(), budget="tiny", tasks=["latent"], verbose=False)
        >>> record = json.loads((folder / "record.json").read_text())
        >>> record["tasks"]["latent"]["speedup_time"] > 0
        True
    """
    from jiio_ext import __version__
    from jiio_ext.bench import TASKS
    from jiio_ext.cli import format_report
    from jiio_ext.report import machine_info, summary_table, write_report

    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {BUDGETS}, got {budget!r}")
    available = sorted(TASKS) + list(TRAINING)
    names = list(available if tasks is None else tasks)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"tasks: unknown {unknown}; expected names from {available}")
    folder = Path(out) / time.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while folder.exists():
        folder = Path(out) / f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
        suffix += 1
    folder.mkdir(parents=True)
    record: dict[str, Any] = {
        "version": __version__,
        "budget": budget,
        "machine": machine_info(device),
        "tasks": {},
    }
    begin = time.perf_counter()
    for position, name in enumerate(names, start=1):
        if verbose:
            print(f"== [{position}/{len(names)}] {name} ==", flush=True)
        images = folder / name
        images.mkdir()
        started = time.perf_counter()
        try:
            if name in TRAINING:
                report = TRAINING[name](budget, device, images)
            else:
                report = _bench(name, budget, device, images)
        except Exception as err:  # one failing task must not lose the others' results
            report = {"task": name, "error": f"{type(err).__name__}: {err}"}
        report["wall_time_s"] = round(time.perf_counter() - started, 2)
        record["tasks"][name] = report
        if verbose:
            failed = "error" in report
            print(f"{name} failed: {report['error']}" if failed else format_report(report))
    record["total_time_s"] = round(time.perf_counter() - begin, 2)
    (folder / "record.json").write_text(json.dumps(record, indent=2))
    pictures = {name: sorted((folder / name).glob("*.png")) for name in record["tasks"]}
    report_path = write_report(record, folder, pictures)
    if verbose:
        print(summary_table(record))
        print(f"record written to {folder / 'record.json'}")
        print(f"report written to {report_path}")
    return folder
