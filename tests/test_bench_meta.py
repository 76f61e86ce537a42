"""``bench_meta``: the report schema of the other benches, on a tiny run."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchdeq")
pytest.importorskip("higher")
from jiio_ext.apps.bench.meta import bench_meta  # noqa: E402


def test_quick_report_has_the_bench_schema():
    threads = torch.get_num_threads()
    report = bench_meta(torch.device("cpu"), quick=True, meta_steps=2, eval_tasks=2)
    assert torch.get_num_threads() == threads  # restored
    json.dumps(report)
    assert report["task"] == "meta" and report["device"] == "cpu" and report["dtype"] == "float32"
    for side in ("baseline", "jiio"):
        assert set(report[side]) >= {"name", "time_s", "f_evals", "objective", "peak_mem_mb"}
        assert 0.0 <= report[side]["objective"] <= 1.0
        assert report[side]["time_s"] > 0
    assert "higher" in report["baseline"]["name"]
    assert report["speedup_time"] == pytest.approx(
        report["baseline"]["time_s"] / report["jiio"]["time_s"], rel=0.02
    )
