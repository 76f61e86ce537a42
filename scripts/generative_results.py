"""Reproduce the generative / inverse-problem results table of docs/results.md.

For each problem (reconstruction, denoising σ = 0.2 and 0.4, inpainting, Gaussian deblurring)
it trains the same DEQ decoder with JIIO, the nested inner loop and a VAE on the bundled
digits (16×16), one run after another in this process, and then times test-time
reconstruction with the JIIO-trained decoder (JIIO vs nested Adam at equal PSNR). The final
JIIO- and nested-trained decoders are also measured with two common test-time inferences
(JIIO, 200 iterations; nested Adam, 100 steps), so their PSNRs compare decoders only.

Usage::

    OMP_NUM_THREADS=1 python scripts/generative_results.py --epochs 2 --out jiio-runs/results
    python scripts/generative_results.py --out jiio-runs/results --evaluate   # existing runs

Prints a markdown table and writes ``summary.json`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from jiio_ext.adapters.kornia import psnr, ssim

from jiio_ext.apps.bench.inverse import compare_reconstruction
from jiio_ext.apps.data import load_images
from jiio_ext.apps.tasks.generative import make_problem, train_generative
from jiio_ext.apps.tasks.latent import build_decoder, infer_jiio, infer_nested, latent_objective

SETTINGS = {
    "reconstruct": ("reconstruct", {}),
    "denoise σ=0.2": ("denoise", {"sigma": 0.2}),
    "denoise σ=0.4": ("denoise", {"sigma": 0.4}),
    "inpaint 5×5": ("inpaint", {}),
    "deblur (Gaussian 5, σ=1)": ("deblur", {}),
}


def common_quality(folder: Path, problem: str, options: dict) -> dict[str, float]:
    """Test PSNR/SSIM of a trained decoder under JIIO-200 and nested Adam-100 inference."""
    decoder = build_decoder()
    state = torch.load(folder / "checkpoint.pt", weights_only=False)
    decoder.load_state_dict(state["decoder"])
    clean = load_images("digits", image_size=16)[2][:128]
    operator = make_problem(problem, 16, **options)
    measurement = operator.measure(clean, seed=12_345)
    targets = measurement.targets()
    objective = latent_objective(lambda image: operator.consistency(image, *targets), 1e-3)
    x0 = torch.zeros(clean.shape[0], 16)
    with torch.no_grad():
        by_jiio = infer_jiio(decoder, objective, x0, max_iter=200).output
    latents = infer_nested(decoder, objective, x0, steps=100, lr=0.3).x
    with torch.no_grad():
        by_adam = decoder(latents)
    return {
        "psnr_jiio200": round(float(psnr(by_jiio, clean).mean()), 2),
        "psnr_adam100": round(float(psnr(by_adam, clean).mean()), 2),
        "ssim_jiio200": round(float(ssim(by_jiio, clean).mean()), 3),
    }


def evaluate(root: Path) -> None:
    """Common-inference quality of every finished JIIO / nested run under ``root``."""
    rows = [
        "| setting | decoder | PSNR (JIIO-200) | PSNR (Adam-100) | SSIM (JIIO-200) |",
        "|---|---|---|---|---|",
    ]
    for label, (problem, options) in SETTINGS.items():
        for method in ("jiio", "nested"):
            folder = root / f"{problem}-{options.get('sigma', '')}-{method}"
            if not (folder / "checkpoint.pt").is_file():
                continue
            q = common_quality(folder, problem, options)
            rows.append(
                f"| {label} | {method} | {q['psnr_jiio200']:.2f} | {q['psnr_adam100']:.2f} | "
                f"{q['ssim_jiio200']:.3f} |"
            )
            print(rows[-1], flush=True)
        folder = root / f"{problem}-{options.get('sigma', '')}-jiio"
        if (folder / "checkpoint.pt").is_file():
            print(label, test_time_line(folder, problem, options), flush=True)
    print("\n".join(rows))


def test_time_line(folder: Path, problem: str, options: dict) -> str:
    """Test-time reconstruction with a JIIO-trained decoder, JIIO vs nested, equal PSNR.

    Two image sets: the first 128 test digits with measurement seed 0 (where JIIO's test-time
    settings were chosen) and the next 128 with seed 1 (the held-out check).
    """
    decoder = build_decoder()
    decoder.load_state_dict(torch.load(folder / "checkpoint.pt", weights_only=False)["decoder"])
    test = load_images("digits", image_size=16)[2]
    parts = []
    for label, clean, seed in (("first 128", test[:128], 0), ("held-out 128", test[128:256], 1)):
        result = compare_reconstruction(
            decoder,
            make_problem(problem, 16, **options),
            clean,
            latent_dim=16,
            max_iter=200,
            seed=seed,
        )
        parts.append(
            f"{label}: nested {result['baseline']['time_s']:.2f} s "
            f"(PSNR {result['baseline']['objective']:.2f}) "
            f"vs JIIO {result['jiio']['time_s']:.2f} s "
            f"({result['jiio']['f_evals']} it., PSNR {result['jiio']['objective']:.2f}; "
            f"{result['jiio']['full_run']['objective']:.2f} after 200): {result['speedup_time']}×"
        )
    return "test-time reconstruction, " + "; ".join(parts)


def main() -> None:
    """Run every setting and method; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="jiio-runs/generative-results")
    parser.add_argument("--only", nargs="*", default=None, help="setting names to run")
    parser.add_argument("--evaluate", action="store_true", help="only the common evaluation")
    args = parser.parse_args()
    root = Path(args.out)
    if args.evaluate:
        evaluate(root)
        return
    summary = {}
    rows = [
        "| setting | method | epoch time (s) | test PSNR (dB) | test SSIM | speed-up vs nested |",
        "|---|---|---|---|---|---|",
    ]
    for label, (problem, options) in SETTINGS.items():
        if args.only and label not in args.only:
            continue
        logs = {}
        for method in ("jiio", "nested", "vae"):
            folder = root / f"{problem}-{options.get('sigma', '')}-{method}"
            logs[method] = train_generative(
                problem=problem,
                problem_options=options,
                method=method,
                epochs=args.epochs,
                out=folder,
                progress=False,
            )
        times = {
            m: sum(e["epoch_time_s"] for e in log["epochs"]) / len(log["epochs"])
            for m, log in logs.items()
        }
        for method, log in logs.items():
            last = log["epochs"][-1]
            ratio = times["nested"] / times[method]
            rows.append(
                f"| {label} | {method} | {times[method]:.1f} | {last['test_psnr']:.2f} | "
                f"{last['test_ssim']:.3f} | {ratio:.2f}× |"
            )
        state = torch.load(
            root / f"{problem}-{options.get('sigma', '')}-jiio" / "checkpoint.pt",
            weights_only=False,
        )
        decoder = build_decoder()
        decoder.load_state_dict(state["decoder"])
        clean = load_images("digits", image_size=16)[2][:128]
        test_time = compare_reconstruction(
            decoder, make_problem(problem, 16, **options), clean, latent_dim=16
        )
        summary.setdefault(label, {}).update(
            {"epochs": {m: log["epochs"] for m, log in logs.items()}, "test_time": test_time}
        )
        print("\n".join(rows), flush=True)
        for method in ("jiio", "nested"):
            folder = root / f"{problem}-{options.get('sigma', '')}-{method}"
            summary.setdefault(label, {})[f"common_{method}"] = common_quality(
                folder, problem, options
            )
            print(label, method, summary[label][f"common_{method}"], flush=True)
        print(
            f"{label}: test-time reconstruction, nested {test_time['baseline']['time_s']:.2f} s "
            f"(PSNR {test_time['baseline']['objective']:.2f}) vs JIIO "
            f"{test_time['jiio']['time_s']:.2f} s (PSNR {test_time['jiio']['objective']:.2f}): "
            f"{test_time['speedup_time']}×",
            flush=True,
        )
        (root / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
