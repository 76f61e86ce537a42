"""``jiio bench adversarial``: JIIOPGD / JIIOPGDL2 against torchattacks' PGD-k on a DEQ.

A small convolutional torchdeq classifier is trained (clean) on scikit-learn's bundled 8×8
handwritten digits, then attacked on the held-out digits by torchattacks' PGD / PGDL2 (through
the 'jiio' core's differentiable eval mode, so the stock attack has real gradients) and by the
JIIO attacks with the same ``steps``. Reported: robust accuracy ("objective"), mean adversarial
cross-entropy, and wall time of each attack.

Example:
    >>> import torch
    >>> from jiio_ext.apps.bench.adversarial import DEQClassifier
    >>> DEQClassifier()(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DEQClassifier", "bench_adversarial", "load_digits"]


class DEQClassifier(nn.Module):
    """A convolutional torchdeq classifier (10 classes) for small images.

    Images larger than 16 pixels are downsampled ×2 by the stem (MNIST 28 → 14, CIFAR-10
    32 → 16); the DEQ cell is a contractive conv with a GroupNorm-ed injection.

    Args:
        channels: feature channels of the DEQ state.
        core: torchdeq core; ``'jiio'`` keeps eval mode differentiable for stock attacks.
        seed: initialisation seed.
        in_channels: image channels.
        image_size: image height (= width).

    Example:
        >>> import torch
        >>> model = DEQClassifier(channels=8).eval()
        >>> images = torch.rand(2, 1, 8, 8, requires_grad=True)
        >>> logits = model(images)
        >>> logits.shape
        torch.Size([2, 10])
        >>> logits.sum().backward()  # the 'jiio' core: input gradients in eval mode
        >>> images.grad.shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        channels: int = 8,
        core: str = "jiio",
        seed: int = 0,
        in_channels: int = 1,
        image_size: int = 8,
    ) -> None:
        super().__init__()
        from torchdeq import get_deq

        import jiio_ext.adapters.torchdeq  # noqa: F401  (registers the 'jiio' core)
        from jiio_ext.apps.bench.models import scale_spectral_norm_

        torch.manual_seed(seed)
        stride = 2 if image_size > 16 else 1
        side = (image_size + stride - 1) // stride
        self.stem = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1)
        self.cell = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(2, channels)
        self.head = nn.Linear(channels * side * side, 10)
        scale_spectral_norm_(self.cell.weight, 0.6)
        self.deq = get_deq(
            core=core,
            f_solver="anderson",
            f_max_iter=40,
            f_tol=1e-5,
            ift=True,
            b_solver="anderson",
            b_max_iter=40,
            b_tol=1e-5,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in ``[0, 1]`` → logits ``(B, 10)``."""
        from torchdeq import reset_deq

        reset_deq(self)
        u = self.norm(self.stem(x))
        z = self.deq(lambda z: torch.relu(self.cell(z) + u), torch.zeros_like(u))[0][-1]
        return self.head(z.flatten(1))


def load_digits(device: torch.device, dtype=torch.float32):
    """scikit-learn's bundled digits as ``(train_x, train_y, test_x, test_y)`` in ``[0, 1]``.

    Example:
        >>> import torch
        >>> train_x, train_y, test_x, test_y = load_digits(torch.device("cpu"))
        >>> train_x.shape, test_x.shape
        (torch.Size([1400, 1, 8, 8]), torch.Size([397, 1, 8, 8]))
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'jiio-ext[examples]'"
        ) from err
    digits = sklearn_digits()
    images = torch.tensor(digits.images / 16.0, dtype=dtype, device=device).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.long, device=device)
    return images[:1400], labels[:1400], images[1400:], labels[1400:]


def _train(model: DEQClassifier, images, labels, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=gen).to(images.device)
        for start in range(0, images.shape[0], 64):
            batch = order[start : start + 64]
            opt.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            opt.step()
    model.eval()


def bench_adversarial(
    device: torch.device,
    *,
    quick: bool = False,
    dtype=torch.float32,
    model: DEQClassifier | None = None,
    user_models: bool | None = None,
) -> dict:
    """PGD-k (torchattacks) vs JIIOPGD with the same ``steps``, L∞ and L2, on the digits.

    Args:
        device: torch device.
        quick: fewer test images and attack steps.
        dtype: floating dtype.
        model: a trained classifier to attack (``jiio demo`` passes its shipped one); ``None``
            trains one first (untimed).
        user_models: also attack the classifiers users write
            (:func:`~jiio_ext.apps.bench.user_classifiers.bench_user_attacks`: PGD-10 / PGD-20 vs
            JIIO-10 at default options, targeted and untargeted); ``None``: unless ``quick``
            or a ``model`` is given.

    Returns:
        The bench report (``objective`` = robust accuracy, lower is a stronger attack), with
        the ``user_models`` rows when asked.

    Example:
        >>> import inspect
        >>> # a run trains the classifier first (seconds even with quick=True), e.g.
        >>> # bench_adversarial(torch.device("cpu"), quick=True)["jiio"]["objective"]
        >>> list(inspect.signature(bench_adversarial).parameters)
        ['device', 'quick', 'dtype', 'model', 'user_models']
    """
    import torchattacks

    from jiio_ext.adapters.torchattacks import JIIOPGD, JIIOPGDL2
    from jiio_ext.apps.bench.tasks import _sync

    if user_models is None:
        user_models = not quick and model is None
    train_x, train_y, test_x, test_y = load_digits(device, dtype)
    if quick:
        train_x, train_y, test_x, test_y = train_x[:256], train_y[:256], test_x[:64], test_y[:64]
    if model is None:
        model = DEQClassifier().to(device=device, dtype=dtype)
        _train(model, train_x, train_y, epochs=2 if quick else 6)
    model = model.to(device=device, dtype=dtype).eval()
    steps = 5 if quick else 20

    def evaluate(adv: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            logits = model(adv)
        accuracy = float((logits.argmax(1) == test_y).float().mean())
        return accuracy, float(F.cross_entropy(logits, test_y))

    def timed(attack) -> tuple[torch.Tensor, float]:
        _sync(device)
        start = time.perf_counter()
        adv = attack(test_x, test_y)
        _sync(device)
        return adv, time.perf_counter() - start

    clean_accuracy, _ = evaluate(test_x)
    threats = {"linf": (0.1, torchattacks.PGD, JIIOPGD), "l2": (1.0, torchattacks.PGDL2, JIIOPGDL2)}
    reports = {}
    for norm, (eps, stock_cls, jiio_cls) in threats.items():
        alpha = eps / 4
        stock_adv, stock_time = timed(
            stock_cls(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
        )
        jiio_adv, jiio_time = timed(
            jiio_cls(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
        )
        stock_acc, stock_loss = evaluate(stock_adv)
        jiio_acc, jiio_loss = evaluate(jiio_adv)
        reports[norm] = {
            "eps": eps,
            "baseline": {
                "name": f"torchattacks.{stock_cls.__name__} steps={steps}",
                "time_s": round(stock_time, 4),
                "f_evals": None,
                "objective": stock_acc,
                "adversarial_loss": stock_loss,
                "peak_mem_mb": None,
            },
            "jiio": {
                "name": f"{jiio_cls.__name__} steps={steps} ({4 * steps} joint iterations)",
                "time_s": round(jiio_time, 4),
                "f_evals": 4 * steps,
                "objective": jiio_acc,
                "adversarial_loss": jiio_loss,
                "peak_mem_mb": None,
            },
            "speedup_time": round(stock_time / jiio_time, 2),
        }
    main = reports["linf"]
    return {
        "task": "adversarial",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": int(test_x.shape[0]),
        "clean_accuracy": clean_accuracy,
        "baseline": main["baseline"],
        "jiio": main["jiio"],
        "speedup_time": main["speedup_time"],
        "speedup_evals": None,
        "l2": reports["l2"],
        **({"user_models": _user_rows(device, dtype)} if user_models else {}),
    }


def _user_rows(device: torch.device, dtype: torch.dtype) -> list[dict]:
    from jiio_ext.apps.bench.user_classifiers import bench_user_attacks

    return bench_user_attacks(device, dtype=dtype)["rows"]
