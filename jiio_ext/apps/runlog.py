"""The one schema of the training logs (``log.json``) and strict JSON for every record.

Every trainer's log starts with the same header (:func:`log_header`): ``schema``, ``task``,
``settings`` (every setting of the run: method, learning rate, batch size, seed, budgets, ...)
and ``versions`` (python, torch, this package and the optional libraries that are installed).
:func:`write_json` writes a log or a demo record as strict JSON: non-finite numbers, which JSON
cannot hold (Python would write ``Infinity`` or ``NaN``), become ``null``.

Example:
    >>> import json, pathlib, tempfile
    >>> log = {**log_header("adversarial", {"lr": 0.01, "seed": 0}), "epochs": []}
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.json"
    >>> write_json(path, {**log, "best": float("inf")})
    >>> sorted(json.loads(path.read_text()))
    ['best', 'epochs', 'schema', 'settings', 'task', 'versions']
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA", "finite", "log_header", "versions", "write_json"]

# Name and version of the log schema (a change of the header's keys changes the number).
SCHEMA = "jiio-run-log/1"
_PACKAGES = ("jiio-ext", "torch", "torchdeq", "torchattacks", "torchvision", "kornia", "higher")


def versions() -> dict[str, str]:
    """Python's version and those of this package and the libraries it uses, when installed.

    Returns:
        ``{name: version}``.

    Example:
        >>> "python" in versions() and "torch" in versions()
        True
    """
    found = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def log_header(task: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The header every training log starts with.

    Args:
        task: the trainer, e.g. ``"adversarial"``, ``"generative"``, ``"inverse"``, ``"meta"``.
        settings: every setting of the run, by the trainer's argument name.

    Returns:
        ``{"schema", "task", "settings", "versions"}`` (the settings copied).

    Example:
        >>> log_header("meta", {"seed": 0})["settings"]
        {'seed': 0}
    """
    return {"schema": SCHEMA, "task": task, "settings": dict(settings), "versions": versions()}


def finite(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth, replaced by ``None``.

    Args:
        value: a JSON-like value (dicts, lists, tuples, strings, numbers, ``None``).

    Returns:
        The same structure (tuples as lists).

    Example:
        >>> finite({"a": [1.0, float("nan")], "b": float("-inf")})
        {'a': [1.0, None], 'b': None}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def write_json(path: str | os.PathLike, value: Any) -> None:
    r"""Write ``value`` to ``path`` as strict, indented JSON (see :func:`finite`).

    Args:
        path: the file to write.
        value: the log or record.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.json"
        >>> write_json(path, {"loss": float("nan")})
        >>> path.read_text()
        '{\n  "loss": null\n}'
    """
    Path(path).write_text(json.dumps(finite(value), indent=2, allow_nan=False))
