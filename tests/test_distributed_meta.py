"""jiio train meta under torch.distributed: 2 gloo processes = 1 process, same task batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_group import free_port, join_gloo_group

pytest.importorskip("torchdeq")
pytest.importorskip("higher")
from jiio_ext.apps.tasks.meta import train_meta  # noqa: E402

TINY = dict(
    epochs=2,
    steps_per_epoch=2,
    tasks_per_batch=2,
    hidden=8,
    context_dim=4,
    eval_tasks=2,
    progress=False,
)
METHODS = ("jiio", "maml")


def _worker(rank: int, world_size: int, port: int, root: str) -> None:
    join_gloo_group(rank, world_size, port)
    try:
        for method in METHODS:
            folder = Path(root) / f"{method}-rank{rank}"
            log = train_meta("sinusoid", method, out=str(folder), **TINY)
            torch.save(log, Path(root) / f"{method}-log-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for method in METHODS:
        single_log = train_meta("sinusoid", method, out=str(tmp_path / f"{method}-1"), **TINY)
        single = torch.load(tmp_path / f"{method}-1" / "checkpoint.pt", weights_only=False)
        double = torch.load(tmp_path / f"{method}-rank0" / "checkpoint.pt", weights_only=False)
        for key, value in single["model"].items():
            torch.testing.assert_close(double["model"][key], value, rtol=1e-4, atol=1e-5)
        assert not (tmp_path / f"{method}-rank1" / "checkpoint.pt").exists()
        logs = [
            torch.load(tmp_path / f"{method}-log-rank{r}.pt", weights_only=False) for r in (0, 1)
        ]
        for log in logs:
            assert log["epochs"][-1]["meta_train_loss"] == pytest.approx(
                single_log["epochs"][-1]["meta_train_loss"], rel=1e-4
            )


def test_odd_task_batch_is_refused_under_two_processes(tmp_path, monkeypatch):
    from jiio_ext.apps.distributed import DistContext

    ctx = DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="batch"):
        ctx.check_batch_size(3)
