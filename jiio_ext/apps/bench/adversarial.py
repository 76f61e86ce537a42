"""``jiio bench adversarial``: JIIOPGD / JIIOPGDL2 against torchattacks' PGD-k on a DEQ.

A small convolutional torchdeq classifier is trained (clean) on scikit-learn's bundled 8×8
handwritten digits, then attacked on the held-out digits by torchattacks' PGD / PGDL2 (through
the 'jiio' core's differentiable eval mode, so the stock attack has real gradients) and by the
JIIO attacks with the same ``steps``. Reported: robust accuracy ("objective"), mean adversarial
cross-entropy, and wall time of each attack.

Example:
    >>> import torch
    >>> from jiio_ext.apps.models import DEQClassifier  # the attacked model
    >>> DEQClassifier()(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

from jiio_ext.apps.bench.measure import synchronize
from jiio_ext.apps.data import load_digits
from jiio_ext.apps.models import DEQClassifier, train_classifier

__all__ = ["bench_adversarial"]


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

    if user_models is None:
        user_models = not quick and model is None
    train_x, train_y, test_x, test_y = load_digits(device, dtype)
    if quick:
        train_x, train_y, test_x, test_y = train_x[:256], train_y[:256], test_x[:64], test_y[:64]
    if model is None:
        model = DEQClassifier().to(device=device, dtype=dtype)
        train_classifier(model, train_x, train_y, epochs=2 if quick else 6)
    model = model.to(device=device, dtype=dtype).eval()
    steps = 5 if quick else 20

    def evaluate(adv: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            logits = model(adv)
        accuracy = float((logits.argmax(1) == test_y).float().mean())
        return accuracy, float(F.cross_entropy(logits, test_y))

    def timed(attack) -> tuple[torch.Tensor, float]:
        synchronize(device)
        start = time.perf_counter()
        adv = attack(test_x, test_y)
        synchronize(device)
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
