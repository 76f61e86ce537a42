"""The ``jiio demo`` report: one self-contained HTML page, and the machine it ran on.

The demo collects one benchmark report per task (see :func:`jiio_ext.apps.bench.run_task`) into a
record ``{"version", "machine", "tasks", "total_time_s"}``; :func:`write_report` turns it into
``report.html`` with every image embedded, and :func:`machine_info` describes the machine for
the record. The page's sentences and summary come from :mod:`jiio_ext.apps.summary`, its
plots from :mod:`jiio_ext.apps.figures`.

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
import os
import platform
import re
import time
from pathlib import Path

from jiio_ext.apps.summary import (
    _fmt,
    _is_number,
    _summary_rows,
    _total_time,
    headline,
    task_sentence,
    verdict,
)

__all__ = ["machine_info", "write_report"]

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


def _label(key: str) -> str:
    return " / ".join(_LABELS.get(part, part.replace("_", " ")) for part in key.split("."))


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
