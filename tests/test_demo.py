"""jiio demo on tiny budgets: the record, the report, the image folders, Ctrl-C, the weights."""

from __future__ import annotations

import base64
import dataclasses
import json
import re

import pytest

pytest.importorskip("torchdeq")
pytest.importorskip("torchattacks")
pytest.importorskip("kornia")

from jiio_ext.apps.demo import run_demo  # noqa: E402
from jiio_ext.apps.demo_tasks import TASKS, WEIGHTS, load_weights  # noqa: E402


def strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_tiny_demo_writes_a_report_with_numbers_and_images(tmp_path):
    tasks = ["inverse", "adversarial-training", "generative-training"]
    folder = run_demo(tmp_path, budget="tiny", tasks=tasks, verbose=False)
    record = strict_json((folder / "record.json").read_text())
    assert list(record["tasks"]) == tasks
    assert record["cpu_time_s"] >= sum(r["cpu_time_s"] for r in record["tasks"].values())
    for name in tasks:
        report = record["tasks"][name]
        assert "error" not in report, report
        assert report["baseline"]["time_s"] > 0 and report["jiio"]["time_s"] > 0
        assert isinstance(report["jiio"]["objective"], float)
        assert report["budget_s"] == TASKS[name].budget_s("tiny", "cpu") > 0
        assert report["wall_time_s"] > 0 and report["cpu_time_s"] > 0  # the child's CPU
        assert report["quality"]["better"] in ("higher", "lower")
        assert (folder / name / "quality_vs_time.png").is_file()
    inverse = record["tasks"]["inverse"]
    assert len(inverse["traces"]["jiio"][0]) == len(inverse["traces"]["jiio"][1]) > 0
    assert "shipped digits decoder" in inverse["model"] and "latents" not in inverse
    assert (folder / "inverse" / "reconstructions.png").is_file()  # baseline and JIIO images
    assert (folder / "generative-training" / "JIIO_curves.png").is_file()
    for prefix in ("baseline_", "JIIO_"):
        assert (folder / "generative-training" / f"{prefix}reconstructions.png").is_file()
    assert (folder / "adversarial-training" / "JIIO_examples.png").is_file()
    assert (folder / "adversarial-training" / "baseline_PGD_examples.png").is_file()
    html = (folder / "report.html").read_text()
    sources = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(sources) >= 5
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for name in tasks:
        assert f'id="task-{name}"' in html
    assert "higher is better" in html


def test_a_failing_task_is_recorded_not_fatal(tmp_path, monkeypatch):
    def broken(budget, device, folder):
        raise RuntimeError("solver exploded")

    task = dataclasses.replace(TASKS["generative-training"], run=broken)
    monkeypatch.setitem(TASKS, "generative-training", task)
    folder = run_demo(tmp_path, budget="tiny", tasks=["generative-training"], verbose=False)
    record = strict_json((folder / "record.json").read_text())
    assert record["tasks"]["generative-training"]["error"] == "RuntimeError: solver exploded"
    assert "solver exploded" in (folder / "report.html").read_text()


def test_ctrl_c_writes_the_report_of_the_tasks_done(tmp_path, monkeypatch):
    def interrupted(budget, device, folder):
        raise KeyboardInterrupt

    monkeypatch.setitem(TASKS, "latent", dataclasses.replace(TASKS["latent"], run=interrupted))
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path, budget="tiny", tasks=["overhead", "latent", "torchdeq"], verbose=False)
    (folder,) = tmp_path.iterdir()
    record = strict_json((folder / "record.json").read_text())
    assert list(record["tasks"]) == ["overhead"] and "latent" in record["interrupted"]
    assert "Interrupted" in (folder / "report.html").read_text()


def test_gpu_only_options_are_skipped_on_cpu(tmp_path):
    folder = run_demo(tmp_path, budget="tiny", tasks=["autocast"], verbose=False)
    report = strict_json((folder / "record.json").read_text())["tasks"]["autocast"]
    assert "--device cuda" in report["skipped"]


def test_shipped_weights_are_small_and_load_with_weights_only():
    files = sorted(WEIGHTS.glob("*.pt"))
    assert [f.name for f in files] == ["digits_classifier.pt", "digits_decoder.pt"]
    assert sum(f.stat().st_size for f in files) < 1_000_000
    for name in ("digits_classifier", "digits_decoder"):
        stored = load_weights(name)
        assert stored["state_dict"] and stored["recipe"]
    with pytest.raises(FileNotFoundError, match="make_demo_weights"):
        load_weights("nope")


def test_budgets_fit_the_promises():
    assert sum(task.budget_s("quick", "cpu") for task in TASKS.values()) <= 160
    assert sum(task.budgets["full"] for task in TASKS.values()) <= 15 * 60


def test_bad_budget_and_task(tmp_path):
    with pytest.raises(ValueError, match="budget"):
        run_demo(tmp_path, budget="huge")
    with pytest.raises(ValueError, match="tasks"):
        run_demo(tmp_path, tasks=["sorting"])
