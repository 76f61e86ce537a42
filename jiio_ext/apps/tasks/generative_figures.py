"""The output figures of ``jiio train generative|inverse``: curves, reconstructions, samples.

:func:`save_figures` writes a run's figures after every epoch (the training curves through
:func:`jiio_ext.apps.figures.training_curves`, the test reconstructions, JIIO's residual
traces); :func:`save_samples` decodes samples from the trained decoder once training ends.
Both need matplotlib; the samples of a non-VAE run need scikit-learn.

Example:
    >>> import pathlib, tempfile, types, torch
    >>> from jiio_ext.apps.tasks.generative_figures import save_samples
    >>> decode = lambda z: torch.sigmoid(z[:, :1, None, None]).expand(-1, 1, 4, 4)
    >>> run = types.SimpleNamespace(settings={"seed": 0, "method": "vae", "latent_dim": 3},
    ...                             latents=torch.zeros(1, 3), decoder=decode)
    >>> save_samples(run, pathlib.Path(tempfile.mkdtemp()), count=8)
    {'source': 'N(0, I) prior', 'count': 8}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["save_figures", "save_samples"]


def save_figures(run: Any, folder: Path) -> None:
    """Write ``curves.png``, ``reconstructions.png`` and, after JIIO, ``residuals.png``.

    Args:
        run: the training run (``train_generative``'s state): ``settings`` (``method``,
            ``problem``), ``log`` (``training_steps``, ``epochs``), ``eval_images``
            (``(clean, measurement, reconstructions)``), ``operator`` (a
            :class:`~jiio_ext.adapters.kornia.Degradation`) and ``module.last_traces``
            (``{name: per-iteration batch means}``, empty without JIIO).
        folder: where the PNG files go.

    Example:
        >>> import pathlib, tempfile, types, torch
        >>> from jiio_ext.adapters.kornia import make_degradation
        >>> operator, clean = make_degradation("inpaint", 8), torch.rand(2, 1, 8, 8)
        >>> run = types.SimpleNamespace(
        ...     settings={"method": "jiio", "problem": "inpaint"}, operator=operator,
        ...     log={"epochs": [{"epoch": 1, "train_loss": 0.1, "test_psnr": 12.0}]},
        ...     eval_images=(clean, operator.measure(clean, seed=0), clean.flip(0)),
        ...     module=types.SimpleNamespace(last_traces={"residual": [1.0, 0.1]}))
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> save_figures(run, folder)
        >>> sorted(path.name for path in folder.iterdir())
        ['curves.png', 'reconstructions.png', 'residuals.png']
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from jiio_ext.apps.figures import training_curves

    panels = [
        (
            "train reconstruction MSE",
            [("steps", "train_loss", "per batch"), ("epochs", "train_loss", "epoch mean")],
            True,
        ),
        ("test PSNR (dB, [0, 1])", [("epochs", "test_psnr", "test, end of epoch")], False),
    ]
    title = f"{run.settings['method']} · {run.settings['problem']}"
    training_curves(run.log, folder / "curves.png", panels, title)

    clean, measurement, images = run.eval_images
    method = run.settings["method"]
    rows = {"target": clean, "measurement": run.operator.naive_inverse(measurement)}
    if run.settings["problem"] == "reconstruct":  # the measurement is the target itself
        del rows["measurement"]
    rows[f"{method} recon."] = images
    count = min(8, clean.shape[0])
    fig, axes = plt.subplots(
        len(rows), count, figsize=(1.2 * count, 1.3 * len(rows)), squeeze=False
    )
    for row, (label, tensor) in enumerate(rows.items()):
        for col in range(count):
            picture = tensor[col].detach().clamp(0, 1).permute(1, 2, 0).cpu().squeeze(-1)
            axes[row][col].imshow(picture.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row][col].set_xticks([])
            axes[row][col].set_yticks([])
        axes[row][0].set_ylabel(label)
    fig.tight_layout()
    fig.savefig(folder / "reconstructions.png", dpi=100)
    plt.close(fig)

    if run.module.last_traces:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for key, trace in run.module.last_traces.items():
            ax.plot(trace, label=key)
        ax.set(
            xlabel="joint iteration",
            ylabel="batch mean (log scale)",
            yscale="log",
            title="JIIO traces (last batch, mean)",
        )
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "residuals.png", dpi=100)
        plt.close(fig)


def save_samples(run: Any, folder: Path, count: int = 32) -> dict[str, Any]:
    """Decode samples into ``samples.png``: a Gaussian mixture on the inferred latents.

    A VAE samples its ``N(0, I)`` prior instead; the other methods fit a Gaussian mixture (up
    to 10 components, full covariances, scikit-learn) to the training latents they inferred.

    Args:
        run: the training run: ``settings`` (``seed``, ``method``, ``latent_dim``),
            ``latents`` (the inferred training latents) and ``decoder`` (latents → images).
        folder: where ``samples.png`` goes.
        count: samples to draw (a multiple of 8, the grid's width).

    Returns:
        ``{"source": how the latents were drawn, "count": count}`` (for the log).

    Example:
        >>> import pathlib, tempfile, types, torch
        >>> decoder = torch.nn.Sequential(
        ...     torch.nn.Linear(2, 16), torch.nn.Sigmoid(), torch.nn.Unflatten(1, (1, 4, 4)))
        >>> run = types.SimpleNamespace(settings={"seed": 0, "method": "jiio", "latent_dim": 2},
        ...                             latents=torch.randn(20, 2), decoder=decoder)
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> save_samples(run, folder, count=16)["source"]
        'Gaussian mixture (10 components) on the training latents'
        >>> (folder / "samples.png").is_file()
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    generator = torch.Generator().manual_seed(run.settings["seed"])
    if run.settings["method"] == "vae":
        latents = torch.randn(count, run.settings["latent_dim"], generator=generator)
        source = "N(0, I) prior"
    else:
        from sklearn.mixture import GaussianMixture

        components = min(10, run.latents.shape[0])
        mixture = GaussianMixture(components, covariance_type="full", random_state=0)
        mixture.fit(run.latents.double().cpu().numpy())
        latents = torch.as_tensor(mixture.sample(count)[0], dtype=torch.float32)
        source = f"Gaussian mixture ({components} components) on the training latents"
    with torch.no_grad():
        images = run.decoder(latents.to(run.latents)).clamp(0, 1).cpu()
    columns = 8
    fig, axes = plt.subplots(count // columns, columns, figsize=(columns, count // columns))
    for ax, picture in zip(axes.flat, images):
        ax.imshow(picture.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle(f"samples: {source}", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "samples.png", dpi=100)
    plt.close(fig)
    return {"source": source, "count": count}
