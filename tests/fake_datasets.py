"""Small data sets written in the real on-disk formats torchvision reads (shared by tests).

Only torchvision's md5 checks of the official archives are bypassed by the tests (the files
cannot have the official checksums); every file is parsed by torchvision's own readers.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import torch

__all__ = ["write_celeba", "write_cifar10", "write_idx", "write_mnist"]


def write_idx(path: Path, array: torch.Tensor) -> None:
    """An IDX file (MNIST's format) holding ``array`` as unsigned bytes."""
    dims = array.shape
    header = struct.pack(">I", 0x0800 + len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def write_mnist(root: Path, train: int = 12, test: int = 5) -> None:
    """``root/MNIST/raw/*-ubyte`` with random 28×28 images and labels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", train), ("t10k", test)):
        write_idx(
            raw / f"{split}-images-idx3-ubyte",
            torch.randint(0, 256, (count, 28, 28), generator=gen),
        )
        write_idx(raw / f"{split}-labels-idx1-ubyte", torch.randint(0, 10, (count,), generator=gen))


def write_cifar10(root: Path, per_batch: int = 3, test: int = 4) -> None:
    """``root/cifar-10-batches-py/`` with five training batches, a test batch and the meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for name, count in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [
        ("test_batch", test)
    ]:
        batch = {
            "data": torch.randint(0, 256, (count, 3072), generator=gen, dtype=torch.uint8).numpy(),
            "labels": torch.randint(0, 10, (count,), generator=gen).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(i) for i in range(10)]})
    )


def write_celeba(root: Path, train: int = 6, test: int = 3) -> None:
    """``root/celeba/``: aligned JPEGs (178×218) and CelebA's five annotation files."""
    from PIL import Image

    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    names, splits = [], []
    for index in range(train + test):
        name = f"{index + 1:06d}.jpg"
        pixels = torch.randint(0, 256, (218, 178, 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(images / name)
        names.append(name)
        splits.append(0 if index < train else 2)
    count = len(names)
    attributes = ["Smiling", "Young"]
    files = {
        "list_eval_partition.txt": [f"{n} {s}" for n, s in zip(names, splits)],
        "identity_CelebA.txt": [f"{n} {i + 1}" for i, n in enumerate(names)],
        "list_bbox_celeba.txt": [str(count), "image_id x_1 y_1 width height"]
        + [f"{n} 10 10 100 100" for n in names],
        "list_landmarks_align_celeba.txt": [
            str(count),
            "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
            "rightmouth_x rightmouth_y",
        ]
        + [f"{n} 69 109 106 113 77 142 73 152 108 154" for n in names],
        "list_attr_celeba.txt": [str(count), " ".join(attributes)] + [f"{n} 1 -1" for n in names],
    }
    for filename, lines in files.items():
        (folder / filename).write_text("\n".join(lines) + "\n")
