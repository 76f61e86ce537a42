"""Benchmarks of ``jiio bench``: models and tasks.

Example:
    >>> from jiio_ext.bench import TASKS
    >>> sorted(TASKS)
    ['adversarial', 'autocast', 'inverse', 'latent', 'meta', 'overhead', 'torchdeq']
"""

from jiio_ext.bench.tasks import TASKS, run_task

__all__ = ["TASKS", "run_task"]
