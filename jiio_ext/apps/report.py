"""The ``jiio demo`` report: a self-contained HTML page, convergence plots and a text summary.

The demo collects one benchmark report per task (see :func:`jiio_ext.apps.bench.run_task`) into a
record ``{"version", "machine", "tasks", "total_time_s"}``; :func:`write_report` turns it into
``report.html`` with every image embedded, :func:`summary_table` into the table the demo prints.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> side = {"name": "Adam", "time_s": 2.0, "f_evals": 90, "objective": 0.5, "peak_mem_mb": 9.0}
    >>> record = {"version": "0.1", "machine": {"python": "3.11"}, "total_time_s": 3.0,
    ...           "tasks": {"latent": {"task": "latent", "baseline": side,
    ...                                "jiio": {**side, "name": "JIIO", "time_s": 0.5},
    ...                                "speedup_time": 4.0}}}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     page = write_report(record, Path(tmp)).read_text()
    >>> "4× faster" in page
    True
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "convergence_plot",
    "format_report",
    "headline",
    "image_grid",
    "machine_info",
    "quality_time_plot",
    "summary_markdown",
    "summary_table",
    "task_sentence",
    "time_ratio",
    "training_curves",
    "verdict",
    "write_report",
]

_PACKAGES = ("torchdeq", "torchattacks", "kornia", "higher", "numpy", "matplotlib")
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_SIDE_ORDER = ("name", "time_s", "f_evals", "objective", "peak_mem_mb")
_LABELS = {
    "name": "method",
    "time_s": "time",
    "f_evals": "f evaluations",
    "peak_mem_mb": "peak memory",
    "speedup_time": "time ratio (speed-up)",
    "speedup_evals": "evaluation ratio",
    "budget_s": "stated budget",
    "wall_time_s": "elapsed",
    "cpu_time_s": "CPU time",
}
# shown in the task's sentence or its own table, not among the details
_SHOWN_APART = (
    "task",
    "error",
    "baseline",
    "jiio",
    "what",
    "short",
    "quality",
    "why_slower",
    "note",
    "caveat",
    "traces",
)
_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       background: #eef0f3; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 20px 36px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0.3em 0 0.1em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #dde1e6; padding-bottom: 3px; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 1.3em 0 0.3em; color: #333; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.93em; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e6e8eb; text-align: left;
         vertical-align: top; }
th { background: #f4f5f7; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.meta { color: #666; margin-top: 0; }
.lead { font-size: 1.1em; }
.good { color: #17692d; font-weight: 600; }
.bad { color: #a3261b; font-weight: 600; }
ul.sentences { padding-left: 1.2em; }
ul.sentences li { margin: 0.35em 0; }
.error { background: #fdecea; border-left: 4px solid #c62828; padding: 8px 12px;
         white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.9em; }
.note { color: #666; font-size: 0.88em; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr));
           gap: 16px; }
figure { margin: 0; border: 1px solid #e6e8eb; padding: 8px; }
figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: 0.9em; color: #555; text-align: center; margin-top: 4px; }
a { color: #1a56a8; text-decoration: none; }
ul.chips { list-style: none; padding: 0; margin: 0.6em 0; display: flex; flex-wrap: wrap;
             gap: 6px; font-size: 0.86em; }
ul.chips li { background: #f4f5f7; border: 1px solid #e1e4e8; border-radius: 4px;
                padding: 1px 8px; }
ul.chips b { color: #555; font-weight: 600; }
"""


def machine_info(device: str) -> dict:
    """The machine and package versions to put in the demo's record.

    Args:
        device: the torch device the demo runs on, e.g. ``"cpu"`` or ``"cuda"``.

    Returns:
        A flat dict: python, torch, platform, CPU count, torch threads, device (with the GPU
        name on CUDA) and the versions of the optional packages that are installed.

    Example:
        >>> info = machine_info("cpu")
        >>> info["device"], "torch" in info
        ('cpu', True)
    """
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    for package in _PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return info


def convergence_plot(
    traces: dict[str, tuple[list[float], list[float]]],
    path: Path,
    title: str,
    ylabel: str,
    *,
    xlabel: str = "time (s)",
    log_y: bool = True,
) -> Path:
    """Plot objective or residual against time (or iteration), one line per method.

    On the default log scale non-positive values cannot be shown; they and non-finite values
    are left out.

    Args:
        traces: ``{label: (xs, ys)}``, e.g. ``{"JIIO": (times, objectives), "Adam": ...}``.
        path: the PNG file to write (its folder is created).
        title: the plot title.
        ylabel: the y-axis label.
        xlabel: the x-axis label.
        log_y: a log-scaled y axis (residuals, objectives); ``False`` for PSNR, accuracy.

    Returns:
        ``path``.

    Raises:
        ValueError: if a trace's xs and ys differ in length.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     png = convergence_plot({"JIIO": ([0.1, 0.2], [1.0, 0.01]),
        ...                             "baseline": ([0.1, 0.5], [1.0, 0.1])},
        ...                            Path(tmp) / "latent.png", "latent", "objective")
        ...     png.read_bytes()[1:4]
        b'PNG'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (xs, ys) in traces.items():
        if len(xs) != len(ys):
            raise ValueError(f"trace {label!r}: {len(xs)} xs but {len(ys)} ys")
        points = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not log_y)]
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            label=label,
            marker="o" if len(points) <= 40 else None,
            markersize=3,
            linewidth=1.6,
        )
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if traces:
        ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: object, key: str = "") -> str:
    """A value as text: 3 significant digits, the unit the key implies."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not _is_number(value):
        return str(value)
    if key.endswith("_s"):
        return f"{value:.3g} s"
    if key.endswith("mem_mb"):
        return f"{value:.3g} MB"
    if key.startswith("speedup") or key == "overhead":
        return f"{value:.3g}×"
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def _label(key: str) -> str:
    return " / ".join(_LABELS.get(part, part.replace("_", " ")) for part in key.split("."))


def _side_value(report: dict, side: str, key: str) -> float | None:
    value = (report.get(side) or {}).get(key)
    return float(value) if _is_number(value) and math.isfinite(value) else None


def time_ratio(report: dict) -> float | None:
    """The baseline's time over JIIO's (above 1: JIIO is faster), or ``None``.

    Example:
        >>> time_ratio({"baseline": {"time_s": 3.0}, "jiio": {"time_s": 1.5}})
        2.0
    """
    if _is_number(report.get("speedup_time")):
        return float(report["speedup_time"])
    base, jiio = _side_value(report, "baseline", "time_s"), _side_value(report, "jiio", "time_s")
    return base / jiio if base and jiio else None


def verdict(report: dict) -> dict[str, str | None]:
    """Who won a task on quality and on time: ``"jiio"``, ``"baseline"``, ``"equal"`` or None.

    Quality uses ``report["quality"]`` (``{"name", "better": "higher" | "lower",
    "tolerance"}``): differences up to the tolerance are equal; a JIIO side that was stopped
    on reaching the baseline's quality (``reached_baseline``) is equal by construction. Time
    uses :func:`time_ratio`, within 5 % counting as equal.

    Args:
        report: one task's report.

    Returns:
        ``{"quality": ..., "time": ...}``.

    Example:
        >>> side = lambda t, q: {"time_s": t, "objective": q}
        >>> verdict({"quality": {"name": "PSNR", "better": "higher", "tolerance": 0.05},
        ...          "baseline": side(2.0, 13.52), "jiio": side(1.0, 13.37)})
        {'quality': 'baseline', 'time': 'jiio'}
    """
    quality = report.get("quality") or {}
    base = _side_value(report, "baseline", "objective")
    jiio = _side_value(report, "jiio", "objective")
    won = None
    if quality and base is not None and jiio is not None:
        gain = jiio - base if quality.get("better") == "higher" else base - jiio
        if (report.get("jiio") or {}).get("reached_baseline") is True:
            won = "equal"
        elif abs(gain) <= float(quality.get("tolerance") or 0.0):
            won = "equal"
        else:
            won = "jiio" if gain > 0 else "baseline"
    ratio = time_ratio(report) if "overhead" not in report else None
    timed = None
    if ratio is not None:
        timed = "jiio" if ratio > 1.05 else "baseline" if ratio < 1 / 1.05 else "equal"
    return {"quality": won, "time": timed}


def _q(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _time_words(report: dict) -> str:
    if _is_number(report.get("overhead")):
        return (
            f"one joint iteration costs {report['overhead']:.3g}× one f evaluation plus one VJP "
            "(the work it cannot avoid; 1× is the floor)"
        )
    ratio, won = time_ratio(report), verdict(report)["time"]
    base, jiio = _side_value(report, "baseline", "time_s"), _side_value(report, "jiio", "time_s")
    unit = report.get("time_name", "wall time")
    times = f"{unit} {_fmt(jiio, 'time_s')} for JIIO against {_fmt(base, 'time_s')}"
    if ratio is None:
        return times
    if won == "jiio":
        return f"JIIO is {ratio:.3g}× faster ({times})"
    if won == "baseline":
        return f"JIIO is {1 / ratio:.3g}× slower ({times})"
    return f"about equal ({times})"


def task_sentence(name: str, report: dict) -> str:
    """One sentence on a task: what was compared, who won on quality and on time, by how much.

    Args:
        name: the task's name.
        report: its report (see :func:`verdict`); ``"error"`` and ``"skipped"`` are said so.

    Returns:
        The sentence.

    Example:
        >>> side = lambda t, q: {"time_s": t, "objective": q}
        >>> print(task_sentence("inverse", {  # doctest: +NORMALIZE_WHITESPACE
        ...     "what": "inpainting digits", "baseline": side(2.0, 13.52),
        ...     "jiio": {**side(1.0, 13.37), "reached_baseline": False},
        ...     "quality": {"name": "test PSNR", "better": "higher", "tolerance": 0.05}}))
        inverse: inpainting digits. Quality (test PSNR, higher is better): the baseline is
        better, 13.52 against 13.37 for JIIO, because JIIO's budget ended before it reached the
        baseline's quality. Time: JIIO is 2× faster (wall time 1 s for JIIO against 2 s).
    """
    if "error" in report:
        return f"{name}: failed ({report['error']})."
    if "skipped" in report:
        return f"{name}: skipped ({report['skipped']})."
    parts = [f"{name}: {report.get('what') or report.get('task', name)}."]
    quality = report.get("quality")
    won = verdict(report)
    if quality:
        base = _side_value(report, "baseline", "objective")
        jiio = _side_value(report, "jiio", "objective")
        values = f"{_q(jiio)} for JIIO against {_q(base)}"
        head = f"Quality ({quality['name']}, {quality['better']} is better): "
        if won["quality"] == "equal":
            if (report.get("jiio") or {}).get("reached_baseline") is True:
                text = f"equal by construction, JIIO timed until it reached the baseline ({values})"
            else:
                text = f"equal within {quality.get('tolerance'):.3g} ({values})"
        elif won["quality"] == "jiio":
            text = f"JIIO is better, {values}"
        elif won["quality"] == "baseline":
            text = f"the baseline is better, {_q(base)} against {_q(jiio)} for JIIO"
            if (report.get("jiio") or {}).get("reached_baseline") is False:
                text += ", because JIIO's budget ended before it reached the baseline's quality"
        else:
            text = "not measured"
        parts.append(head + text + ".")
    parts.append(f"Time: {_time_words(report)}.")
    if report.get("note"):
        parts.append(str(report["note"]))
    if won["time"] == "baseline" and report.get("why_slower"):
        parts.append(f"Why slower: {report['why_slower']}")
    return " ".join(parts)


def headline(report: dict) -> str:
    """The first screen's sentence on a task: who won on quality and on time, by how much.

    Args:
        report: one task's report (``short`` or ``what`` names the comparison; a ``caveat``
            is added in brackets).

    Returns:
        The sentence, without the task's name.

    Example:
        >>> side = lambda t, q: {"time_s": t, "objective": q}
        >>> print(headline({"short": "inpainting, vs nested Adam", "baseline": side(2.0, 13.52),
        ...                 "jiio": side(1.0, 13.37),
        ...                 "quality": {"name": "PSNR", "better": "higher", "tolerance": 0.05}}))
        ... # doctest: +NORMALIZE_WHITESPACE
        inpainting, vs nested Adam: JIIO worse on quality (PSNR ↑: JIIO 13.37, baseline 13.52);
        JIIO 2× faster (wall time: JIIO 1 s, baseline 2 s).
    """
    if "error" in report:
        return f"failed: {report['error']}."
    if "skipped" in report:
        return f"skipped: {report['skipped']}."
    what = report.get("short") or report.get("what") or report.get("task", "")
    quality = report.get("quality")
    won = verdict(report)
    clauses = []
    if quality:
        arrow = {"higher": "↑", "lower": "↓"}.get(quality.get("better", ""), "")
        base = _q(_side_value(report, "baseline", "objective"))
        jiio = _q(_side_value(report, "jiio", "objective"))
        words = {"equal": "equal quality", "jiio": "JIIO better on quality"}
        word = words.get(won["quality"] or "", "JIIO worse on quality")
        if won["quality"] is None:
            word = "quality not measured"
        clauses.append(f"{word} ({quality['name']} {arrow}: JIIO {jiio}, baseline {base})")
    if _is_number(report.get("overhead")):
        clauses.append(
            f"a joint iteration costs {report['overhead']:.3g}× one f evaluation + VJP "
            "(a cost, not a race: no speed-up is claimed)"
        )
    else:
        ratio = time_ratio(report)
        base_t = _fmt(_side_value(report, "baseline", "time_s"), "time_s")
        jiio_t = _fmt(_side_value(report, "jiio", "time_s"), "time_s")
        times = f"{report.get('time_name', 'wall time')}: JIIO {jiio_t}, baseline {base_t}"
        if ratio is not None and won["time"] == "jiio":
            clauses.append(f"JIIO {ratio:.3g}× faster ({times})")
        elif ratio is not None and won["time"] == "baseline":
            clauses.append(f"JIIO {1 / ratio:.3g}× slower ({times})")
        elif ratio is not None:
            clauses.append(f"about equal time ({times})")
    caveat = f" ({report['caveat']})" if report.get("caveat") else ""
    return f"{what}: {'; '.join(clauses)}{caveat}."


def quality_time_plot(report: dict, path: Path) -> Path:
    """Quality against wall time for both methods of one task, labelled axes with units.

    Traces (``report["traces"]``: ``{side: [times_s, values]}``) are drawn as lines; each
    side's reported result as a marker at its time; JIIO's full budget (``full_run``), when
    reported, as a hollow marker.

    Args:
        report: one task's report with ``quality`` (see :func:`verdict`).
        path: the PNG to write.

    Returns:
        ``path``.

    Example:
        >>> import tempfile
        >>> report = {"task": "t", "quality": {"name": "PSNR (dB)", "better": "higher"},
        ...           "baseline": {"name": "Adam", "time_s": 2.0, "objective": 13.0},
        ...           "jiio": {"name": "JIIO", "time_s": 0.5, "objective": 13.1}}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     quality_time_plot(report, Path(tmp) / "q.png").read_bytes()[1:4]
        b'PNG'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    quality = report.get("quality") or {}
    fig = Figure(figsize=(6.4, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    traces = report.get("traces") or {}
    styles = {"baseline": ("baseline", "tab:blue", "s"), "jiio": ("JIIO", "tab:orange", "o")}
    for side, (title, color, marker) in styles.items():
        data = report.get(side) or {}
        name = str(data.get("name", ""))
        label = f"{title}: {name[:48]}{'…' if len(name) > 48 else ''}"
        if side in traces:
            xs, ys = traces[side]
            ax.plot(xs, ys, color=color, linewidth=1.5, label=label)
            label = None
        x, y = _side_value(report, side, "time_s"), _side_value(report, side, "objective")
        if x is not None and y is not None:
            ax.scatter([x], [y], color=color, marker=marker, s=60, zorder=3, label=label)
        full = data.get("full_run") if isinstance(data.get("full_run"), dict) else {}
        if _is_number(full.get("time_s")) and _is_number(full.get("objective")):
            if x is not None and y is not None and side not in traces:
                ax.plot([x, full["time_s"]], [y, full["objective"]], color=color, ls=":", lw=1)
            ax.scatter(
                [full["time_s"]],
                [full["objective"]],
                facecolors="none",
                edgecolors=color,
                marker=marker,
                s=60,
                zorder=3,
                label=f"{title}, its whole budget",
            )
    ax.set_xlim(left=0)
    ax.set_title(f"{report.get('task', '')}: quality against time")
    ax.set_xlabel(f"{report.get('time_name', 'wall time')} (s)")
    ax.set_ylabel(f"{quality.get('name', 'objective')} ({quality.get('better', '?')} is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def image_grid(
    rows: dict[str, Any],
    path: Path,
    title: str,
    labels: dict[str, list[str]] | None = None,
) -> Path:
    """A labelled grid of grey images: one row per method, one column per sample.

    Args:
        rows: ``{row title: images}``, each ``(N, H, W)`` or ``(N, 1, H, W)`` in ``[0, 1]``
            (tensors or arrays); every row shows the same N samples.
        path: the PNG to write.
        title: the figure title.
        labels: optional ``{row title: one caption per image}`` (e.g. true and predicted
            class).

    Returns:
        ``path``.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> images = {"clean": np.zeros((2, 8, 8)), "JIIO": np.ones((2, 8, 8))}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     png = image_grid(images, Path(tmp) / "g.png", "digits",
        ...                      {"JIIO": ["true 1 → 7", "true 2 → 2"]})
        ...     png.read_bytes()[1:4]
        b'PNG'
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = labels or {}
    arrays = {
        name: np.asarray(
            images.detach().cpu().numpy() if hasattr(images, "detach") else images, dtype=float
        )
        for name, images in rows.items()
    }
    count = max(len(images) for images in arrays.values())
    fig = Figure(
        figsize=(1.15 * count + 1.2, 1.35 * len(arrays) + 0.5), dpi=100, layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(arrays), count, squeeze=False)
    for row, (name, images) in enumerate(arrays.items()):
        for column in range(count):
            ax = axes[row][column]
            ax.set_xticks([])
            ax.set_yticks([])
            if column < len(images):
                image = images[column].reshape(images[column].shape[-2:])
                ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                captions = labels.get(name, [])
                if column < len(captions):
                    ax.set_title(captions[column], fontsize=8)
            if column == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def training_curves(
    log: dict,
    path: Path,
    panels: Sequence[tuple[str, Sequence[tuple[str, str, str]], bool]],
    title: str,
    step_name: str = "training step (batch)",
) -> Path:
    """A training run's curves against the training step: per-step lines, per-epoch markers.

    ``log["training_steps"]`` holds one entry per optimiser step (``{"step", "epoch", ...}``,
    counted from 1), so that a one-epoch run shows a curve; ``log["epochs"]`` one entry per epoch
    (``{"epoch", ...}``), drawn at the step that ended it. A log without steps is drawn
    against the epoch.

    Args:
        log: the run's log.
        path: the PNG to write.
        panels: one ``(y label, series, log scale)`` per panel; each series is ``(where, key,
            label)`` with ``where`` ``"steps"`` (``log["training_steps"]``) or ``"epochs"``.
            Series whose key the log lacks are left out.
        title: the figure title.
        step_name: the x-axis label of a log with steps.

    Returns:
        ``path``.

    Example:
        >>> import tempfile
        >>> log = {"training_steps": [{"step": s, "epoch": 1, "loss": 1 / s} for s in (1, 2, 3)],
        ...        "epochs": [{"epoch": 1, "loss": 0.6, "accuracy": 0.8}]}
        >>> panels = [("loss", [("steps", "loss", "per step"), ("epochs", "loss", "epoch mean")],
        ...            True), ("test accuracy", [("epochs", "accuracy", "test")], False)]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     training_curves(log, Path(tmp) / "c.png", panels, "run").read_bytes()[1:4]
        b'PNG'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps, epochs = log.get("training_steps") or [], log.get("epochs") or []
    ends = {entry["epoch"]: entry["step"] for entry in steps}  # the last step of each epoch
    per_step = bool(steps) and all(entry["epoch"] in ends for entry in epochs)
    fig = Figure(figsize=(4.6 * len(panels), 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ylabel, series, log_y) in zip(axes, panels):
        for where, key, label in series:
            entries = [e for e in (steps if where == "steps" else epochs) if _is_number(e.get(key))]
            if not entries or (where == "steps" and not per_step):
                continue
            if where == "steps":
                xs = [entry["step"] for entry in entries]
                style = {"marker": "." if len(xs) <= 60 else None, "linewidth": 1.2}
            else:
                xs = [ends[e["epoch"]] if per_step else e["epoch"] for e in entries]
                style = {"marker": "o", "markersize": 7, "linewidth": 1.0, "linestyle": "--"}
            ax.plot(xs, [float(entry[key]) for entry in entries], label=label, **style)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(step_name if per_step else "epoch")
        if per_step:  # every panel spans the whole run, also one with epoch markers only
            ax.set_xlim(0.5, steps[-1]["step"] + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _ratio(report: dict) -> str:
    """The headline time verdict of a task in words."""
    if "error" in report:
        return "error"
    if "skipped" in report:
        return "skipped"
    if _is_number(report.get("overhead")):
        return f"{_fmt(report['overhead'], 'overhead')} overhead"
    ratio, won = time_ratio(report), verdict(report)["time"]
    if ratio is None:
        return "-"
    if won == "baseline":
        return f"{1 / ratio:.3g}× slower"
    return f"{ratio:.3g}× faster" if won == "jiio" else "equal"


_QUALITY_WORDS = {"jiio": "JIIO better", "baseline": "JIIO worse", "equal": "equal", None: "-"}


def _summary_rows(record: dict) -> list[dict[str, str]]:
    rows = []
    for name, report in record.get("tasks", {}).items():
        quality = report.get("quality") or {}
        direction = {"higher": "↑", "lower": "↓"}.get(quality.get("better", ""), "")
        rows.append(
            {
                "task": name,
                "quality": f"{quality['name']} {direction}" if quality else "-",
                "baseline": _q(_side_value(report, "baseline", "objective")),
                "JIIO": _q(_side_value(report, "jiio", "objective")),
                "verdict": _QUALITY_WORDS[verdict(report)["quality"]],
                "base time": _fmt(_side_value(report, "baseline", "time_s"), "time_s"),
                "JIIO time": _fmt(_side_value(report, "jiio", "time_s"), "time_s"),
                "time": _ratio(report),
            }
        )
    return rows


def summary_table(record: dict, name_width: int = 40) -> str:
    """The plain-text summary table ``jiio demo`` prints, one row per task.

    Args:
        record: the demo record (``{"version", "machine", "tasks", "total_time_s"}``).
        name_width: quality names longer than this are cut with an ellipsis.

    Returns:
        The table, followed by one line per failed or skipped task and the total time; ``"no
        tasks ran"`` for a record without tasks.

    Example:
        >>> side = {"name": "Adam", "time_s": 2.0, "objective": 0.512}
        >>> quality = {"name": "MSE", "better": "lower", "tolerance": 0.001}
        >>> record = {"tasks": {"latent": {"baseline": side, "jiio": {**side, "time_s": 0.25},
        ...                                "speedup_time": 8.0, "quality": quality},
        ...                     "torchdeq": {"error": "ImportError: torchdeq"}}}
        >>> print(summary_table(record))  # doctest: +NORMALIZE_WHITESPACE
        task      quality  baseline   JIIO  verdict  base time  JIIO time       time
        latent    MSE ↓       0.512  0.512    equal        2 s     0.25 s  8× faster
        torchdeq  -               -      -        -          -          -      error
        torchdeq failed: ImportError: torchdeq
    """
    rows = _summary_rows(record)
    if not rows:
        return "no tasks ran"
    for row in rows:
        if len(row["quality"]) > name_width:
            row["quality"] = row["quality"][: name_width - 3] + "… " + row["quality"][-1]
    columns = list(rows[0])
    widths = {col: max([len(col)] + [len(row[col]) for row in rows]) for col in columns}
    left = ("task", "quality")

    def line(cells: dict[str, str]) -> str:
        parts = [
            cells[col].ljust(widths[col]) if col in left else cells[col].rjust(widths[col])
            for col in columns
        ]
        return "  ".join(parts).rstrip()

    lines = [line({col: col for col in columns})] + [line(row) for row in rows]
    for name, report in record.get("tasks", {}).items():
        if "error" in report:
            lines.append(f"{name} failed: {report['error']}")
        elif "skipped" in report:
            lines.append(f"{name} skipped: {report['skipped']}")
    if "interrupted" in record:
        lines.append(f"interrupted: {record['interrupted']}")
    if _is_number(record.get("total_time_s")):
        lines.append(f"total time: {_total_time(record)}")
    return "\n".join(lines)


def _total_time(record: dict) -> str:
    """The demo's wall time, its CPU time, the stated budget, and whether the machine was busy.

    A one-thread demo that had much less than one core (CPU time well under the wall time)
    ran beside other work: its times say more about the machine's load than about the tasks.
    """
    wall = record.get("total_time_s")
    text = _fmt(wall, "time_s")
    cpu = record.get("cpu_time_s")
    if _is_number(cpu):
        text += f", {_fmt(cpu, 'time_s')} of CPU"
    if _is_number(record.get("budget_s")):
        text += f" (stated budget {_fmt(record['budget_s'], 'time_s')})"
    threads = (record.get("machine") or {}).get("threads", 1)
    if _is_number(cpu) and _is_number(wall) and wall > 0 and threads == 1 and cpu < 0.6 * wall:
        text += (
            f"; the machine was busy: the demo had {100 * cpu / wall:.0f} % of one core, so "
            "its times are longer than on an idle machine"
        )
    return text


def summary_markdown(record: dict) -> str:
    """The summary table as Markdown (the README's demo table).

    Args:
        record: the demo record.

    Returns:
        A pipe table, one row per task, the columns of :func:`summary_table`.

    Example:
        >>> side = {"name": "Adam", "time_s": 2.0, "objective": 0.5}
        >>> record = {"tasks": {"latent": {"baseline": side, "jiio": {**side, "time_s": 0.5},
        ...           "quality": {"name": "MSE", "better": "lower", "tolerance": 0.0}}}}
        >>> print(summary_markdown(record).splitlines()[2])
        | latent | MSE ↓ | 0.5 | 0.5 | equal | 2 s | 0.5 s | 4× faster |
    """
    rows = _summary_rows(record)
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row.values()) + " |" for row in rows]
    return "\n".join(lines)


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def format_report(report: dict) -> str:
    """A small text table of one benchmark report (what ``jiio bench TASK`` prints).

    Args:
        report: a report from :func:`jiio_ext.apps.bench.run_task`.

    Returns:
        The table as text.

    Example:
        >>> side = {"name": "a", "time_s": 1.0, "f_evals": 3, "objective": 0.5, "peak_mem_mb": 1.0}
        >>> print(format_report({"task": "t", "device": "cpu", "baseline": side, "jiio": side,
        ...                      "speedup_time": 1.0}).splitlines()[0])
        jiio bench t on cpu
    """
    lines = [f"jiio bench {report['task']} on {report['device']}"]
    header = f"  {'side':<9}{'time (s)':>10}{'f evals':>9}{'objective':>12}{'peak MB':>9}  method"
    lines.append(header)
    for key in ("baseline", "jiio"):
        side = report[key]
        lines.append(
            f"  {key:<9}{_short(side.get('time_s')):>10}{_short(side.get('f_evals')):>9}"
            f"{_short(side.get('objective')):>12}{_short(side.get('peak_mem_mb')):>9}  "
            f"{side.get('name', '')}"
        )
    for key in ("speedup_time", "speedup_evals", "overhead"):
        if key in report:
            lines.append(f"  {key}: {_short(report[key])}")
    default = report.get("jiio_default")
    if default is not None:
        reached = f"{default['speedup_time']}x faster" if default["reached_baseline"] else "no"
        lines.append(
            f"  jiio with default options: objective {_short(default['objective'])}, "
            f"{_short(default['time_s'])} s, reached the baseline: {reached}"
        )
    if "user_models" in report:
        from jiio_ext.apps.bench.user_classifiers import format_user_attacks

        lines.append(format_user_attacks({"rows": report["user_models"]}))
    return "\n".join(lines)


def _flatten(mapping: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as one level with dotted keys; lists of scalars joined."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list | tuple):
            flat[f"{prefix}{key}"] = ", ".join(_fmt(item) for item in value)
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _cell(value: object, key: str) -> str:
    css = ' class="num"' if value is None or _is_number(value) else ""
    return f"<td{css}>{html.escape(_fmt(value, key.rsplit('.', 1)[-1]))}</td>"


def _kv_table(mapping: dict) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(_label(key))}</th>{_cell(value, key)}</tr>"
        for key, value in _flatten(mapping).items()
    )
    return f'<table class="kv">{rows}</table>'


def _sides_table(columns: list[tuple[str, dict]]) -> str:
    """One row per field, one column per method (baseline, JIIO, other baselines)."""
    flats = [(title, _flatten(side)) for title, side in columns]
    keys = [key for key in _SIDE_ORDER if any(key in flat for _, flat in flats)]
    for _, flat in flats:
        keys += [key for key in flat if key not in keys]
    head = "".join(f"<th>{html.escape(title)}</th>" for title, _ in flats)
    rows = "".join(
        f"<tr><th>{html.escape(_label(key))}</th>"
        + "".join(_cell(flat.get(key), key) for _, flat in flats)
        + "</tr>"
        for key in keys
    )
    return f'<table class="sides"><tr><th></th>{head}</tr>{rows}</table>'


def _chips(mapping: dict) -> str:
    """Short ``name value`` facts in one wrapped row (machine, task settings)."""
    items = "".join(
        f"<li><b>{html.escape(_label(key))}</b> "
        f"{html.escape(_fmt(value, key.rsplit('.', 1)[-1]))}</li>"
        for key, value in _flatten(mapping).items()
    )
    return f'<ul class="chips">{items}</ul>' if items else ""


def _report_body(report: dict) -> str:
    """The numbers of one report; nested baseline-vs-JIIO reports get their own subsection."""
    parts = []
    if "error" in report:
        parts.append(f'<p class="error">{html.escape(str(report["error"]))}</p>')
    scalars = {
        key: value
        for key, value in report.items()
        if key not in _SHOWN_APART and not isinstance(value, dict | list | tuple)
    }
    parts.append(_chips(scalars))
    sides = [
        (title, report[key])
        for title, key in (("baseline", "baseline"), ("JIIO", "jiio"))
        if isinstance(report.get(key), dict)
    ]
    if sides:
        parts.append(_sides_table(sides))
    for key, value in report.items():
        if key in _SHOWN_APART or not isinstance(value, dict | list | tuple) or not value:
            continue
        parts.append(f"<h3>{html.escape(_label(key))}</h3>")
        if isinstance(value, dict) and ("baseline" in value or "jiio" in value):
            parts.append(_report_body(value))
        elif isinstance(value, dict):
            parts.append(_kv_table(value))
        elif all(isinstance(item, dict) for item in value):
            titled = [(item.get("name", f"#{i + 1}"), item) for i, item in enumerate(value)]
            parts.append(_sides_table(titled))
        else:
            parts.append(_kv_table({key: value}))
    return "\n".join(part for part in parts if part)


def _caption(path: Path) -> str:
    return re.sub(r"[_\-]+", " ", path.stem).strip()


def _is_wide_png(raw: bytes) -> bool:
    """A PNG over 1.5 times as wide as tall (an image grid, training curves): full width.

    Plots (about 1.4:1) share a row; a grid of eight samples per row in half the page would
    shrink its captions below reading size.
    """
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        return False
    width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    return width > 1.5 * height


def _figures(paths: list[Path]) -> str:
    figures = []
    for path in map(Path, paths):
        caption = html.escape(_caption(path))
        mime = _IMAGE_TYPES.get(path.suffix.lower())
        if mime is None or not path.is_file():
            reason = "missing" if mime else "not an embeddable image"
            figures.append(
                f'<figure><p class="note">{html.escape(path.name)}: {reason}</p>'
                f"<figcaption>{caption}</figcaption></figure>"
            )
            continue
        raw = path.read_bytes()
        data = base64.b64encode(raw).decode("ascii")
        wide = ' class="wide"' if _is_wide_png(raw) else ""
        figures.append(
            f'<figure{wide}><img src="data:{mime};base64,{data}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return f'<div class="figures">{"".join(figures)}</div>' if figures else ""


def _anchor(name: str) -> str:
    return "task-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _summary_html(record: dict) -> str:
    rows = _summary_rows(record)
    if not rows:
        return '<p class="note">No tasks ran.</p>'
    head = "".join(f"<th>{html.escape(col)}</th>" for col in rows[0])
    body = []
    for row, report in zip(rows, record["tasks"].values()):
        cells = [f'<td><a href="#{_anchor(row["task"])}">{html.escape(row["task"])}</a></td>']
        won = verdict(report)
        for col, text in list(row.items())[1:]:
            side = {"verdict": won["quality"], "time": won["time"]}.get(col)
            css = {"jiio": "num good", "baseline": "num bad"}.get(side or "", "num")
            css = "" if col.startswith("quality") else css
            cells.append(
                f'<td class="{css}">{html.escape(text)}</td>'
                if css
                else f"<td>{html.escape(text)}</td>"
            )
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


_VERDICT_WORDS = re.compile(
    r"equal quality|JIIO (?:better|worse) on quality|JIIO [0-9.]+× (?:faster|slower)"
    r"|about equal time"
)


def _bold_verdicts(text: str) -> str:
    """The verdicts of a first-screen sentence in bold, so that a reader can scan them."""
    return _VERDICT_WORDS.sub(lambda match: f"<b>{match.group(0)}</b>", text)


def _machine_line(machine: dict) -> str:
    """The machine in a few words; a CUDA build of torch on a CPU run says so."""
    device = str(machine.get("device", "cpu"))
    words = machine.get("gpu") or f"{machine.get('cpu_count', '?')} CPU cores"
    torch_version = str(machine.get("torch", "?"))
    note = ""
    if "+cu" in torch_version and not device.startswith("cuda"):
        note = " (a CUDA build of torch; this run used the CPU)"
    return (
        f"{device}, {words}, {machine.get('threads', '?')} torch thread(s), "
        f"torch {torch_version}{note}"
    )


def write_report(record: dict, folder: Path, images: dict[str, list[Path]] | None = None) -> Path:
    """Write the demo's self-contained HTML report, ``folder/report.html``.

    Everything is in the one file: images are embedded as base64 data URIs, the style is
    inline, there are no scripts and no links other than to the page's own sections. Keys
    a task does not report are shown as ``-``; a task with an ``"error"`` shows it.

    Args:
        record: ``{"version", "machine", "tasks": {name: report}, "total_time_s"}``, each
            report as returned by :func:`jiio_ext.apps.bench.run_task` (or ``{"error": ...}``).
        folder: where to write the report (created if needed).
        images: PNG or JPEG files to show, by task name; names that are not tasks get their
            own section. Captions come from the file names.

    Returns:
        The path of the report.

    Example:
        >>> import tempfile
        >>> record = {"version": "0.1", "machine": {}, "tasks": {"t": {"error": "boom"}}}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = write_report(record, Path(tmp) / "run")
        ...     path.name, "boom" in path.read_text()
        ('report.html', True)
    """
    images = images or {}
    tasks = record.get("tasks", {})
    machine = {
        key: value
        for key, value in record.items()
        if key not in ("version", "machine", "tasks", "total_time_s", "cpu_time_s", "interrupted")
    }
    machine.update(record.get("machine") or {})
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    total = _total_time(record)
    memory = ""
    if not str((record.get("machine") or {}).get("device", "cpu")).startswith("cuda"):
        memory = (
            " Peak memory on a CPU is the growth of the task's resident set: a side measured "
            "after the other reuses memory the allocator kept and can read near 0 MB, so CPU "
            "memory figures do not rank the methods (a GPU's allocator counters do)."
        )
    sentences = "".join(
        f'<li><a href="#{_anchor(name)}">{html.escape(name)}</a>'
        f" — {_bold_verdicts(html.escape(headline(report)))}</li>"
        for name, report in tasks.items()
    )
    body = [
        "<h1>jiio demo report</h1>",
        f'<p class="meta">jiio-ext {html.escape(_fmt(record.get("version")))} · '
        f"{html.escape(_fmt(record.get('budget')))} budget · {len(tasks)} "
        f"task{'' if len(tasks) == 1 else 's'} · total time {html.escape(total)} · on "
        f"{html.escape(_machine_line(record.get('machine') or {}))} · written {stamp}</p>",
    ]
    if "interrupted" in record:
        body.append(
            f'<p class="error">Interrupted ({html.escape(str(record["interrupted"]))}): '
            "only the tasks finished before are shown.</p>"
        )
    body += [
        f'<ul class="sentences">{sentences}</ul>' if sentences else "",
        "<h2>Summary</h2>",
        _summary_html(record),
        '<p class="note">Quality: each task\'s own measure, ↑ higher or ↓ lower is better; '
        "differences within the task's noise count as equal. Time ratio: the baseline's time "
        "over JIIO's as each task measures it (a task that compares at equal quality times JIIO "
        "until it reaches the baseline's quality); overhead: JIIO's time per iteration over one "
        "f evaluation plus one VJP. JIIO runs with the library's default options where the "
        f"bench runs them, else as the bench runs it (its method row names the settings).{memory}"
        "</p>",
    ]
    for name, report in tasks.items():
        body.append(f'<section id="{_anchor(name)}"><h2>{html.escape(name)}</h2>')
        body.append(f'<p class="lead">{html.escape(task_sentence(name, report))}</p>')
        pictures = sorted(images.get(name, []), key=lambda p: Path(p).stem != "quality_vs_time")
        body.append(_figures(pictures))
        body.append(_report_body(report))
        body.append("</section>")
    body.append('<section id="machine"><h2>Machine and versions</h2>')
    body.append(_chips(machine))
    body.append("</section>")
    for name, paths in images.items():
        if name not in tasks:
            body.append(f"<section><h2>{html.escape(name)}</h2>{_figures(paths)}</section>")
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>jiio demo report</title>\n<style>{_CSS}</style>\n</head>\n"
        "<body>\n<main>\n"
        + "\n".join(part for part in body if part)
        + "\n</main>\n</body>\n</html>\n"
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
