"""``jiio bench meta-example``: data in the loader's layout, and one tiny run of both loops."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchdeq")
pytest.importorskip("higher")
from jiio_ext.apps.bench.meta_example import (  # noqa: E402
    NShot,
    bench_meta_example,
    load_omniglot_folder,
    write_omniglot_like,
)


def test_generated_folder_follows_the_loader_layout_and_split(tmp_path):
    root = write_omniglot_like(tmp_path, alphabets=4, characters=3, size=32)
    background = sorted(p.name for p in (root / "processed" / "images_background").iterdir())
    evaluation = sorted(p.name for p in (root / "processed" / "images_evaluation").iterdir())
    assert background == ["Alphabet_00", "Alphabet_01", "Alphabet_02"]
    assert evaluation == ["Alphabet_03"]
    images = load_omniglot_folder(root)
    assert images.shape == (12, 20, 1, 28, 28)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    stream = NShot(images, n_way=3, k_spt=2, k_qry=4, tasks=2, seed=0)
    assert stream.splits["train"].shape[0] == 8  # floor(1200/1623 · 12) classes
    x_spt, y_spt, x_qry, y_qry = stream.next("test")
    assert x_spt.shape == (2, 6, 1, 28, 28) and x_qry.shape == (2, 12, 1, 28, 28)
    assert sorted(y_spt[0].tolist()) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(FileNotFoundError, match="data_dir: no character folders"):
        load_omniglot_folder(tmp_path / "empty")


def test_one_tiny_run_reports_both_methods(tmp_path):
    threads = torch.get_num_threads()
    report = bench_meta_example(
        seeds=(0,), meta_steps=1, tasks=1, test_tasks=1, out=tmp_path, threads=1
    )
    assert torch.get_num_threads() == threads
    assert set(report["methods"]) == {"higher", "jiio"}
    for result in report["methods"].values():
        assert 0.0 <= result["test_accuracy"] <= 100.0
        assert len(result["per_seed"]["0"]["loss_curve"]) == 1
        assert result["time_per_meta_step_s"] > 0
        assert result["cpu_time_per_meta_step_s"] > 0
    assert (tmp_path / "meta_example_losses.png").stat().st_size > 0
    json.dumps(report)
