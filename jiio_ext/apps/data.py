"""Image data sets of the benches, the training commands and the demo, as floats in ``[0, 1]``.

``digits`` is scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download);
``mnist``, ``cifar10`` and ``celeba`` are read with torchvision's dataset classes from a data
folder (``download=False``: the user supplies the files in torchvision's layout). Images are
resized (antialiased) to a square ``image_size``; CelebA is centre-cropped to its 140×140 face
region first, as is usual for 64×64 CelebA.

Example:
    >>> import torch
    >>> from jiio_ext.apps.data import load_images
    >>> train_x, train_y, test_x, test_y = load_images("digits", image_size=16)
    >>> train_x.shape, test_x.shape, float(train_x.max()) <= 1.0
    (torch.Size([1400, 1, 16, 16]), torch.Size([397, 1, 16, 16]), True)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from jiio_ext.apps import train_options

__all__ = ["DATASETS", "load_digits", "load_images"]

# Supported data sets ("digits" is bundled; the others are read from a data folder),
# defined with the CLI's options
DATASETS = train_options.DATASETS


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


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    mode = "bilinear" if size > images.shape[-1] else "area"
    return F.interpolate(images, size=(size, size), mode=mode).clamp(0.0, 1.0)


def _first(count: int | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t if count is None else t[:count] for t in tensors)


def _torchvision_split(name: str, data_dir: str, train: bool, limit: int | None):
    from torchvision import datasets

    if name == "mnist":
        part = datasets.MNIST(root=data_dir, train=train, download=False)
        images = part.data[:limit].float().div(255.0).unsqueeze(1)
        return images, part.targets[:limit].long()
    if name == "cifar10":
        part = datasets.CIFAR10(root=data_dir, train=train, download=False)
        images = torch.as_tensor(part.data[:limit]).float().div(255.0).permute(0, 3, 1, 2)
        return images, torch.as_tensor(part.targets[:limit], dtype=torch.long)
    from torchvision.transforms import functional as TF

    part = datasets.CelebA(
        root=data_dir, split="train" if train else "test", target_type="identity", download=False
    )
    count = len(part) if limit is None else min(limit, len(part))
    images, labels = [], []
    for index in range(count):
        picture, identity = part[index]
        tensor = TF.to_tensor(TF.center_crop(picture, [140, 140]))
        images.append(tensor)
        labels.append(int(identity))
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def load_images(
    name: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, test_x, test_y)``: images ``(N, C, S, S)`` in ``[0, 1]`` and labels.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: torchvision data folder (needed for every set but ``digits``).
        image_size: output side length (default: the set's own).
        device: where the tensors go.
        train_size: keep the first ``train_size`` training images (default: all).
        test_size: keep the first ``test_size`` test images (default: all).
        dtype: floating dtype of the images.

    Returns:
        The four tensors (labels are class labels; identities for CelebA).

    Raises:
        ValueError: unknown set, missing or unreadable data folder, bad sizes.

    Example:
        >>> load_images("digits", image_size=8, train_size=10)[0].shape
        torch.Size([10, 1, 8, 8])
    """
    if name not in DATASETS:
        raise ValueError(f"data: unknown data set {name!r}; expected one of {DATASETS}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 4):
        raise ValueError(f"image_size: expected an integer ≥ 4, got {image_size!r}")
    for label, count in (("train_size", train_size), ("test_size", test_size)):
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"{label}: expected a positive integer or None, got {count!r}")
    if name == "digits":
        train_x, train_y, test_x, test_y = load_digits(torch.device("cpu"), dtype=torch.float32)
        train_x, train_y = _first(train_size, train_x, train_y)
        test_x, test_y = _first(test_size, test_x, test_y)
    else:
        if not data_dir or not Path(data_dir).is_dir():
            raise ValueError(
                f"data_dir: {data_dir!r} is not a readable folder (needed for {name}; the files "
                "must be in torchvision's layout, downloads are off)"
            )
        try:
            train_x, train_y = _torchvision_split(name, data_dir, True, train_size)
            test_x, test_y = _torchvision_split(name, data_dir, False, test_size)
        except (RuntimeError, OSError) as err:
            raise ValueError(f"data_dir: cannot read {name} from {data_dir!r}: {err}") from err
    train_x, test_x = _resize(train_x, image_size), _resize(test_x, image_size)
    return (
        train_x.to(device=device, dtype=dtype),
        train_y.to(device),
        test_x.to(device=device, dtype=dtype),
        test_y.to(device),
    )
