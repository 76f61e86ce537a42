"""Safe checkpoint files of the training tasks and the demo's shipped weights.

A checkpoint holds tensors and plain containers only (dicts, lists, tuples, strings, numbers,
booleans, ``None``): it is written after checking that, and read with
``torch.load(weights_only=True)``, so a planted pickle cannot run code. A damaged, planted or
foreign file is refused with a :class:`CheckpointError` that names it. What a run may do with
its folder (resume, overwrite) is :func:`jiio_ext.apps.tasks.training.open_run`'s.

Example:
    >>> import pathlib, tempfile, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> save_checkpoint_file({"epoch": 0, "weights": torch.zeros(2)}, path)
    >>> load_checkpoint_file(path)["epoch"]
    0
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "check_plain",
    "load_checkpoint_bytes",
    "load_checkpoint_file",
    "save_checkpoint_file",
]

_PLAIN = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, foreign, planted, or from other settings.

    Example:
        >>> isinstance(CheckpointError("checkpoint.pt: damaged"), ValueError)
        True
    """


def check_plain(state: Any, where: str = "state") -> None:
    """Check that ``state`` holds only tensors and plain containers (what a checkpoint may).

    Args:
        state: the object to check.
        where: its name, for the error message.

    Raises:
        TypeError: some value is another object; the message names its place.

    Example:
        >>> import torch
        >>> check_plain({"w": torch.zeros(1), "log": [1, "a", None]})
        >>> check_plain({"f": print})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        TypeError: state['f']: a checkpoint holds only tensors and plain containers, got ...
    """
    if isinstance(state, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(state, dict):
        for key, value in state.items():
            if not isinstance(key, _PLAIN):
                raise TypeError(f"{where}: key {key!r} is not a string or a number")
            check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where}: a checkpoint holds only tensors and plain containers, got {type(state).__name__}"
    )


def save_checkpoint_file(state: Any, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (a partial file renamed over it).

    Raises:
        TypeError: ``state`` holds something other than tensors and plain containers.

    Example:
        >>> import pathlib, tempfile
        >>> save_checkpoint_file({"epoch": 1}, pathlib.Path(tempfile.mkdtemp()) / "c.pt")
    """
    check_plain(state)
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _refuse(name: str, err: BaseException) -> CheckpointError:
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in text:
        found = [line.strip() for line in text.splitlines() if "Unsupported global" in line]
        return CheckpointError(
            f"checkpoint {name}: refused, it holds objects other than tensors and plain "
            f"containers, and loading them could run code ({found[0].split('. ')[0]}). It "
            "was not written by this version of jiio-ext; delete it, or start a new run in "
            "another folder"
        )
    detail = text.splitlines()[0][:160] if text else "empty or truncated file"
    return CheckpointError(
        f"checkpoint {name}: damaged or not a checkpoint ({type(err).__name__}: {detail}). "
        "Delete it to start afresh, or point --out / out= at another run folder"
    )


def _load(source: Any, name: str) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except (
        EOFError,
        OSError,
        RuntimeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        TypeError,
    ) as err:
        raise _refuse(name, err) from None


def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """Read the checkpoint at ``path`` with ``weights_only=True``, tensors on the CPU.

    Raises:
        CheckpointError: the file is damaged, empty, truncated, or holds other objects.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.pt"
        >>> _ = path.write_bytes(b"not a checkpoint")
        >>> load_checkpoint_file(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        jiio_ext.apps.checkpoints.CheckpointError: checkpoint .../c.pt: damaged ...
    """
    return _load(path, str(path))


def load_checkpoint_bytes(payload: bytes, name: str) -> Any:
    """:func:`load_checkpoint_file` for the bytes of a checkpoint (``name`` for the errors).

    Example:
        >>> import io, torch
        >>> buffer = io.BytesIO(); torch.save({"epoch": 2}, buffer)
        >>> load_checkpoint_bytes(buffer.getvalue(), "c.pt")
        {'epoch': 2}
    """
    return _load(io.BytesIO(payload), name)
