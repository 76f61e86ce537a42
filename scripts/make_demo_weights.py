"""Rebuild the small trained digits models that ``jiio demo`` ships in ``jiio_ext/apps/weights/``.

* ``digits_classifier.pt``: the torchdeq classifier of ``jiio bench adversarial``
  (:class:`jiio_ext.apps.models.DEQClassifier`, 8 channels), trained clean on the
  bundled 8×8 digits with the bench's own recipe (Adam lr 0.01, batch 64, 6 epochs, seed 0).
* ``digits_decoder.pt``: the multi-scale DEQ decoder of ``jiio bench inverse``
  (:func:`jiio_ext.apps.tasks.latent.build_decoder`, latent 16, 16×16 digits), trained with JIIO
  in the loop by :func:`jiio_ext.apps.tasks.generative.train_generative` (4 epochs, all training
  digits, seed 0: the full bench's settings).

Each file holds plain tensors and numbers only (``{"state_dict", "config", "recipe"}``), so the
demo loads it with ``torch.load(..., weights_only=True)``. Run (about 10 minutes on 1 core):

    OMP_NUM_THREADS=1 python scripts/make_demo_weights.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "jiio_ext" / "weights"


def make_classifier(out: Path) -> Path:
    """Train and save the digits classifier; returns the file written."""
    from jiio_ext.apps.data import load_digits
    from jiio_ext.apps.models import DEQClassifier, train_classifier

    device = torch.device("cpu")
    train_x, train_y, _, _ = load_digits(device)
    torch.manual_seed(0)
    model = DEQClassifier(channels=8, seed=0)
    train_classifier(model, train_x, train_y, epochs=6)
    path = out / "digits_classifier.pt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "config": {"channels": 8, "image_size": 8},
            "recipe": "models.train_classifier: Adam lr 0.01, batch 64, 6 epochs, seed 0",
        },
        path,
    )
    return path


def make_decoder(out: Path) -> Path:
    """Train and save the digits decoder; returns the file written."""
    from jiio_ext.apps.checkpoints import load_checkpoint_file
    from jiio_ext.apps.tasks.generative import train_generative

    with tempfile.TemporaryDirectory() as folder:
        train_generative(
            epochs=4,
            train_size=None,
            eval_size=16,
            latent_dim=16,
            out=folder,
            sample=False,
            seed=0,
        )
        state = load_checkpoint_file(f"{folder}/checkpoint.pt")
    path = out / "digits_decoder.pt"
    torch.save(
        {
            "state_dict": state["decoder"],
            "config": {"latent_dim": 16, "image_size": 16},
            "recipe": "train_generative: JIIO in the loop, 4 epochs, all digits, seed 0",
        },
        path,
    )
    return path


def main(argv: list[str] | None = None) -> int:
    """Write the weight files; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the weight files")
    parser.add_argument(
        "--only", choices=("classifier", "decoder"), default=None, help="rebuild one file"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    makers = {"classifier": make_classifier, "decoder": make_decoder}
    for name, make in makers.items():
        if args.only in (None, name):
            path = make(args.out)
            print(f"{path}: {path.stat().st_size / 1024:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
