"""Run folders of the training tasks: what a run may do with its folder, and each epoch's save.

Every trainer (``jiio train adversarial|generative|inverse|meta``) keeps ``checkpoint.pt``
(:mod:`jiio_ext.apps.checkpoints`: tensors and plain containers only) and ``log.json``
(:mod:`jiio_ext.apps.runlog`: the shared header, strict JSON) in its run folder.
:func:`open_run` decides what a run may do with the folder: resume only from a checkpoint
written with the same settings, and never replace an earlier run's files unless told to.
:func:`save_epoch` writes both files at the end of an epoch, on the main rank only. The
trainers' plots are :func:`jiio_ext.apps.figures.training_curves`'.

Example:
    >>> import pathlib, tempfile
    >>> from jiio_ext.apps.distributed import init_from_env
    >>> folder, ctx = pathlib.Path(tempfile.mkdtemp()), init_from_env("cpu")
    >>> open_run(ctx, folder, {"lr": 0.1}, resume=False, overwrite=False)  # a new run
    >>> save_epoch(ctx, folder, {"epoch": 0, "settings": {"lr": 0.1}}, {"epochs": [1]})
    >>> open_run(ctx, folder, {"lr": 0.1}, resume=True, overwrite=False)["epoch"]
    0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jiio_ext.apps.checkpoints import CheckpointError
from jiio_ext.apps.distributed import DistContext
from jiio_ext.apps.runlog import write_json

__all__ = ["CHECKPOINT", "LOG", "open_run", "save_epoch"]

# File name of a run folder's checkpoint (jiio_ext.apps.checkpoints' format).
CHECKPOINT = "checkpoint.pt"
# File name of a run folder's JSON log (jiio_ext.apps.runlog's header, strict JSON).
LOG = "log.json"


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
    checkpoint = folder / CHECKPOINT
    if not resume:
        present = None
        if ctx.is_main:
            present = [name for name in (CHECKPOINT, LOG) if (folder / name).exists()]
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


def save_epoch(ctx: DistContext, folder: Path, state: dict[str, Any], log: dict[str, Any]) -> None:
    """Save an epoch: ``state`` to ``folder / CHECKPOINT``, ``log`` to ``folder / LOG``.

    Both are written by the main rank only (the other ranks return at once): the checkpoint
    atomically (:meth:`~jiio_ext.apps.distributed.DistContext.save_checkpoint`), the log as
    strict JSON (:func:`~jiio_ext.apps.runlog.write_json`).

    Args:
        ctx: the run's :class:`~jiio_ext.apps.distributed.DistContext`.
        folder: the run folder.
        state: what a resume needs (tensors and plain containers; with ``"settings"`` for
            :func:`open_run`).
        log: the run's log so far.

    Example:
        >>> import json, pathlib, tempfile
        >>> from jiio_ext.apps.distributed import init_from_env
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> save_epoch(init_from_env("cpu"), folder, {"epoch": 0}, {"epochs": [{"loss": 1.0}]})
        >>> sorted(p.name for p in folder.iterdir()), json.loads((folder / LOG).read_text())
        (['checkpoint.pt', 'log.json'], {'epochs': [{'loss': 1.0}]})
    """
    ctx.save_checkpoint(state, folder / CHECKPOINT)
    if ctx.is_main:
        write_json(folder / LOG, log)
