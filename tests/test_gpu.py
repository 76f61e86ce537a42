"""GPU checks (marked ``gpu``; skipped cleanly without CUDA). Run with ``pytest -m gpu``."""

from __future__ import annotations

import pytest
import torch
from problems import make_problem

from jiio_ext import L2Ball, solve_joint
from jiio_ext.apps.bench import run_task
from jiio_ext.apps.bench.latent import make_latent_problem

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_joint_solve_on_cuda_matches_cpu():
    p = make_problem(seed=30)
    cpu = solve_joint(
        p.f,
        p.objective,
        p.x0(),
        z0=p.z0(),
        step_size=0.3,
        rtol=1e-10,
        atol=1e-12,
        max_iter=400,
        constraint=L2Ball(radius=0.3),
    )
    dev = torch.device("cuda")
    W, U, b, t = (v.to(dev) for v in (p.W, p.U, p.b, p.target))

    def f(z, x):
        return torch.tanh(z @ W.T + x @ U + b)

    def objective(z, x):
        return (z - t).pow(2).sum(1) + p.reg * x.pow(2).sum(1)

    gpu = solve_joint(
        f,
        objective,
        p.x0().to(dev),
        z0=p.z0().to(dev),
        step_size=0.3,
        rtol=1e-10,
        atol=1e-12,
        max_iter=400,
        constraint=L2Ball(radius=0.3),
    )
    assert gpu.success and gpu.x.device.type == "cuda"
    torch.testing.assert_close(gpu.x.cpu(), cpu.x, atol=1e-8, rtol=0)


@pytest.mark.parametrize("task", ["overhead", "latent"])
def test_bench_runs_on_cuda(task):
    report = run_task(task, device="cuda", quick=True)
    assert report["device"].startswith("cuda")
    for side in ("baseline", "jiio"):  # timed, and measured by the CUDA allocator
        assert report[side]["time_s"] > 0 and report[side]["peak_mem_mb"] > 0, side
    if task == "overhead":
        assert report["baseline"]["f_evals"] == report["jiio"]["f_evals"] == 1
        assert 0 < report["overhead"] < 50
        return
    # both sides solved the problem: the objective fell well below the zero latent's
    # (0.25 -> 0.011 on the CPU), and JIIO reached the baseline's
    problem = make_latent_problem(report["batch"], torch.device("cuda"))
    start = problem.true_objective(problem.x0)
    assert report["baseline"]["objective"] < 0.2 * start
    assert report["jiio"]["reached_baseline"]


def test_generative_training_step_on_cuda(tmp_path):
    pytest.importorskip("kornia")
    from jiio_ext.adapters.kornia import psnr

    from jiio_ext.apps.data import load_images
    from jiio_ext.apps.tasks.generative import train_generative

    log = train_generative(
        problem="inpaint",
        epochs=1,
        train_size=32,
        eval_size=8,
        batch_size=16,
        inner_iters=5,
        out=tmp_path,
        progress=False,
        sample=False,
        device="cuda",
    )
    assert log["epochs"][0]["test_psnr"] > 0
    # above a uniform grey image, what the untrained sigmoid decoder draws (10.9 against
    # 8.6 dB on the CPU)
    _, _, clean, _ = load_images("digits", image_size=log["settings"]["image_size"], test_size=8)
    grey = float(psnr(torch.full_like(clean, 0.5), clean).mean())
    assert log["epochs"][0]["test_psnr"] > grey + 0.5


def test_bf16_autocast_on_cuda():
    report = run_task("autocast", device="cuda", quick=True)
    assert report["jiio"]["objective"] < 10 * report["baseline"]["objective"] + 1e-3


def test_demo_on_cuda(tmp_path):
    pytest.importorskip("torchattacks")
    from jiio_ext.apps.demo import run_demo

    folder = run_demo(
        tmp_path,
        device="cuda",
        budget="tiny",
        tasks=["adversarial-training", "generative-training"],
        verbose=False,
    )
    assert (folder / "report.html").is_file()
