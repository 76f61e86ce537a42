"""Generative / inverse-problem training (jiio train generative|inverse) and its pieces."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchdeq")
pytest.importorskip("kornia")

from fake_datasets import write_celeba, write_cifar10, write_mnist  # noqa: E402

from jiio_ext.apps.cli import main  # noqa: E402
from jiio_ext.apps.data import load_images  # noqa: E402
from jiio_ext.apps.tasks.generative import make_problem, train_generative  # noqa: E402

TINY = dict(
    image_size=8,
    latent_dim=8,
    channels=8,
    train_size=32,
    eval_size=8,
    batch_size=16,
    inner_iters=8,
    eval_iters=8,
    progress=False,
    sample=False,
)


@pytest.mark.parametrize("method", ["jiio", "nested", "vae"])
def test_training_lowers_the_loss(tmp_path, method):
    log = train_generative(method=method, epochs=4, lr=1e-2, out=tmp_path, **TINY)
    losses = [entry["train_loss"] for entry in log["epochs"]]
    assert losses[-1] < losses[0]
    # one entry per batch (32 images, batch 16): a one-epoch run still shows a curve
    expected = [(k + 1, k // 2 + 1) for k in range(8)]
    assert [(s["step"], s["epoch"]) for s in log["training_steps"]] == expected
    for epoch, loss in enumerate(losses, 1):
        steps = [s["train_loss"] for s in log["training_steps"] if s["epoch"] == epoch]
        assert sum(steps) / len(steps) == pytest.approx(loss)
    assert all(torch.isfinite(torch.tensor(entry["test_psnr"])) for entry in log["epochs"])
    for name in ("log.json", "checkpoint.pt", "curves.png", "reconstructions.png"):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "log.json").read_text())["settings"]["method"] == method


@pytest.mark.parametrize(
    ("problem", "options"),
    [
        ("denoise", {"sigma": 0.2}),
        ("inpaint", {}),
        ("inpaint-irregular", {}),
        ("deblur", {}),
        ("deblur-motion", {}),
        ("superres", {"factor": 2}),
    ],
)
def test_every_inverse_problem_trains(tmp_path, problem, options):
    from jiio_ext.adapters.kornia import psnr

    log = train_generative(problem=problem, problem_options=options, epochs=1, out=tmp_path, **TINY)
    entry = log["epochs"][0]
    assert entry["test_psnr"] > 0 and -1 <= entry["test_ssim"] <= 1
    # the untrained sigmoid decoder draws about a uniform grey: one epoch already beats it
    # (by 1.1-1.5 dB on these 8 test digits; a decoder or inference that learned nothing fails)
    _, _, clean, _ = load_images("digits", image_size=8, test_size=TINY["eval_size"])
    grey = float(psnr(torch.full_like(clean, 0.5), clean).mean())
    assert entry["test_psnr"] > grey + 0.5, (entry["test_psnr"], grey)


def test_resume_gives_the_uninterrupted_state(tmp_path):
    options = dict(TINY, problem="inpaint", jac_reg=0.1, sample=True)
    whole = train_generative(epochs=2, out=tmp_path / "whole", **options)
    train_generative(epochs=1, out=tmp_path / "split", **options)
    resumed = train_generative(epochs=2, out=tmp_path / "split", resume=True, **options)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    for key, value in a["decoder"].items():
        assert torch.equal(value, b["decoder"][key]), key
    assert torch.equal(a["latents"], b["latents"])
    for first, second in zip(whole["epochs"], resumed["epochs"]):
        assert first["train_loss"] == second["train_loss"]
        assert first["test_psnr"] == second["test_psnr"]
    assert (tmp_path / "split" / "samples.png").is_file()


def test_implicit_hypergradient_matches_finite_differences():
    """dL/dθ of the clean-image loss through x*(θ), float64, against central differences."""
    from jiio_ext.adapters.kornia import make_degradation
    from jiio_ext.adapters.torchdeq import input_optimizable
    from torchdeq import get_deq

    from jiio_ext.apps.models import MultiScaleDecoder
    from jiio_ext.apps.tasks.latent import infer_jiio, latent_objective

    torch.manual_seed(0)
    decoder = MultiScaleDecoder(latent_dim=3, channels=4, size=4, squash=True, core="jiio")
    decoder.deq = get_deq(
        core="jiio",
        f_solver="anderson",
        f_max_iter=200,
        f_tol=1e-12,
        ift=True,
        b_solver="anderson",
        b_max_iter=200,
        b_tol=1e-12,
    )
    decoder = input_optimizable(decoder.double())
    clean = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    operator = make_degradation("inpaint", 4, hole_size=2)
    measurement = operator.measure(clean, seed=0)
    objective = latent_objective(
        lambda image: operator.consistency(image, *measurement.targets()), 0.2
    )
    x0 = torch.zeros(2, 3, dtype=torch.float64)

    def outer(grad):
        solution = infer_jiio(
            decoder,
            objective,
            x0,
            max_iter=800,
            step_size=2.0,
            rtol=1e-13,
            atol=1e-15,
            grad=grad,
        )
        return (solution.output - clean).pow(2).sum()

    weight = decoder.inject.weight
    grads = {}
    for mode in ("implicit", "envelope"):
        decoder.zero_grad()
        outer(mode).backward()
        grads[mode] = weight.grad.clone()
    direction = torch.randn_like(weight)
    eps = 1e-5
    with torch.no_grad():
        weight.add_(eps * direction)
        plus = float(outer(None))
        weight.sub_(2 * eps * direction)
        minus = float(outer(None))
        weight.add_(eps * direction)
    numeric = (plus - minus) / (2 * eps)
    exact = float((grads["implicit"] * direction).sum())
    approximate = float((grads["envelope"] * direction).sum())
    assert exact == pytest.approx(numeric, rel=1e-4)
    # holding x* fixed is not the hypergradient of a loss that differs from the inner one
    assert abs(approximate - numeric) > 1e-3 * abs(numeric)


def test_torchvision_loaders_read_real_formats(tmp_path, monkeypatch):
    import torchvision.datasets.celeba as celeba_module
    import torchvision.datasets.cifar as cifar_module

    write_mnist(tmp_path)
    write_cifar10(tmp_path)
    write_celeba(tmp_path)
    # the files are in the real formats; only the md5 checks of the official archives are off
    monkeypatch.setattr(cifar_module, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(celeba_module, "check_integrity", lambda *args, **kwargs: True)
    shapes = {}
    for name in ("mnist", "cifar10", "celeba"):
        train_x, _, test_x, _ = load_images(name, str(tmp_path), image_size=16)
        shapes[name] = (tuple(train_x.shape), tuple(test_x.shape))
        assert 0 <= float(train_x.min()) and float(train_x.max()) <= 1
    assert shapes == {
        "mnist": ((12, 1, 16, 16), (5, 1, 16, 16)),
        "cifar10": ((15, 3, 16, 16), (4, 3, 16, 16)),
        "celeba": ((6, 3, 16, 16), (3, 3, 16, 16)),
    }
    log = train_generative(
        data="celeba",
        data_dir=str(tmp_path),
        epochs=1,
        out=tmp_path / "run",
        **dict(TINY, image_size=16, train_size=None, eval_size=None, batch_size=3),
    )
    assert log["epochs"][0]["epoch"] == 1


def test_cli_trains_an_inverse_problem(tmp_path, capsys):
    code = main(
        [
            "train",
            "inverse",
            "--problem",
            "superres",
            "--factor",
            "2",
            "--epochs",
            "1",
            "--train-size",
            "16",
            "--batch-size",
            "8",
            "--inner-iters",
            "4",
            "--eval-iters",
            "4",
            "--eval-inference",
            "nested",
            "--image-size",
            "8",
            "--latent-dim",
            "4",
            "--channels",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert "test PSNR" in capsys.readouterr().out
    assert (tmp_path / "samples.png").is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"problem": "colourise"}, "problem"),
        ({"problem": "denoise", "problem_options": {"sigma": -0.1}}, "sigma"),
        ({"problem": "inpaint", "problem_options": {"hole_size": 9}}, "hole"),
        ({"method": "gan"}, "method"),
        ({"data": "mnist"}, "data_dir"),
        ({"data": "mnist", "data_dir": "/nonexistent/folder"}, "data_dir"),
        ({"batch_size": 64}, "batch_size"),
        ({"inner_iters": 0}, "inner_iters"),
        ({"hypergrad": "unrolled"}, "hypergrad"),
        ({"eval_inference": "oracle"}, "eval_inference"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_generative(**{**TINY, "epochs": 1, "out": tmp_path, **kwargs})


def test_cli_reports_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="sigma"):
        main(["train", "inverse", "--sigma", "-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--data-dir"):
        main(["train", "generative", "--data", "cifar10", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as err:
        main(["train", "inverse", "--problem", "unknown"])
    assert err.value.code == 2


def test_make_problem_reconstruct_is_noiseless_identity():
    images = torch.rand(2, 1, 8, 8)
    operator = make_problem("reconstruct", 8)
    measurement = operator.measure(images, seed=3)
    assert torch.equal(measurement.observed, images)
    assert float(operator.consistency(images, *measurement.targets()).abs().max()) == 0.0


def test_test_time_solver_settings_are_used():
    from jiio_ext.adapters.kornia import make_degradation

    from jiio_ext.apps.bench.inverse import TUNED, compare_reconstruction
    from jiio_ext.apps.tasks.latent import build_decoder

    torch.manual_seed(0)
    decoder = build_decoder(latent_dim=4, channels=8, image_size=8)
    operator = make_degradation("denoise", 8, sigma=0.1)
    clean = torch.rand(3, 1, 8, 8)
    kwargs = dict(latent_dim=4, steps=2, max_iter=6)
    default = compare_reconstruction(decoder, operator, clean, **kwargs)
    both = compare_reconstruction(
        decoder, operator, clean, alternatives={"jiio_tuned": TUNED}, **kwargs
    )
    explicit = compare_reconstruction(decoder, operator, clean, **TUNED, **kwargs)
    other = compare_reconstruction(
        decoder, operator, clean, solver="anderson", step_size=1.0, **kwargs
    )
    assert default["jiio"]["name"].startswith("JIIO with default options")
    assert both["jiio"]["name"] == default["jiio"]["name"]
    assert both["traces"]["jiio"][1] == default["traces"]["jiio"][1]
    tuned = both["jiio_tuned"]
    assert "first=6.0" in tuned["name"] and "kind='II'" in tuned["name"]
    assert "speedup_time" in tuned and "full_run" in tuned
    assert both["traces"]["jiio_tuned"][1] == explicit["traces"]["jiio"][1]
    assert both["traces"]["jiio_tuned"][1] != default["traces"]["jiio"][1]
    assert "step_size=1.0" in other["jiio"]["name"]
    assert other["traces"]["jiio"][1] != explicit["traces"]["jiio"][1]
    with pytest.raises(ValueError, match="solver"):
        compare_reconstruction(decoder, operator, clean, solver="nonsense", **kwargs)
    with pytest.raises(ValueError, match="alternatives"):
        compare_reconstruction(decoder, operator, clean, alternatives={"jiio": {}}, **kwargs)
