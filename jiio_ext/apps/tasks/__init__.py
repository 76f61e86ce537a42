"""Training tasks run by ``jiio train TASK`` (they need the ``all`` extra).

Example:
    >>> from jiio_ext.apps.tasks import TRAIN_TASKS
    >>> sorted(TRAIN_TASKS)
    ['adversarial', 'generative', 'inverse', 'meta']
"""

__all__ = ["TRAIN_TASKS"]

# Training tasks of ``jiio train`` by name: "module:function" of the entry point.
TRAIN_TASKS = {
    "adversarial": "jiio_ext.apps.tasks.adversarial:train_adversarial",
    "generative": "jiio_ext.apps.tasks.generative:train_generative",
    "inverse": "jiio_ext.apps.tasks.generative:train_generative",
    "meta": "jiio_ext.apps.tasks.meta:train_meta",
}
