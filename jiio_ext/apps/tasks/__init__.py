"""Training tasks run by ``jiio train TASK`` (they need the ``all`` extra).

``adversarial`` (Madry adversarial training), ``generative`` (``generative`` and ``inverse``:
decoder-only DEQs with the latents inferred in the loop), ``meta`` (MAML-style meta-learning)
and ``latent`` (the latent inference they share).

Example:
    >>> from jiio_ext.apps.tasks.generative import METHODS
    >>> METHODS
    ('jiio', 'nested', 'vae')
"""

__all__: list[str] = []
