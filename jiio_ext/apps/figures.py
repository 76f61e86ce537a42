"""Figures of the demo and the trainers: matplotlib PNGs, drawn off-screen (Agg).

Objective or residual against time (:func:`convergence_plot`), a task's quality against wall
time (:func:`quality_time_plot`), labelled grids of images (:func:`image_grid`) and a
training run's curves (:func:`training_curves`). The HTML report
(:func:`jiio_ext.apps.report.write_report`) embeds them.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = convergence_plot({"JIIO": ([0.1, 0.2], [1.0, 0.01])}, Path(tmp) / "c.png",
    ...                            "latent", "objective")
    ...     png.name
    'c.png'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jiio_ext.apps.summary import _is_number, _side_value

__all__ = ["convergence_plot", "image_grid", "quality_time_plot", "training_curves"]


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
