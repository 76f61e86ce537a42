"""The benchmark tasks of ``jiio bench`` by name: JIIO and its baseline side by side.

Each task maps ``(device, **options)`` to a JSON-ready report with a ``baseline`` and a
``jiio`` side (:func:`~jiio_ext.apps.bench.measure.side_report`). A task's module is imported
when the task runs, so that the tasks whose optional libraries are missing still list.

Example:
    >>> from jiio_ext.apps.bench.tasks import run_task
    >>> report = run_task("overhead", device="cpu", quick=True, repeats=2)
    >>> sorted(report)
    ['baseline', 'batch', 'device', 'dtype', 'jiio', 'overhead', 'task']
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from jiio_ext.apps.bench.latent import bench_autocast, bench_latent, bench_overhead

__all__ = ["TASKS", "run_task"]


def _bench_torchdeq(device: torch.device, **options) -> dict:
    from jiio_ext.apps.bench.torchdeq_task import bench_torchdeq

    return bench_torchdeq(device, **options)


def _bench_adversarial(device: torch.device, **options) -> dict:
    from jiio_ext.apps.bench.adversarial import bench_adversarial

    return bench_adversarial(device, **options)


def _bench_inverse(device: torch.device, **options) -> dict:
    from jiio_ext.apps.bench.inverse import bench_inverse

    return bench_inverse(device, **options)


def _bench_meta(device: torch.device, **options) -> dict:
    from jiio_ext.apps.bench.meta import bench_meta

    return bench_meta(device, **options)


# Benchmark tasks by name: each maps (device, **options) to a JSON-ready report.
TASKS: dict[str, Callable[..., dict]] = {
    "adversarial": _bench_adversarial,
    "autocast": bench_autocast,
    "inverse": _bench_inverse,
    "latent": bench_latent,
    "meta": _bench_meta,
    "overhead": bench_overhead,
    "torchdeq": _bench_torchdeq,
}


def run_task(name: str, device: str = "cpu", **options) -> dict:
    """Run one benchmark task and return its JSON-ready report.

    Args:
        name: task name (see :data:`TASKS`).
        device: torch device string.
        **options: task options (``quick``, ``repeats``, ...).

    Returns:
        The report dictionary.

    Raises:
        ValueError: unknown task or unavailable device.

    Example:
        >>> report = run_task("overhead", quick=True, repeats=1)
        >>> report["task"], report["baseline"]["f_evals"], report["jiio"]["f_evals"]
        ('overhead', 1, 1)
        >>> run_task("no-such-task")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: task: unknown benchmark 'no-such-task'; expected one of ['adversarial', ...]
    """
    if name not in TASKS:
        raise ValueError(f"task: unknown benchmark {name!r}; expected one of {sorted(TASKS)}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return TASKS[name](dev, **options)
