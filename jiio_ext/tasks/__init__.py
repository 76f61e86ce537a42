"""Training tasks run by ``jiio train TASK`` (they need the ``all`` extra).

Example:
    >>> from jiio_ext.tasks import TRAIN_TASKS
    >>> sorted(TRAIN_TASKS)
    ['adversarial']
"""

__all__ = ["TRAIN_TASKS"]

# Training tasks of ``jiio train`` by name: "module:function" of the entry point.
TRAIN_TASKS = {"adversarial": "jiio_ext.tasks.adversarial:train_adversarial"}
