"""Attack and adversarially train a DEQ classifier on scikit-learn's bundled digits.

Shows the public API end to end: a torchdeq classifier, ``JIIOPGD`` as a drop-in for
``torchattacks.PGD``, and Madry training whose logits come from the attack's own joint solution
(``adversarial_logits``). Runs on a fresh machine with no download:

    python examples/attack_digits.py --epochs 3
"""

from __future__ import annotations

import argparse
import time

import torch
import torchattacks
from jiio_ext.adapters.torchattacks import JIIOPGD, adversarial_logits
from torch.nn import functional as F

from jiio_ext.apps.data import load_digits
from jiio_ext.apps.models import DEQClassifier


def robust_accuracy(model, attack, images, labels) -> float:
    adversarial = attack(images, labels)
    with torch.no_grad():
        return float((model(adversarial).argmax(1) == labels).float().mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--train-size", type=int, default=None)
    args = parser.parse_args(argv)

    train_x, train_y, test_x, test_y = load_digits(torch.device("cpu"))
    if args.train_size:
        train_x, train_y = train_x[: args.train_size], train_y[: args.train_size]
    model = DEQClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    attack = JIIOPGD(model, eps=args.eps, alpha=args.eps / 4, steps=10)
    for epoch in range(args.epochs):
        started = time.perf_counter()
        for start in range(0, len(train_x), 64):
            images, labels = train_x[start : start + 64], train_y[start : start + 64]
            model.train()
            _, logits = adversarial_logits(attack, images, labels)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: {time.perf_counter() - started:.1f} s, loss {float(loss):.3f}")
    model.eval()
    pgd = torchattacks.PGD(model, eps=args.eps, alpha=args.eps / 4, steps=20)
    result = {
        "clean": float((model(test_x).argmax(1) == test_y).float().mean()),
        "pgd20": robust_accuracy(model, pgd, test_x, test_y),
        "jiio_pgd20": robust_accuracy(
            model, JIIOPGD(model, eps=args.eps, alpha=args.eps / 4, steps=20), test_x, test_y
        ),
    }
    print("test accuracy:", result)
    return result


if __name__ == "__main__":
    main()
