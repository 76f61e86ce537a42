"""Benchmarks of ``jiio bench``: models and tasks.

Example:
    >>> from jiio_ext.apps.bench import TASKS
    >>> sorted(TASKS)
    ['adversarial', 'autocast', 'inverse', 'latent', 'meta', 'overhead', 'torchdeq']
"""

from jiio_ext.apps.bench.tasks import TASKS, run_task

__all__ = ["TASKS", "run_task"]
