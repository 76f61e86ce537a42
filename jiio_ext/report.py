"""The ``jiio demo`` report: a self-contained HTML page, convergence plots and a text summary.

The demo collects one benchmark report per task (see :func:`jiio_ext.bench.run_task`) into a
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
from pathlib import Path

__all__ = ["convergence_plot", "machine_info", "summary_table", "write_report"]

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
}
_SHOWN_APART = ("task", "error", "baseline", "jiio")
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
.error { background: #fdecea; border-left: 4px solid #c62828; padding: 8px 12px;
         white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.9em; }
.note { color: #666; font-size: 0.88em; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr));
           gap: 16px; }
figure { margin: 0; border: 1px solid #e6e8eb; padding: 8px; }
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
) -> Path:
    """Plot objective or residual against time (or iteration), log scale, one line per method.

    Non-positive and non-finite values cannot be shown on a log scale and are left out.

    Args:
        traces: ``{label: (xs, ys)}``, e.g. ``{"JIIO": (times, objectives), "Adam": ...}``.
        path: the PNG file to write (its folder is created).
        title: the plot title.
        ylabel: the y-axis label.
        xlabel: the x-axis label.

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
        points = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and y > 0]
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            label=label,
            marker="o" if len(points) <= 40 else None,
            markersize=3,
            linewidth=1.6,
        )
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
    if key.endswith("time_s"):
        return f"{value:.3g} s"
    if key.endswith("mem_mb"):
        return f"{value:.3g} MB"
    if key.startswith("speedup") or key == "overhead":
        return f"{value:.3g}×"
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def _label(key: str) -> str:
    return " / ".join(_LABELS.get(part, part.replace("_", " ")) for part in key.split("."))


def _ratio(report: dict) -> str:
    """The headline time ratio of a task: a speed-up, an overhead or an error."""
    if "error" in report:
        return "error"
    if _is_number(report.get("speedup_time")):
        return f"{_fmt(report['speedup_time'], 'speedup_time')} faster"
    if _is_number(report.get("overhead")):
        return f"{_fmt(report['overhead'], 'overhead')} overhead"
    return "-"


def _summary_rows(record: dict) -> list[dict[str, str]]:
    rows = []
    for name, report in record.get("tasks", {}).items():
        baseline, jiio = report.get("baseline") or {}, report.get("jiio") or {}
        rows.append(
            {
                "task": name,
                "baseline": _fmt(baseline.get("name")),
                "baseline time": _fmt(baseline.get("time_s"), "time_s"),
                "JIIO time": _fmt(jiio.get("time_s"), "time_s"),
                "time ratio": _ratio(report),
                "baseline objective": _fmt(baseline.get("objective")),
                "JIIO objective": _fmt(jiio.get("objective")),
            }
        )
    return rows


def summary_table(record: dict, name_width: int = 34) -> str:
    """The plain-text summary table ``jiio demo`` prints, one row per task.

    Args:
        record: the demo record (``{"version", "machine", "tasks", "total_time_s"}``).
        name_width: baseline names longer than this are cut with an ellipsis.

    Returns:
        The table, followed by one line per failed task and the total time; ``"no tasks ran"``
        for a record without tasks.

    Example:
        >>> side = {"name": "Adam", "time_s": 2.0, "objective": 0.512}
        >>> record = {"tasks": {"latent": {"baseline": side, "jiio": {**side, "time_s": 0.25},
        ...                                "speedup_time": 8.0},
        ...                     "torchdeq": {"error": "ImportError: torchdeq"}}}
        >>> print(summary_table(record))  # doctest: +NORMALIZE_WHITESPACE
        task      baseline  baseline time  JIIO time  time ratio  baseline objective  JIIO objective
        latent    Adam              2 s     0.25 s    8× faster               0.512           0.512
        torchdeq  -                   -          -        error                   -               -
        torchdeq failed: ImportError: torchdeq
    """
    rows = _summary_rows(record)
    if not rows:
        return "no tasks ran"
    for row in rows:
        if len(row["baseline"]) > name_width:
            row["baseline"] = row["baseline"][: name_width - 1] + "…"
    columns = list(rows[0])
    widths = {col: max([len(col)] + [len(row[col]) for row in rows]) for col in columns}
    left = ("task", "baseline")

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
    if _is_number(record.get("total_time_s")):
        lines.append(f"total time: {_fmt(record['total_time_s'], 'time_s')}")
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
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        figures.append(
            f'<figure><img src="data:{mime};base64,{data}" alt="{caption}">'
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
        for col, text in list(row.items())[1:]:
            speedup = report.get("speedup_time")
            good = col == "time ratio" and _is_number(speedup) and speedup > 1
            css = ' class="num good"' if good else ("" if col == "baseline" else ' class="num"')
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(record: dict, folder: Path, images: dict[str, list[Path]] | None = None) -> Path:
    """Write the demo's self-contained HTML report, ``folder/report.html``.

    Everything is in the one file: images are embedded as base64 data URIs, the style is
    inline, there are no scripts and no links other than to the page's own sections. Keys
    a task does not report are shown as ``-``; a task with an ``"error"`` shows it.

    Args:
        record: ``{"version", "machine", "tasks": {name: report}, "total_time_s"}``, each
            report as returned by :func:`jiio_ext.bench.run_task` (or ``{"error": ...}``).
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
        if key not in ("version", "machine", "tasks", "total_time_s")
    }
    machine.update(record.get("machine") or {})
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    body = [
        "<h1>jiio demo report</h1>",
        f'<p class="meta">jiio-ext {html.escape(_fmt(record.get("version")))} · '
        f"{len(tasks)} task{'' if len(tasks) == 1 else 's'} · total time "
        f"{html.escape(_fmt(record.get('total_time_s'), 'time_s'))} · written {stamp}</p>",
        _chips(machine),
        "<h2>Summary</h2>",
        _summary_html(record),
        "<p class=\"note\">time ratio: the baseline's time over JIIO's, as each task measures it "
        "(a speed-up above 1× favours JIIO); overhead: JIIO's time per iteration over the "
        "baseline's. Objectives are the task's own quality measure.</p>",
    ]
    for name, report in tasks.items():
        body.append(f'<section id="{_anchor(name)}"><h2>{html.escape(name)}</h2>')
        if "error" not in report:
            lead = html.escape(_ratio(report))
            body.append(f'<p class="lead">JIIO: <strong>{lead}</strong></p>')
        body.append(_report_body(report))
        body.append(_figures(images.get(name, [])))
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
