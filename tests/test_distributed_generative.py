"""jiio train generative / inverse under torch.distributed: 2 gloo processes = 1 process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_group import free_port, join_gloo_group

pytest.importorskip("torchdeq")
pytest.importorskip("kornia")
from jiio_ext.apps.tasks.generative import train_generative  # noqa: E402
from jiio_ext.apps.tasks.latent import build_decoder  # noqa: E402

TINY = dict(
    image_size=8,
    latent_dim=4,
    channels=8,
    train_size=16,
    eval_size=6,
    batch_size=8,
    inner_iters=4,
    eval_iters=4,
    lr=1e-2,
    progress=False,
    sample=False,
)
JOBS = {
    "jiio": dict(method="jiio", problem="inpaint"),
    # torchdeq's Anderson stops the whole batch at once: tight tolerances make the decoder's
    # own solves independent of how the batch is split
    "nested": dict(
        method="nested", problem="denoise", problem_options={"sigma": 0.1}, deq_tol=1e-7
    ),
    "vae": dict(method="vae", problem="reconstruct", deq_tol=1e-7),
}


def _worker(rank: int, world_size: int, port: int, root: str) -> None:
    join_gloo_group(rank, world_size, port)
    try:
        for name, job in JOBS.items():
            folder = Path(root) / f"{name}-rank{rank}"
            if name == "jiio":  # killed after epoch 1's checkpoint, then resumed; rank 1 has
                # no files of its own and resumes from rank 0's checkpoint (broadcast)
                train_generative(epochs=1, out=folder, **TINY, **job)
            log = train_generative(epochs=2, out=folder, resume=name == "jiio", **TINY, **job)
            torch.save(log, Path(root) / f"{name}-log-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _single(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / f"{name}-single"
    train_generative(epochs=2, out=folder, **TINY, **JOBS[name])
    return folder


# Slow lane: under CPU load a spawned rank sometimes aborted with "terminate called without an
# active exception" (3 of ~20 runs). Since DistContext.close collects DDP wrappers and meets a
# barrier before teardown, 11 of 11 runs passed (3 under load); kept here until confirmed.
@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for name in JOBS:
        single = torch.load(_single(tmp_path, name) / "checkpoint.pt", weights_only=False)
        double = torch.load(tmp_path / f"{name}-rank0" / "checkpoint.pt", weights_only=False)
        initial = build_decoder(4, 8, 8).state_dict()
        assert any(not torch.equal(initial[k], v) for k, v in single["decoder"].items())
        for key, value in single["decoder"].items():
            # float32 and Adam: 1e-5 for jiio and vae, 1e-4 for nested (its 4 inner Adam steps
            # per training step amplify float round-off); no gradient sync gives about 1e-2
            torch.testing.assert_close(double["decoder"][key], value, rtol=1e-3, atol=5e-4)
        torch.testing.assert_close(double["latents"], single["latents"], rtol=1e-3, atol=5e-4)
        assert not (tmp_path / f"{name}-rank1" / "checkpoint.pt").exists()
        logs = [torch.load(tmp_path / f"{name}-log-rank{r}.pt", weights_only=False) for r in (0, 1)]
        assert logs[0]["epochs"][-1]["test_psnr"] == pytest.approx(
            single["log"]["epochs"][-1]["test_psnr"], rel=1e-4
        )
        assert logs[1]["epochs"][-1]["train_loss"] == pytest.approx(
            logs[0]["epochs"][-1]["train_loss"]
        )
