"""jiio train adversarial: both methods, checkpoints and resume, data loaders, CLI errors."""

from __future__ import annotations

import json
import struct

import pytest
import torch

pytest.importorskip("torchattacks")
pytest.importorskip("sklearn")
from jiio_ext.apps.cli import main  # noqa: E402
from jiio_ext.apps.tasks.adversarial import (  # noqa: E402
    evaluate_robustness,
    load_dataset,
    train_adversarial,
)

QUICK = dict(train_size=64, eval_size=32, steps=2, eval_steps=2, progress=False)


@pytest.mark.parametrize("method", ["jiio", "pgd"])
def test_training_writes_log_checkpoint_and_plots(tmp_path, method):
    log = train_adversarial(method=method, epochs=1, out=str(tmp_path), robust_eval=False, **QUICK)
    assert log["method"] == method and len(log["epochs"]) == 1
    for name in ("log.json", "checkpoint.pt", "curves.png", "examples.png"):
        assert (tmp_path / name).stat().st_size > 0
    entry = json.loads((tmp_path / "log.json").read_text())["epochs"][0]
    assert 0 <= entry["robust_accuracy"] <= entry["clean_accuracy"] + 0.2
    assert entry["epoch_time_s"] > 0


def test_resume_continues_from_checkpoint(tmp_path):
    first = train_adversarial(epochs=1, out=str(tmp_path), robust_eval=False, **QUICK)
    resumed = train_adversarial(
        epochs=2, out=str(tmp_path), resume=True, robust_eval=False, **QUICK
    )
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert resumed["epochs"][0] == first["epochs"][0]
    # one entry per training batch (64 images, batch 64), counted on across the resume
    steps = resumed["training_steps"]
    assert [(s["step"], s["epoch"]) for s in steps] == [(1, 1), (2, 2)]
    assert steps[0] == first["training_steps"][0]
    assert steps[1]["train_loss"] == pytest.approx(resumed["epochs"][1]["train_loss"])


def test_robustness_table_has_every_attack():
    from jiio_ext.apps.models import DEQClassifier

    images, labels = torch.rand(8, 1, 8, 8), torch.arange(8)
    table = evaluate_robustness(
        DEQClassifier().eval(), images, labels, steps=2, restarts=1, square_queries=5
    )
    assert set(table) == {"clean", "pgd2", "pgd50_restarts", "apgd_ce", "square", "jiio_pgd2"}
    assert all(0.0 <= value <= 1.0 for value in table.values())


def _write_idx(path, array: torch.Tensor) -> None:
    dims = array.shape
    header = struct.pack(">I", 0x0800 + len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def test_mnist_loader_reads_real_format_files(tmp_path):
    pytest.importorskip("torchvision")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 12), ("t10k", 5)):
        _write_idx(
            raw / f"{split}-images-idx3-ubyte",
            torch.randint(0, 256, (count, 28, 28), generator=gen),
        )
        _write_idx(
            raw / f"{split}-labels-idx1-ubyte", torch.randint(0, 10, (count,), generator=gen)
        )
    train_x, train_y, test_x, test_y = load_dataset("mnist", str(tmp_path), torch.device("cpu"))
    assert train_x.shape == (12, 1, 28, 28) and test_x.shape == (5, 1, 28, 28)
    assert 0 <= float(train_x.min()) and float(train_x.max()) <= 1 and train_y.dtype == torch.long
    log = train_adversarial(
        data="mnist",
        data_dir=str(tmp_path),
        epochs=1,
        batch_size=6,
        out=str(tmp_path / "run"),
        robust_eval=False,
        **QUICK,
    )
    assert len(log["epochs"]) == 1


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit, match="--data-dir"):
        main(
            [
                "train",
                "adversarial",
                "--data",
                "mnist",
                "--data-dir",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "run"),
            ]
        )
    with pytest.raises(SystemExit) as err:
        main(["train", "nope"])
    assert err.value.code == 2
    with pytest.raises(ValueError, match="method"):
        train_adversarial(method="fgsm", out=str(tmp_path))
    with pytest.raises(ValueError, match="iterations_per_step"):
        train_adversarial(iterations_per_step=0, out=str(tmp_path))
    with pytest.raises(SystemExit, match="--iterations-per-step"):
        main(["train", "adversarial", "--iterations-per-step", "0", "--out", str(tmp_path)])


def test_training_attack_budget_is_iterations_per_step_times_steps(tmp_path, monkeypatch):
    import jiio_ext.adapters.torchattacks as adapter

    solved: list[tuple[int, list[int]]] = []

    class RecordingJIIOPGD(adapter.JIIOPGD):
        """The real attack; it notes each training attack's per-sample iteration counts."""

        def forward(self, images, labels):
            adversarial = super().forward(images, labels)
            solved.append((self.iterations_per_step, self.last_solution.nstep.tolist()))
            return adversarial

    monkeypatch.setattr(adapter, "JIIOPGD", RecordingJIIOPGD)  # what the trainer builds
    logs = [
        train_adversarial(
            epochs=1, out=str(tmp_path / str(k)), robust_eval=False, iterations_per_step=k, **QUICK
        )
        for k in (1, 4)
    ]
    assert [log["iterations_per_step"] for log in logs] == [1, 4]
    assert logs[0]["epochs"][0]["train_loss"] != logs[1]["epochs"][0]["train_loss"]
    # one attack per training batch (64 images, batch 64), every sample run to the budget
    steps = QUICK["steps"]
    assert solved == [(k, [k * steps] * QUICK["train_size"]) for k in (1, 4)]


@pytest.mark.parametrize("method", ["jiio", "pgd"])
def test_jacobian_regularisation_changes_the_update(tmp_path, method):
    plain = train_adversarial(
        method=method, epochs=1, out=str(tmp_path / "a"), robust_eval=False, **QUICK
    )
    regular = train_adversarial(
        method=method, epochs=1, out=str(tmp_path / "b"), robust_eval=False, jac_reg=5.0, **QUICK
    )
    assert regular["epochs"][0]["train_loss"] != plain["epochs"][0]["train_loss"]


def test_cifar10_loader_reads_real_format_batches(tmp_path, monkeypatch):
    import pickle

    pytest.importorskip("torchvision.datasets")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for name, count in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 4)]:
        batch = {
            "data": torch.randint(0, 256, (count, 3072), generator=gen, dtype=torch.uint8).numpy(),
            "labels": torch.randint(0, 10, (count,), generator=gen).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(i) for i in range(10)]})
    )
    # the files are in CIFAR-10's real pickle format; only torchvision's md5 check of the
    # official archive is bypassed
    import torchvision.datasets.cifar as cifar_module

    monkeypatch.setattr(cifar_module, "check_integrity", lambda *args, **kwargs: True)
    train_x, train_y, test_x, test_y = load_dataset("cifar10", str(tmp_path), torch.device("cpu"))
    assert train_x.shape == (15, 3, 32, 32) and test_x.shape == (4, 3, 32, 32)
    assert 0 <= float(train_x.min()) and float(train_x.max()) <= 1
    assert train_y.shape == (15,) and test_y.dtype == torch.long


def test_example_script_runs():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "attack_digits.py"
    spec = importlib.util.spec_from_file_location("attack_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--epochs", "1", "--train-size", "64"])
    assert set(result) == {"clean", "pgd20", "jiio_pgd20"}
