"""The README's usage snippet runs as written."""

from __future__ import annotations

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
