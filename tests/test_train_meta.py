"""``train_meta``: task families, the four methods, checkpoints/resume, Omniglot's real layout."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

pytest.importorskip("torchdeq")
pytest.importorskip("higher")
from jiio_ext.apps.tasks.meta import (  # noqa: E402
    make_meta_problem,
    run_meta_cli,
    train_meta,
)
from jiio_ext.apps.tasks.meta_data import digits_pool, omniglot_pool, sample_sinusoid  # noqa: E402
from jiio_ext.apps.tasks.meta_methods import METHODS, MetaConfig, meta_step  # noqa: E402
from jiio_ext.apps.tasks.meta_models import FiLMDEQNet  # noqa: E402
from jiio_ext.apps.train_options import add_meta_arguments  # noqa: E402

SMALL = dict(epochs=1, steps_per_epoch=2, tasks_per_batch=2, eval_tasks=2, hidden=8, progress=False)


def test_sinusoid_run_writes_log_checkpoint_plots_and_resumes(tmp_path):
    log = train_meta("sinusoid", "jiio", out=str(tmp_path), **SMALL)
    for name in ("log.json", "checkpoint.pt", "curves.png", "sinusoid_fits.png"):
        assert (tmp_path / name).exists(), name
    written = json.loads((tmp_path / "log.json").read_text())
    assert written["config"]["method"] == "jiio"
    # the shared header of every trainer's log: schema, task, every setting, versions
    assert written["task"] == "meta" and written["settings"]["method"] == "jiio"
    assert written["settings"]["seed"] == 0 and "torch" in written["versions"]
    assert len(log["epochs"]) == 1
    resumed = train_meta(
        "sinusoid", "jiio", out=str(tmp_path), resume=True, **{**SMALL, "epochs": 2}
    )
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]  # counted from 1
    assert resumed["epochs"][0] == log["epochs"][0]
    # one entry per meta-step (2 per epoch), counted on across the resume
    steps = resumed["training_steps"]
    assert [(s["step"], s["epoch"]) for s in steps] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    second = [s["meta_train_loss"] for s in steps[2:]]
    assert sum(second) / 2 == pytest.approx(resumed["epochs"][1]["meta_train_loss"])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_meta_trains_on_digits(tmp_path, method):
    log = train_meta("digits", method, out=str(tmp_path), inner_steps=3, **SMALL)
    entry = log["epochs"][0]
    assert 0.0 <= entry["meta_test_metric"] <= 1.0
    assert torch.isfinite(torch.tensor(entry["meta_train_loss"]))
    assert (tmp_path / "curves.png").exists()


@pytest.mark.parametrize(
    ("adapted", "head_prox"),
    [(("context",), None), (("context", "head.weight", "head.bias"), 0.3)],
    ids=["context", "context-and-head-with-own-prox"],
)
def test_imaml_baseline_agrees_with_the_exact_jiio_meta_gradient(adapted, head_prox):
    """Both target the converged iMAML objective: the nested baseline is checked against JIIO."""
    net = FiLMDEQNet(1, 1, hidden=6, context_dim=3, f_tol=1e-10, f_max_iter=60)
    net = net.double()
    net.adapted = adapted
    batch = sample_sinusoid(1, 6, 6, torch.Generator().manual_seed(0), dtype=torch.float64)
    common = dict(regression=True, inner_lr=0.3, head_prox=head_prox)
    grads = []
    for method, cfg in (
        ("jiio", MetaConfig(**common, jiio_steps=80, backward_rtol=1e-10)),
        ("imaml", MetaConfig(**common, imaml_steps=200, cg_steps=12)),
    ):
        net.zero_grad()
        meta_step(net, method, batch, cfg)
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    rel = float((grads[0] - grads[1]).norm() / grads[0].norm())
    assert rel < 1e-3, rel


def _write_omniglot(root, rng):
    from PIL import Image

    for part, alphabets in (
        ("images_background", ("Alpha", "Beta")),
        ("images_evaluation", ("Gamma",)),
    ):
        for a, alphabet in enumerate(alphabets):
            for c in range(3):
                folder = root / "omniglot-py" / part / alphabet / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                for d in range(3):
                    pixels = (rng.random((105, 105)) > 0.1).astype("uint8") * 255
                    Image.fromarray(pixels, mode="L").save(
                        folder / f"{a:02d}{c:02d}_{d + 1:02d}.png"
                    )


def test_omniglot_loader_reads_the_real_layout(tmp_path, monkeypatch):
    import numpy as np
    import torchvision.datasets.omniglot as omniglot_module

    _write_omniglot(tmp_path, np.random.default_rng(0))
    # the files are in Omniglot's real on-disk layout; only the md5 check of the zip is bypassed
    monkeypatch.setattr(omniglot_module, "check_integrity", lambda *args, **kwargs: True)
    pool = omniglot_pool(str(tmp_path), torch.device("cpu"), size=14)
    assert pool.dim == 196
    assert len(pool.train_classes) == 2 * 3 * 4 and len(pool.test_classes) == 3 * 4
    assert float(pool.images.min()) >= 0.0 and float(pool.images.max()) <= 1.0
    task = pool.sample(3, 1, 2, 2, False, torch.Generator().manual_seed(0))
    assert task.x_spt.shape == (2, 3, 196) and task.y_qry.shape == (2, 6)
    log = train_meta(
        "omniglot",
        "jiio",
        data_dir=str(tmp_path),
        n_way=3,
        k_query=2,
        out=str(tmp_path / "run"),
        **SMALL,
    )
    assert 0.0 <= log["epochs"][0]["meta_test_metric"] <= 1.0


def test_digits_pool_holds_out_classes():
    pool = digits_pool(torch.device("cpu"))
    assert not set(pool.train_classes) & set(pool.test_classes)
    batch = pool.sample(5, 1, 5, 3, False, torch.Generator().manual_seed(0))
    assert int(batch.y_spt.max()) == 4
    # the validation split never touches the meta-test classes (digits 7-9)
    val = digits_pool(torch.device("cpu"), validation=True)
    assert not set(val.train_classes) & set(val.test_classes)
    assert not (set(val.train_classes) | set(val.test_classes)) & set(pool.test_classes)
    with pytest.raises(ValueError, match="validation: only the digits"):
        make_meta_problem("omniglot", validation=True)


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="task: unknown meta-learning task"):
        train_meta("cifar", "jiio", out=str(tmp_path))
    with pytest.raises(ValueError, match="method: unknown method 'reptile'"):
        train_meta("digits", "reptile", out=str(tmp_path))
    with pytest.raises(ValueError, match="data_dir: None is not a readable folder"):
        train_meta("omniglot", "jiio", out=str(tmp_path))
    with pytest.raises(ValueError, match=r"head_prox: expected a finite number >= 0, got -1\.0"):
        train_meta("digits", "jiio", head_prox=-1.0, out=str(tmp_path))
    with pytest.raises(ValueError, match="inner_lr: expected a finite number > 0, got 0"):
        train_meta("digits", "maml", inner_lr=0, out=str(tmp_path))
    with pytest.raises(ValueError, match="inner_steps: expected an integer >= 1, got 0"):
        train_meta("sinusoid", "imaml", inner_steps=0, out=str(tmp_path))
    with pytest.raises(ValueError, match="n_way: 20 exceeds the 12 available classes"):
        digits_pool(torch.device("cpu")).sample(20, 1, 1, 1, False, torch.Generator())


def test_cli_helpers_parse_and_run(tmp_path, capsys):
    parser = add_meta_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--task",
            "sinusoid",
            "--method",
            "fomaml",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "1",
            "--tasks-per-batch",
            "2",
            "--eval-tasks",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert run_meta_cli(args) == 0
    assert "meta-step" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="jiio train meta: data_dir"):
        run_meta_cli(parser.parse_args(["--task", "omniglot", "--out", str(tmp_path)]))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids oversubscribing the shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
