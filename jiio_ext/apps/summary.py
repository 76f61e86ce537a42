"""Plain-text verdicts and summaries of benchmark reports and ``jiio demo`` records.

Who won a task on quality and on time (:func:`verdict`, :func:`time_ratio`), the sentences
the demo prints and its report shows (:func:`task_sentence`, :func:`headline`), the demo's
summary table as text and Markdown (:func:`summary_table`, :func:`summary_markdown`) and the
table ``jiio bench TASK`` prints (:func:`format_report`). The HTML page
(:mod:`jiio_ext.apps.report`) and the figures (:mod:`jiio_ext.apps.figures`) read reports
with this module's number helpers too.

Example:
    >>> side = {"name": "Adam", "time_s": 2.0, "objective": 0.5}
    >>> report = {"baseline": side, "jiio": {**side, "time_s": 0.5},
    ...           "quality": {"name": "MSE", "better": "lower", "tolerance": 0.0}}
    >>> verdict(report), time_ratio(report)
    ({'quality': 'equal', 'time': 'jiio'}, 4.0)
"""

from __future__ import annotations

import math

__all__ = [
    "format_report",
    "headline",
    "summary_markdown",
    "summary_table",
    "task_sentence",
    "time_ratio",
    "verdict",
]


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
    for key in ("baseline", "jiio", "jiio_tuned"):
        if key not in report:
            continue
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
