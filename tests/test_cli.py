"""The jiio command and the benchmark reports (quick budgets)."""

from __future__ import annotations

import json

import pytest

from jiio_ext.bench import run_task
from jiio_ext.cli import main

SIDE_KEYS = {"name", "time_s", "f_evals", "objective", "peak_mem_mb"}


def test_bench_latent_json_schema(capsys):
    assert main(["bench", "latent", "--quick", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"task", "device", "baseline", "jiio", "speedup_time", "speedup_evals"} <= set(report)
    assert SIDE_KEYS <= set(report["baseline"]) and SIDE_KEYS <= set(report["jiio"])
    assert report["task"] == "latent" and report["device"] == "cpu"
    assert report["jiio"]["reached_baseline"]
    # equal-objective comparison: JIIO's reported objective is at least as good
    assert report["jiio"]["objective"] <= report["baseline"]["objective"]
    assert report["speedup_time"] > 0 and report["speedup_evals"] > 0


def test_bench_overhead_json_schema():
    report = run_task("overhead", quick=True, repeats=2)
    assert report["overhead"] > 0
    assert report["baseline"]["f_evals"] == report["jiio"]["f_evals"] == 1
    json.dumps(report, allow_nan=False)


def test_demo_writes_record_and_report(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--tasks", "latent", "overhead"]) == 0
    records = list(tmp_path.glob("*/record.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert set(record["tasks"]) == {"latent", "overhead"}
    assert "torch" in record["machine"]
    assert record["tasks"]["latent"]["speedup_time"] > 0
    html = (records[0].parent / "report.html").read_text()
    assert "latent" in html and "×" in html
    out = capsys.readouterr().out
    assert "record written to" in out and "report written to" in out
    with pytest.raises(SystemExit, match="tasks"):
        main(["demo", "--out", str(tmp_path), "--tasks", "nope"])


@pytest.mark.slow
def test_full_quick_demo_runs_every_task(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    record = json.loads(next(tmp_path.glob("*/record.json")).read_text())
    from jiio_ext.bench import TASKS
    from jiio_ext.demo import TRAINING

    assert set(record["tasks"]) == set(TASKS) | set(TRAINING)
    assert not [name for name, report in record["tasks"].items() if "error" in report]


def test_unknown_task_and_bad_device():
    with pytest.raises(SystemExit) as err:
        main(["bench", "nope"])
    assert err.value.code == 2
    with pytest.raises(SystemExit, match="CUDA is not available|device"):
        main(["bench", "latent", "--device", "cuda:7"])
    with pytest.raises(SystemExit, match="--device"):
        main(["bench", "latent", "--device", "not-a-device"])
    with pytest.raises(ValueError, match="task"):
        run_task("nope")


def test_bench_torchdeq_schema():
    pytest.importorskip("torchdeq")
    report = run_task("torchdeq", quick=True)
    assert SIDE_KEYS <= set(report["baseline"]) and SIDE_KEYS <= set(report["jiio"])
    assert report["task"] == "torchdeq" and report["speedup_time"] > 0
    json.dumps(report, allow_nan=False)


def test_bench_adversarial_schema():
    pytest.importorskip("torchattacks")
    report = run_task("adversarial", quick=True)
    assert SIDE_KEYS <= set(report["baseline"]) and SIDE_KEYS <= set(report["jiio"])
    assert 0 <= report["jiio"]["objective"] <= 1 and 0 <= report["l2"]["jiio"]["objective"] <= 1
    assert report["clean_accuracy"] > 0.5
    json.dumps(report, allow_nan=False)
