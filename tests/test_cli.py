"""The jiio command and the benchmark reports (quick budgets)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from jiio_ext.apps.bench import TASKS, run_task
from jiio_ext.apps.cli import BENCH_TASKS, build_parser, configure_threads, main

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
    report = run_task("overhead", quick=True, repeats=8)
    # a ratio of two timings: its value is the bench's to print, not a test's to assert
    assert isinstance(report["overhead"], float) and math.isfinite(report["overhead"])
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
    from jiio_ext.apps.demo_tasks import TASKS

    assert set(record["tasks"]) == set(TASKS)
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


HELP_COMMANDS = [
    ["--help"],
    ["--version"],
    ["bench", "--help"],
    ["demo", "--help"],
    ["train", "--help"],
    *(["train", name, "--help"] for name in ("adversarial", "generative", "inverse", "meta")),
]


def test_help_and_version_import_no_torch():
    code = (
        "import sys\nfrom jiio_ext.apps.cli import main\n"
        f"for argv in {HELP_COMMANDS!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "    print('TORCH' if 'torch' in sys.modules else 'NO TORCH', argv)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    answers = [line for line in out.stdout.splitlines() if "TORCH" in line]
    assert len(answers) == len(HELP_COMMANDS)
    assert not [line for line in answers if line.startswith("TORCH")], answers


def test_train_option_choices_match_the_task_modules():
    from jiio_ext.apps import train_options
    from jiio_ext.apps.tasks import generative, meta, meta_methods

    assert train_options.GENERATIVE_METHODS == generative.METHODS
    assert train_options.PROBLEMS == generative.PROBLEMS
    assert train_options.META_TASKS == meta.TASKS
    assert train_options.META_METHODS == meta_methods.METHODS
    assert train_options.DATASETS == generative.DATASETS  # the image data sets it accepts


def test_bench_names_match_the_benchmarks():
    assert sorted(BENCH_TASKS) == sorted(TASKS)


def test_help_shows_defaults_and_every_trainer_takes_the_common_flags():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["train"]
    trainers = sub._subparsers._group_actions[0].choices
    assert set(trainers) == {"adversarial", "generative", "inverse", "meta"}
    for name, trainer in trainers.items():
        options = trainer._option_string_actions
        for flag in ("--seed", "--lr", "--batch-size", "--threads", "--epochs"):
            assert flag in options, (name, flag)
    assert "(default: 64)" in trainers["adversarial"].format_help()
    assert "(default: 5)" in trainers["meta"].format_help()
    args = parser.parse_args(["train", "meta", "--lr", "0.01", "--batch-size", "2"])
    assert args.meta_lr == 0.01 and args.tasks_per_batch == 2


def test_threads_default_is_one_unless_told(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert configure_threads(None) == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert configure_threads(None) == 2
        assert configure_threads(1) == 1
        with pytest.raises(SystemExit, match="--threads"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    for name in list(sys.modules):
        if name.startswith(
            ("torchattacks", "jiio_ext.apps.bench.adversarial", "jiio_ext.adapters")
        ):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import torchattacks now fails
    with pytest.raises(SystemExit) as err:
        main(["bench", "adversarial", "--quick"])
    message = str(err.value.code)
    assert "pip install 'jiio-ext[attacks]'" in message and "\n" not in message


def test_data_flag_errors_name_the_cli_flags(tmp_path):
    with pytest.raises(SystemExit, match="--data-dir is only read with --data"):
        main(["train", "adversarial", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--data-dir /nonexistent: no such folder"):
        main(["train", "adversarial", "--data", "mnist", "--data-dir", "/nonexistent"])
    with pytest.raises(SystemExit, match="--factor is an option of --problem superres"):
        main(["train", "inverse", "--problem", "denoise", "--factor", "3"])
    pytest.importorskip("torchvision")
    with pytest.raises(SystemExit) as err:
        main(["train", "adversarial", "--data", "mnist", "--data-dir", str(tmp_path)])
    assert "--data-dir: cannot read mnist" in str(err.value) and "download=True" not in str(
        err.value
    )


def test_train_adversarial_log_is_strict_json_with_the_shared_header(tmp_path, capsys):
    pytest.importorskip("torchattacks")
    out = tmp_path / "run"
    args = ["train", "adversarial", "--epochs", "1", "--train-size", "32", "--eval-size", "16"]
    args += ["--steps", "2", "--batch-size", "16", "--lr", "0.005", "--seed", "3"]
    assert main([*args, "--no-robust-eval", "--out", str(out)]) == 0
    text = (out / "log.json").read_text()
    log = json.loads(text, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    assert log["schema"] == "jiio-run-log/1" and log["task"] == "adversarial"
    assert log["settings"]["lr"] == 0.005 and log["settings"]["batch_size"] == 16
    assert log["settings"]["seed"] == 3 and "torch" in log["versions"]
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["epoch", "time", "(s)"]
