"""Four more DEQs written the way users write them, outside the zoo: defaults against Adam-40.

A generalisation check of the default options, run after they were chosen and used for no
choice. The models use torchdeq features the zoo does not: spectral norm with torchdeq's
default core (fixed-point iteration, one-step phantom gradient), the sliced core with a
two-step phantom gradient, Broyden on a low-rank cell whose state is the output, and a softmax
output. Every model gets the zoo's two objectives (``jiio_ext.apps.bench.zoo``) at scale 1,
from ``x0 = 0`` and from a noisy guess of the true input (``x_true + 0.5 · std · noise``).
Baseline and measurement are the zoo's: Adam-40 through ``model(x)``, best of lr 0.03 / 0.1 /
0.3, both sides scored at a tight fixed point; JIIO is ``optimize_input`` with no option.

Run::

    OMP_NUM_THREADS=1 python scripts/more_user_models.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn
from torchdeq import get_deq
from torchdeq.norm import apply_norm, reset_norm

from jiio_ext.apps.bench import zoo


class SpectralMLP(nn.Module):
    """Spectral norm, torchdeq's default core (fixed-point iteration, one-step phantom grad)."""

    def __init__(self, inputs: int = 24, width: int = 96, outputs: int = 12) -> None:
        super().__init__()
        self.inj, self.cell = nn.Linear(inputs, width), nn.Linear(width, width)
        self.head = nn.Linear(width, outputs)
        apply_norm(self, norm_type="spectral_norm", filter_out=["inj", "head"])
        self.deq = get_deq()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs ``(B, 24)`` → outputs ``(B, 12)``."""
        reset_norm(self)
        u = self.inj(x)
        z, _ = self.deq(lambda z: F.relu(self.cell(z) + u), torch.zeros_like(u))
        return self.head(z[-1])


class SlicedConv(nn.Module):
    """The sliced core (two states, two-step phantom gradient), fixed-point iteration, images."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.inj = nn.Conv2d(1, channels, 3, padding=1)
        self.cell = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.cell.weight.mul_(0.4)
        self.out = nn.Conv2d(channels, 1, 3, padding=1)
        self.deq = get_deq(
            core="sliced", f_solver="fixed_point_iter", f_max_iter=24, grad=2, n_states=2
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 1, 10, 10)`` → images of the same shape."""
        u = self.inj(x)
        z, _ = self.deq(lambda z: torch.tanh(self.cell(z) + u), torch.zeros_like(u))
        return self.out(z[-1])


class BroydenLowRank(nn.Module):
    """Broyden forward and backward with IFT on a low-rank cell; the state is the output."""

    def __init__(self, dim: int = 40, rank: int = 8) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim)
        self.inp = nn.Linear(dim, dim)
        self.deq = get_deq(
            f_solver="broyden", f_max_iter=30, ift=True, b_solver="broyden", b_max_iter=30
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs ``(B, 40)`` → the fixed point ``(B, 40)``."""
        u = self.inp(x)
        z, _ = self.deq(lambda z: torch.tanh(0.8 * self.up(self.down(z)) + u), torch.zeros_like(u))
        return z[-1]


class SoftmaxClassifier(nn.Module):
    """Anderson with IFT; the output is a probability vector."""

    def __init__(self, inputs: int = 16, width: int = 48, classes: int = 6) -> None:
        super().__init__()
        self.inj, self.cell = nn.Linear(inputs, width), nn.Linear(width, width)
        self.head = nn.Linear(width, classes)
        with torch.no_grad():
            self.cell.weight.mul_(0.6)
        self.deq = get_deq(f_solver="anderson", f_max_iter=30, ift=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs ``(B, 16)`` → class probabilities ``(B, 6)``."""
        u = self.inj(x)
        z, _ = self.deq(lambda z: torch.tanh(self.cell(z) + u), torch.zeros_like(u))
        return F.softmax(3 * self.head(z[-1]), dim=-1)


MODELS = {
    "spectral-mlp": (SpectralMLP, lambda b: torch.randn(b, 24)),
    "sliced-conv": (SlicedConv, lambda b: torch.rand(b, 1, 10, 10)),
    "broyden-lowrank": (BroydenLowRank, lambda b: 0.5 * torch.randn(b, 40)),
    "softmax": (SoftmaxClassifier, lambda b: torch.randn(b, 16)),
}


def run(batch: int = 8) -> list[dict]:
    """Every model × objective × start: Adam-40's and JIIO's objectives, times and ratio."""
    rows = []
    for name, (factory, sample) in MODELS.items():
        for kind in zoo.OBJECTIVES:
            for start in ("zeros", "guess"):
                torch.manual_seed(0)
                model, x_true = factory(), sample(batch)
                with zoo._tight(model), torch.no_grad():
                    targets = zoo._output(model(x_true)).detach()
                objective = zoo._objective(kind, targets, 1.0, seed=1)
                torch.manual_seed(5)
                noise = 0.5 * x_true.std() * torch.randn_like(x_true)
                x0 = torch.zeros_like(x_true) if start == "zeros" else x_true + noise
                row = zoo._row(model, x0, objective, name=f"{name} / {kind} / x0 {start}")
                rows.append(row)
                print(
                    f"{row['name']:38s} Adam lr {row['baseline']['lr']:<4} "
                    f"{row['baseline']['objective']:9.3g} {row['baseline']['time_s']:6.2f}s | "
                    f"JIIO {row['jiio']['objective']:9.3g} {row['jiio']['time_s']:6.2f}s | "
                    f"objective ratio {row['objective_ratio']:.2f}, time ratio {row['ratio']}",
                    flush=True,
                )
    return rows


def main() -> None:
    """Print one line per row; ``--json PATH`` also writes the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
