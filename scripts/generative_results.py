"""Reproduce the generative / inverse-problem results table of docs/results.md.

For each problem (reconstruction, denoising σ = 0.2 and 0.4, inpainting, Gaussian deblurring)
it trains the same DEQ decoder with JIIO, the nested inner loop and a VAE on the bundled
digits (16×16), one run after another in this process, and then times test-time
reconstruction with the JIIO-trained decoder (JIIO vs nested Adam at equal PSNR).

Usage::

    OMP_NUM_THREADS=1 python scripts/generative_results.py --epochs 3 --out jiio-runs/results

Prints a markdown table and writes ``summary.json`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from jiio_ext.bench.inverse import compare_reconstruction
from jiio_ext.tasks.generative import make_problem, train_generative
from jiio_ext.tasks.images import load_images
from jiio_ext.tasks.latent import build_decoder

SETTINGS = {
    "reconstruct": ("reconstruct", {}),
    "denoise σ=0.2": ("denoise", {"sigma": 0.2}),
    "denoise σ=0.4": ("denoise", {"sigma": 0.4}),
    "inpaint 5×5": ("inpaint", {}),
    "deblur (Gaussian 5, σ=1)": ("deblur", {}),
}


def main() -> None:
    """Run every setting and method; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="jiio-runs/generative-results")
    parser.add_argument("--only", nargs="*", default=None, help="setting names to run")
    args = parser.parse_args()
    root = Path(args.out)
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
        summary[label] = {
            "epochs": {m: log["epochs"] for m, log in logs.items()},
            "test_time": test_time,
        }
        print("\n".join(rows), flush=True)
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
