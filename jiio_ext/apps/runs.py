"""Safe checkpoints and run folders of the training tasks.

A checkpoint holds tensors and plain containers only (dicts, lists, tuples, strings, numbers,
booleans, ``None``): it is written after checking that, and read with
``torch.load(weights_only=True)``, so a planted pickle cannot run code. A damaged, planted or
foreign file is refused with a :class:`CheckpointError` that names it. :func:`open_run` decides
what a run may do with its folder: resume only from a checkpoint written with the same
settings, and never replace an earlier run's files unless told to.

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
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from jiio_ext.apps.distributed import DistContext

__all__ = [
    "CheckpointError",
    "check_plain",
    "load_checkpoint_bytes",
    "load_checkpoint_file",
    "open_run",
    "save_checkpoint_file",
]

_PLAIN = (str, int, float, bool, type(None))
_RUN_FILES = ("checkpoint.pt", "log.json")


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
        jiio_ext.apps.runs.CheckpointError: checkpoint .../c.pt: damaged or not a checkpoint ...
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


def _differences(saved: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(settings))
    missing = object()
    lines = []
    for key in keys:
        old, new = saved.get(key, missing), settings.get(key, missing)
        if old != new:
            old_text = "(absent)" if old is missing else repr(old)
            new_text = "(absent)" if new is missing else repr(new)
            lines.append(f"{key}: checkpoint {old_text}, now {new_text}")
    return lines


def open_run(
    ctx: DistContext,
    folder: Path,
    settings: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
) -> Any | None:
    """Check what a run may do with ``folder``; return the state to resume from (or ``None``).

    Args:
        ctx: the run's :class:`~jiio_ext.apps.distributed.DistContext` (the main rank reads the
            folder, every rank gets the same answer).
        folder: the run folder.
        settings: the settings a resume must match (plain values; recorded in the checkpoint
            under ``"settings"``).
        resume: continue from ``folder / "checkpoint.pt"``.
        overwrite: allow a new run to replace the files of an earlier run in ``folder``.

    Returns:
        The checkpoint when resuming, else ``None``.

    Raises:
        CheckpointError: ``resume`` without a checkpoint, a damaged or planted one, or one
            written with other settings (the message lists them).
        ValueError: ``resume`` and ``overwrite`` together, or a new run into a folder that
            holds a run, without ``overwrite``.

    Example:
        >>> import pathlib, tempfile
        >>> from jiio_ext.apps.distributed import init_from_env
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> open_run(init_from_env("cpu"), folder, {"lr": 0.1}, resume=False, overwrite=False)
    """
    if resume and overwrite:
        raise ValueError("overwrite: cannot be combined with resume (continue, or replace?)")
    checkpoint = folder / "checkpoint.pt"
    if not resume:
        present = None
        if ctx.is_main:
            present = [name for name in _RUN_FILES if (folder / name).exists()]
        present = ctx.broadcast_object(present)
        if present and not overwrite:
            raise ValueError(
                f"out: {folder} already holds a run ({', '.join(present)}); pass resume "
                "(--resume) to continue it, overwrite (--overwrite) to replace it, or "
                "choose another folder"
            )
        return None
    state = ctx.load_checkpoint(checkpoint)
    if state is None:
        raise CheckpointError(
            f"resume: no checkpoint at {checkpoint}; drop --resume / resume=True to start a run"
        )
    if not isinstance(state, dict) or not isinstance(state.get("settings"), dict):
        raise CheckpointError(
            f"resume: checkpoint {checkpoint} does not record its settings (written by an "
            "older version); start a new run folder"
        )
    lines = _differences(state["settings"], settings)
    if lines:
        raise CheckpointError(
            f"resume: checkpoint {checkpoint} was written with other settings: "
            + "; ".join(lines)
            + ". Resume with the same settings, or start a new run folder"
        )
    return state
