"""``jiio demo``: every task, JIIO against its baseline, on the bundled data; one HTML report.

:func:`run_demo` runs the tasks of :data:`jiio_ext.apps.demo_tasks.TASKS` (each bench of
:data:`jiio_ext.apps.bench.TASKS` and two training comparisons) on one of the budgets of
:data:`jiio_ext.apps.demo_tasks.BUDGETS`. It writes ``<out>/<timestamp>/record.json`` and a
self-contained ``report.html`` (:func:`jiio_ext.apps.report.write_report`) and prints one line
per task and a summary table.

* **Budgets.** ``"quick"`` (``jiio demo --quick``: under 3 minutes on 2 CPU cores),
  ``"full"`` (under 15 minutes) and ``"tiny"`` (tests). Every task states its time budget; the
  demo prints each task's elapsed time and shows one overall progress bar with the time left.
* **Memory as the benches measure it.** On CPU, where the platform can fork, each task runs in a
  fresh child process, so its peak-memory figure is the growth over a process that ran nothing
  else, as with ``jiio bench TASK``; on a GPU the allocator's peak counters are per task anyway.
* **GPU-only options** (bf16 autocast) run with ``--device cuda`` only; on CPU their row says so.
* **Ctrl-C** stops the demo and still writes the record and the report of the finished tasks.

Example:
    >>> import tempfile
    >>> from jiio_ext.apps.demo import run_demo
    >>> folder = run_demo(tempfile.mkdtemp(), budget="tiny", tasks=["overhead"], verbose=False)
    >>> sorted(p.name for p in folder.iterdir())
    ['overhead', 'record.json', 'report.html']
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jiio_ext.apps.demo_tasks import BUDGETS, TASKS, DemoTask

__all__ = ["run_demo"]

# optional libraries imported once before the tasks start, so that no task pays for them
_PRELOAD = ("torchdeq", "torchattacks", "kornia", "matplotlib")


def _run_in_child(connection: Any, run: Callable, args: tuple) -> None:
    """Child-process side of :func:`_isolated`: run, send the report (or the error) back."""
    try:
        result: Any = run(*args)
    except KeyboardInterrupt:
        result = {"__interrupted__": True}
    except Exception as err:  # reported to the parent, which records it
        result = {"error": f"{type(err).__name__}: {err}"}
    connection.send(result)
    connection.close()


def _isolated(run: Callable[..., dict], *args: Any, fork: bool = True) -> dict[str, Any]:
    """``run(*args)`` in a forked child process (a fresh memory baseline), else in this one.

    CUDA cannot be used in a child forked after the parent initialised it, and on a GPU the
    benches measure memory with the allocator's own peak counters, so ``fork=False`` there.

    Raises:
        KeyboardInterrupt: the task was interrupted (Ctrl-C).
    """
    if not fork or "fork" not in multiprocessing.get_all_start_methods():
        try:
            return run(*args)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # one failing task must not lose the others' results
            return {"error": f"{type(err).__name__}: {err}"}
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_run_in_child, args=(sender, run, args))
    child.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        child.join()
        result = {"error": f"the task's process ended with exit code {child.exitcode}"}
    except KeyboardInterrupt:
        child.terminate()
        raise
    finally:
        child.join()
    if result.get("__interrupted__"):
        raise KeyboardInterrupt
    return result


def _preload() -> None:
    """Import the optional libraries once, so that no task's time includes their import."""
    import importlib

    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue


class _Progress:
    """One overall bar over the tasks' stated budgets, with the time left (each second)."""

    def __init__(self, budgets: list[float], enabled: bool) -> None:
        self.budgets = budgets
        self.enabled = enabled
        self.done = 0.0
        self.current = 0.0
        self.started = time.perf_counter()
        self.label = ""
        self.bar = None
        self._stop = threading.Event()
        if enabled and sys.stderr.isatty():  # a log file gets plain lines, not bar frames
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=sum(self.budgets),
                unit="s",
                bar_format="demo {percentage:3.0f}%|{bar}| {postfix}",
                leave=False,
            )
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._refresh()

    def _refresh(self) -> None:
        if self.bar is None:
            return
        running = time.perf_counter() - self.started
        shown = self.done + min(running, self.current)
        left = max(sum(self.budgets) - shown, 0.0)
        self.bar.n = shown
        self.bar.set_postfix_str(f"{self.label}, about {left:.0f} s left", refresh=True)

    def begin(self, index: int, label: str) -> None:
        """A task starts."""
        self.current = self.budgets[index]
        self.label = label
        self.started = time.perf_counter()
        if self.enabled and self.bar is None:
            left = sum(self.budgets) - self.done
            print(f"{label} (budget {self.current:.0f} s, {left:.0f} s of all budgets left)")
        self._refresh()

    def end(self, index: int) -> None:
        """A task ended (its whole budget counts as used)."""
        self.done += self.budgets[index]
        self.current = 0.0

    def write(self, text: str) -> None:
        """Print a line above the bar."""
        if self.bar is None:
            if self.enabled:
                print(text, flush=True)
        else:
            self.bar.write(text)

    def close(self) -> None:
        """Remove the bar."""
        self._stop.set()
        if self.bar is not None:
            self._thread.join()
            self.bar.close()


def _run_one(task: DemoTask, budget: str, device: str, folder: Path) -> dict[str, Any]:
    import torch

    if task.gpu_only and torch.device(device).type != "cuda":
        return {
            "task": task.name,
            "skipped": f"{task.name} is a GPU option: it runs with jiio demo --device cuda",
        }
    return _isolated(task.run, budget, device, folder, fork=torch.device(device).type == "cpu")


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children."""
    try:
        import resource
    except ImportError:  # not on this platform: this process's own CPU time
        return time.process_time()
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _annotate(
    report: dict[str, Any], task: DemoTask, budget_s: float, elapsed: float, cpu: float
) -> None:
    """Add what the report needs to judge a row: the quality measure, the budget, the times."""
    report.setdefault("task", task.name)
    report["what"] = task.what
    report["short"] = task.short or task.what
    if task.quality:
        report["quality"] = {
            "name": task.quality,
            "better": task.better,
            "tolerance": task.tolerance,
        }
    if task.why_slower:
        report["why_slower"] = task.why_slower
    report["budget_s"] = budget_s
    report["wall_time_s"] = round(elapsed, 2)
    report["cpu_time_s"] = round(cpu, 2)


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
        tasks: names of :data:`jiio_ext.apps.demo_tasks.TASKS` to run; default: all.
        verbose: show the overall bar, one line per task, the summary and the paths.

    Returns:
        The run folder (``record.json``, ``report.html`` and one image folder per task).

    Raises:
        ValueError: unknown budget or task.
        KeyboardInterrupt: after writing the record and report of the tasks done (Ctrl-C).

    Example:
        >>> import json, tempfile
        >>> folder = run_demo(tempfile.mkdtemp(), budget="tiny", tasks=["latent"], verbose=False)
        >>> record = json.loads((folder / "record.json").read_text())
        >>> record["tasks"]["latent"]["speedup_time"] > 0
        True
    """
    from jiio_ext import __version__
    from jiio_ext.apps.figures import quality_time_plot
    from jiio_ext.apps.report import machine_info, write_report
    from jiio_ext.apps.runlog import write_json
    from jiio_ext.apps.summary import headline, summary_table

    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {BUDGETS}, got {budget!r}")
    names = list(TASKS if tasks is None else tasks)
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ValueError(f"tasks: unknown {unknown}; expected names from {list(TASKS)}")
    folder = Path(out) / time.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while folder.exists():
        folder = Path(out) / f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
        suffix += 1
    folder.mkdir(parents=True)
    chosen = [TASKS[name] for name in names]
    budgets = [task.budget_s(budget, device) for task in chosen]
    record: dict[str, Any] = {
        "version": __version__,
        "budget": budget,
        "budget_s": sum(budgets),
        "machine": machine_info(device),
        "tasks": {},
    }
    _preload()
    progress = _Progress(budgets, enabled=verbose)
    begin, cpu_begin = time.perf_counter(), _cpu_seconds()
    try:
        for index, task in enumerate(chosen):
            label = f"[{index + 1}/{len(chosen)}] {task.name}"
            progress.begin(index, label)
            images = folder / task.name
            images.mkdir()
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            try:
                report = _run_one(task, budget, device, images)
            except KeyboardInterrupt:
                record["interrupted"] = f"Ctrl-C during {task.name}"
                raise
            finally:
                progress.end(index)
            elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
            _annotate(report, task, budgets[index], elapsed, cpu)
            record["tasks"][task.name] = report
            if report.get("quality") and "error" not in report and "skipped" not in report:
                quality_time_plot(report, images / "quality_vs_time.png")
            progress.write(
                f"{label}: {elapsed:.1f} s ({cpu:.1f} s of CPU; budget {budgets[index]:.0f} s): "
                f"{headline(report)}"
            )
    finally:
        progress.close()
        record["total_time_s"] = round(time.perf_counter() - begin, 2)
        record["cpu_time_s"] = round(_cpu_seconds() - cpu_begin, 2)
        write_json(folder / "record.json", record)
        pictures = {name: sorted((folder / name).glob("*.png")) for name in record["tasks"]}
        report_path = write_report(record, folder, pictures)
        if verbose:
            print(summary_table(record))
            if "interrupted" in record:
                print(f"interrupted ({record['interrupted']}): the tasks done so far are saved")
            print(f"record written to {folder / 'record.json'}")
            print(f"report written to {report_path}")
    return folder
