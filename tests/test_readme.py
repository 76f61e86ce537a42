"""The README's usage snippet runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python snippet"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102
    sol, ref = namespace["sol"], namespace["ref"]
    assert sol.success
    assert float((sol.objective - ref.objective).abs().max()) < 1e-3


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[demo]" && jiio demo --quick' in text
    assert 'pip install -e ".[all]" && python -m pytest' in text
    assert "python -m pytest" in ci and '-e ".[all]"' in ci


def test_extras_split_the_demo_from_the_test_tools():
    text = (README.parent / "pyproject.toml").read_text()
    extras = dict(re.findall(r"^([a-z]+) = \[(.*)\]$", text, flags=re.M))
    assert "pytest" not in extras["demo"] and "ruff" not in extras["demo"]
    assert "pytest" in extras["dev"]
    assert "demo" in extras["all"] and "dev" in extras["all"]
    assert (README.parent / "LICENSE").read_text().startswith("MIT License")


def _ratio(text: str) -> float | None:
    match = re.match(r"([\d.]+)× (faster|slower)", text)
    if not match:
        return None
    value = float(match.group(1))
    return value if match.group(2) == "faster" else 1 / value


def test_readme_demo_table_matches_the_stored_record():
    from jiio_ext.apps.summary import time_ratio, verdict

    root = README.parent
    record = json.loads((root / "docs" / "demo_record.json").read_text())
    noise = re.search(r"±\s*(\d+)\s*%", (root / "docs" / "results.md").read_text())
    assert noise, "docs/results.md states no run-to-run noise (±N %)"
    noise = float(noise.group(1)) / 100
    block = re.search(r"<!-- demo-table -->\n(.*?)\n<!-- /demo-table -->", README.read_text(), re.S)
    assert block, "README.md has no demo table"
    lines = block.group(1).strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[cells["task"]] = cells
    assert list(rows) == list(record["tasks"])
    words = {"jiio": "JIIO better", "baseline": "JIIO worse", "equal": "equal", None: "-"}
    for name, report in record["tasks"].items():
        row = rows[name]
        assert row["verdict"] == words[verdict(report)["quality"]], name
        for side, column in (("baseline", "baseline"), ("jiio", "JIIO")):
            value = (report.get(side) or {}).get("objective")
            if value is not None:
                assert abs(float(row[column]) - value) <= 1e-3 * abs(value), (name, side)
        stored, shown = time_ratio(report), _ratio(row["time"])
        if "overhead" not in report and stored is not None:
            assert shown is not None and abs(shown / stored - 1) <= noise, (name, row["time"])
