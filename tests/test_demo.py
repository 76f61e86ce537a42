"""jiio demo on tiny budgets: the record, the report and the image folders."""

from __future__ import annotations

import base64
import json
import re

import pytest

pytest.importorskip("torchdeq")
pytest.importorskip("torchattacks")
pytest.importorskip("kornia")

from jiio_ext.demo import run_demo  # noqa: E402


def test_tiny_demo_writes_a_report_with_numbers_and_images(tmp_path):
    tasks = ["inverse", "adversarial-training", "generative-training"]
    folder = run_demo(tmp_path, budget="tiny", tasks=tasks, verbose=False)
    record = json.loads((folder / "record.json").read_text())
    assert list(record["tasks"]) == tasks
    for name in tasks:
        report = record["tasks"][name]
        assert "error" not in report, report
        assert report["baseline"]["time_s"] > 0 and report["jiio"]["time_s"] > 0
        assert isinstance(report["jiio"]["objective"], float)
    inverse = record["tasks"]["inverse"]
    assert len(inverse["traces"]["jiio"][0]) == len(inverse["traces"]["jiio"][1]) > 0
    assert (folder / "inverse" / "convergence.png").is_file()
    assert (folder / "generative-training" / "jiio_reconstructions.png").is_file()
    assert (folder / "adversarial-training" / "jiio_examples.png").is_file()
    html = (folder / "report.html").read_text()
    sources = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(sources) >= 5
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for name in tasks:
        assert f'id="{name}"' in html or name in html
    assert re.search(r"\d+(\.\d+)?×", html)


def test_a_failing_task_is_recorded_not_fatal(tmp_path, monkeypatch):
    import jiio_ext.demo as demo

    def broken(budget, device, folder):
        raise RuntimeError("solver exploded")

    monkeypatch.setitem(demo.TRAINING, "generative-training", broken)
    folder = run_demo(tmp_path, budget="tiny", tasks=["generative-training"], verbose=False)
    record = json.loads((folder / "record.json").read_text())
    assert record["tasks"]["generative-training"]["error"] == "RuntimeError: solver exploded"
    assert "solver exploded" in (folder / "report.html").read_text()


def test_bad_budget_and_task(tmp_path):
    with pytest.raises(ValueError, match="budget"):
        run_demo(tmp_path, budget="huge")
    with pytest.raises(ValueError, match="tasks"):
        run_demo(tmp_path, tasks=["sorting"])
