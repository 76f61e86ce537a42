"""Task distributions of ``jiio train meta``: sinusoid regression and N-way K-shot classification.

* ``sinusoid``: the MAML benchmark. A task is ``y = A sin(x − φ)`` with ``A ~ U[0.1, 5]``,
  ``φ ~ U[0, π]``, inputs ``x ~ U[−5, 5]``; K support and K query points.
* ``digits``: scikit-learn's bundled 8×8 digits; every (digit, rotation by 0/90/180/270°) pair
  is a class (40 classes). Digits 0–6 are meta-training classes, 7–9 held out for meta-test
  (validation split for tuning: 0–4 meta-train, 5–6 held out, 7–9 unused).
* ``omniglot``: torchvision's ``Omniglot`` from ``data_dir`` (``download=False``), images
  downsampled to 28×28, each character × 4 rotations a class; the background set is
  meta-training, the evaluation set (other alphabets) meta-test.

A classification task relabels N sampled classes as 0..N−1 (random order) and draws K support
and Q query images per class.

Example:
    >>> import torch
    >>> pool = digits_pool(torch.device("cpu"))
    >>> task = pool.sample(n_way=5, k_shot=1, k_query=3, tasks=2, train=True,
    ...                    generator=torch.Generator().manual_seed(0))
    >>> task.x_spt.shape, task.y_qry.shape
    (torch.Size([2, 5, 64]), torch.Size([2, 15]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

__all__ = [
    "ClassPool",
    "TaskBatch",
    "digits_pool",
    "omniglot_pool",
    "sample_sinusoid",
]


@dataclass
class TaskBatch:
    """A batch of tasks, task dimension first: support and query inputs and targets.

    Example:
        >>> import torch
        >>> TaskBatch(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.zeros(2, 4, 1),
        ...           torch.zeros(2, 4, 1)).x_qry.shape
        torch.Size([2, 4, 1])
    """

    x_spt: torch.Tensor
    y_spt: torch.Tensor
    x_qry: torch.Tensor
    y_qry: torch.Tensor

    def task(self, t: int) -> TaskBatch:
        """Task ``t`` alone (with a task dimension of 1).

        Example:
            >>> import torch
            >>> b = sample_sinusoid(3, 5, 5, torch.Generator().manual_seed(0))
            >>> b.task(1).x_spt.shape
            torch.Size([1, 5, 1])
        """
        return TaskBatch(
            *(t_[t : t + 1] for t_ in (self.x_spt, self.y_spt, self.x_qry, self.y_qry))
        )


def sample_sinusoid(
    tasks: int,
    k_shot: int,
    k_query: int,
    generator: torch.Generator,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> TaskBatch:
    """Sinusoid regression tasks (MAML's benchmark).

    Args:
        tasks: number of tasks.
        k_shot: support points per task.
        k_query: query points per task.
        generator: random generator (CPU).
        device: device of the returned tensors.
        dtype: floating dtype.

    Returns:
        A :class:`TaskBatch` with inputs ``(T, K, 1)`` and targets ``(T, K, 1)``.

    Example:
        >>> import torch
        >>> b = sample_sinusoid(2, 10, 4, torch.Generator().manual_seed(0))
        >>> b.x_spt.shape, b.y_qry.shape
        (torch.Size([2, 10, 1]), torch.Size([2, 4, 1]))
    """
    amp = 0.1 + 4.9 * torch.rand(tasks, 1, 1, generator=generator, dtype=dtype)
    phase = math.pi * torch.rand(tasks, 1, 1, generator=generator, dtype=dtype)
    x = -5.0 + 10.0 * torch.rand(tasks, k_shot + k_query, 1, generator=generator, dtype=dtype)
    y = amp * torch.sin(x - phase)
    x, y = x.to(device), y.to(device)
    return TaskBatch(x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:])


class ClassPool:
    """Images grouped by class, split into meta-training and meta-test classes.

    Args:
        images: ``(M, D)`` flattened images.
        labels: ``(M,)`` class of each image.
        train_classes: classes used for meta-training.
        test_classes: held-out classes for meta-test.

    Example:
        >>> import torch
        >>> pool = ClassPool(torch.eye(4), torch.tensor([0, 0, 1, 1]), [0], [1])
        >>> pool.sample(1, 1, 1, 1, False, torch.Generator().manual_seed(0)).y_spt
        tensor([[0]])
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        train_classes: list[int],
        test_classes: list[int],
    ) -> None:
        self.images = images
        self.by_class = {
            int(c): torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()
        }
        self.train_classes = list(train_classes)
        self.test_classes = list(test_classes)
        if set(self.train_classes) & set(self.test_classes):
            raise ValueError("train_classes and test_classes must not overlap")

    @property
    def dim(self) -> int:
        """Input size of one image."""
        return int(self.images.shape[1])

    def sample(
        self,
        n_way: int,
        k_shot: int,
        k_query: int,
        tasks: int,
        train: bool,
        generator: torch.Generator,
    ) -> TaskBatch:
        """Draw ``tasks`` N-way K-shot tasks from the training or the held-out classes.

        Raises:
            ValueError: when there are fewer classes than ``n_way`` or too few images.
        """
        classes = self.train_classes if train else self.test_classes
        if n_way > len(classes):
            raise ValueError(f"n_way: {n_way} exceeds the {len(classes)} available classes")
        need = k_shot + k_query
        xs, ys, xq, yq = [], [], [], []
        for _ in range(tasks):
            picked = torch.randperm(len(classes), generator=generator)[:n_way].tolist()
            spt, qry = [], []
            for cls_index in picked:
                members = self.by_class[classes[cls_index]]
                if members.numel() < need:
                    raise ValueError(
                        f"k_shot + k_query: class {classes[cls_index]} has {members.numel()} "
                        f"images, fewer than {need}"
                    )
                chosen = members[torch.randperm(members.numel(), generator=generator)[:need]]
                spt.append(chosen[:k_shot])
                qry.append(chosen[k_shot:])
            labels = torch.arange(n_way)
            xs.append(self.images[torch.cat(spt)])
            xq.append(self.images[torch.cat(qry)])
            ys.append(labels.repeat_interleave(k_shot))
            yq.append(labels.repeat_interleave(k_query))
        device = self.images.device
        return TaskBatch(
            torch.stack(xs), torch.stack(ys).to(device), torch.stack(xq), torch.stack(yq).to(device)
        )


def _rotations(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (class, rotation by k·90°) becomes class ``4·label + k``."""
    rotated = [torch.rot90(images, k, dims=(-2, -1)) for k in range(4)]
    new_labels = [4 * labels + k for k in range(4)]
    return torch.cat(rotated), torch.cat(new_labels)


def digits_pool(
    device: torch.device, dtype: torch.dtype = torch.float32, validation: bool = False
) -> ClassPool:
    """The digits × rotations pool; digits 7–9 (all rotations) are held out.

    With ``validation=True`` the meta-test digits are left out altogether: digits 0–4 are the
    training classes and digits 5–6 the held-out ones (the split the inner settings of
    ``jiio bench meta`` were tuned on).

    Example:
        >>> import torch
        >>> pool = digits_pool(torch.device("cpu"))
        >>> len(pool.train_classes), len(pool.test_classes), pool.dim
        (28, 12, 64)
        >>> len(digits_pool(torch.device("cpu"), validation=True).test_classes)
        8
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the digits tasks need scikit-learn: pip install 'jiio-ext[examples]'"
        ) from err
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=dtype)
    labels = torch.tensor(digits.target, dtype=torch.long)
    images, labels = _rotations(images, labels)
    train_digits, test_digits = (range(5), range(5, 7)) if validation else (range(7), range(7, 10))
    train = [4 * d + k for d in train_digits for k in range(4)]
    test = [4 * d + k for d in test_digits for k in range(4)]
    return ClassPool(images.flatten(1).to(device), labels.to(device), train, test)


def _read_omniglot(data_dir: str, background: bool, size: int):
    from torchvision.datasets import Omniglot

    try:
        data = Omniglot(root=data_dir, background=background, download=False)
    except (RuntimeError, OSError) as err:
        part = "background" if background else "evaluation"
        raise ValueError(
            f"data_dir: cannot read Omniglot ({part} set) from {data_dir!r}: {err}"
        ) from err
    images, labels = [], []
    for index in range(len(data)):
        image, label = data[index]
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(1, 1, image.size[1], image.size[0]).float() / 255.0
        images.append(F.interpolate(pixels, size=(size, size), mode="area")[0, 0])
        labels.append(label)
    if not images:
        raise ValueError(f"data_dir: the Omniglot folder under {data_dir!r} holds no images")
    return 1.0 - torch.stack(images), torch.tensor(labels)  # strokes as 1


def omniglot_pool(
    data_dir: str | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    size: int = 28,
) -> ClassPool:
    """Omniglot through torchvision (no download): background classes train, evaluation test.

    Args:
        data_dir: folder holding ``omniglot-py`` (torchvision's layout).
        device: device of the images.
        dtype: floating dtype.
        size: side of the downsampled images.

    Returns:
        A :class:`ClassPool` of ``size²``-pixel images, characters × 4 rotations as classes.

    Raises:
        ValueError: ``data_dir`` missing or not in torchvision's Omniglot layout.

    Example:
        >>> import torch
        >>> try:
        ...     omniglot_pool("/nonexistent", torch.device("cpu"))
        ... except ValueError as err:
        ...     print(str(err)[:40])
        data_dir: '/nonexistent' is not a readab
    """
    if not data_dir or not Path(data_dir).is_dir():
        raise ValueError(f"data_dir: {data_dir!r} is not a readable folder (needed for omniglot)")
    train_x, train_y = _rotations(*_read_omniglot(data_dir, True, size))
    test_x, test_y = _rotations(*_read_omniglot(data_dir, False, size))
    offset = int(train_y.max()) + 1
    images = torch.cat([train_x, test_x]).flatten(1).to(device=device, dtype=dtype)
    labels = torch.cat([train_y, test_y + offset]).to(device)
    return ClassPool(
        images,
        labels,
        torch.unique(train_y).tolist(),
        (torch.unique(test_y) + offset).tolist(),
    )
