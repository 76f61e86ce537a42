"""Checkpoints and run folders: planted pickles, damaged files, resume and overwrite safety."""

from __future__ import annotations

import pytest
import torch

from jiio_ext.apps.checkpoints import (
    CheckpointError,
    check_plain,
    load_checkpoint_file,
    save_checkpoint_file,
)
from jiio_ext.apps.distributed import init_from_env

QUICK = dict(
    train_size=16,
    eval_size=8,
    batch_size=16,
    steps=1,
    eval_steps=1,
    progress=False,
    robust_eval=False,
)
META = dict(epochs=1, steps_per_epoch=1, tasks_per_batch=1, eval_tasks=1, hidden=8, progress=False)


class _Planted:
    """An object whose unpickling runs code (here: a harmless print)."""

    def __reduce__(self):
        return (print, ("PLANTED CODE RAN",))


def _state() -> dict:
    layer = torch.nn.Linear(2, 2)
    return {
        "model": layer.state_dict(),
        "optimizer": torch.optim.Adam(layer.parameters()).state_dict(),
        "generator": torch.Generator().get_state(),
        "log": {"epochs": [{"loss": 0.5, "note": None}], "shape": (2, 2)},
        "epoch": 0,
    }


def test_plain_state_round_trips(tmp_path):
    ctx, saved = init_from_env("cpu"), _state()
    ctx.save_checkpoint(saved, tmp_path / "checkpoint.pt")
    state = ctx.load_checkpoint(tmp_path / "checkpoint.pt")
    assert torch.equal(state["model"]["weight"], saved["model"]["weight"])
    assert torch.equal(state["generator"], saved["generator"])
    assert state["log"] == saved["log"] and state["epoch"] == 0


def test_planted_pickle_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "payload": _Planted()}, path)
    with pytest.raises(CheckpointError, match="refused") as err:
        init_from_env("cpu").load_checkpoint(path)
    assert str(path) in str(err.value) and "print" in str(err.value)
    assert "PLANTED CODE RAN" not in capsys.readouterr().out


def test_planted_pickle_is_refused_by_resume(tmp_path, capsys):
    pytest.importorskip("torchattacks")
    from jiio_ext.apps.tasks.adversarial import train_adversarial

    torch.save({"payload": _Planted()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="refused"):
        train_adversarial(method="pgd", epochs=1, out=str(tmp_path), resume=True, **QUICK)
    assert "PLANTED CODE RAN" not in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_damaged_checkpoint_gives_one_clear_error(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint_file(_state(), path)
    data = path.read_bytes()
    path.write_bytes(
        {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x07" * 99}[damage]
    )
    with pytest.raises(CheckpointError, match="damaged or not a checkpoint") as err:
        load_checkpoint_file(path)
    assert str(path) in str(err.value) and "Delete it" in str(err.value)


def test_only_tensors_and_plain_containers_are_saved(tmp_path):
    with pytest.raises(TypeError, match=r"state\['log'\]\['fn'\]"):
        save_checkpoint_file({"log": {"fn": print}}, tmp_path / "c.pt")
    with pytest.raises(TypeError, match="checkpoint holds only"):
        check_plain([torch.nn.Linear(1, 1)])
    assert not (tmp_path / "c.pt").exists()


def test_adversarial_resume_refusals_and_overwrite(tmp_path, capsys):
    pytest.importorskip("torchattacks")
    from jiio_ext.apps.cli import main
    from jiio_ext.apps.tasks.adversarial import train_adversarial

    with pytest.raises(CheckpointError, match="resume: no checkpoint"):
        train_adversarial(method="pgd", epochs=1, out=str(tmp_path), resume=True, **QUICK)
    first = train_adversarial(method="pgd", epochs=1, out=str(tmp_path), **QUICK)
    with pytest.raises(CheckpointError, match="method: checkpoint 'pgd', now 'jiio'"):
        train_adversarial(method="jiio", epochs=2, out=str(tmp_path), resume=True, **QUICK)
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.01, now 0.1"):
        train_adversarial(method="pgd", lr=0.1, epochs=2, out=str(tmp_path), resume=True, **QUICK)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="out: .* already holds a run .*--overwrite"):
        train_adversarial(method="pgd", epochs=1, out=str(tmp_path), **QUICK)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    with pytest.raises(SystemExit, match="already holds a run"):
        main(["train", "adversarial", "--method", "pgd", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="overwrite: cannot be combined with resume"):
        train_adversarial(out=str(tmp_path), resume=True, overwrite=True, **QUICK)
    again = train_adversarial(method="pgd", epochs=1, out=str(tmp_path), overwrite=True, **QUICK)
    assert again["epochs"][0]["train_loss"] == first["epochs"][0]["train_loss"]


def test_meta_resume_refusals(tmp_path):
    pytest.importorskip("torchdeq")
    pytest.importorskip("higher")
    from jiio_ext.apps.tasks.meta import train_meta

    with pytest.raises(CheckpointError, match="resume: no checkpoint"):
        train_meta("sinusoid", "jiio", out=str(tmp_path), resume=True, **META)
    train_meta("sinusoid", "jiio", out=str(tmp_path), inner_steps=2, **META)
    with pytest.raises(CheckpointError, match="method: checkpoint 'jiio', now 'fomaml'"):
        train_meta("sinusoid", "fomaml", out=str(tmp_path), inner_steps=2, resume=True, **META)
    with pytest.raises(ValueError, match="already holds a run"):
        train_meta("sinusoid", "jiio", out=str(tmp_path), inner_steps=2, **META)


def test_generative_resume_lists_the_differing_settings(tmp_path):
    pytest.importorskip("torchdeq")
    from jiio_ext.apps.tasks.generative import train_generative

    tiny = dict(
        train_size=8,
        eval_size=4,
        batch_size=4,
        inner_iters=1,
        eval_iters=1,
        progress=False,
        sample=False,
        epochs=1,
        out=tmp_path,
    )
    with pytest.raises(CheckpointError, match="resume: no checkpoint"):
        train_generative(resume=True, **tiny)
    train_generative(**tiny)
    with pytest.raises(CheckpointError, match="inner_iters: checkpoint 1, now 2"):
        train_generative(**{**tiny, "inner_iters": 2, "epochs": 2}, resume=True)
    with pytest.raises(ValueError, match="already holds a run"):
        train_generative(**tiny)
