"""The higher-MAML baseline frees each meta-step's graph (it used to leak ~47 MB per step).

Two reference cycles through PyTorch's C++ autograd graph, invisible to ``gc``, kept every
task's unrolled graph alive: torchdeq's ``IFTGrad`` node → ``ctx.func`` → higher's patched
module → fast parameters → the node, and torchdeq's Anderson solver run with grad mode on (the
IFT backward under ``create_graph=True``) saving views of tensors it then writes in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import warnings

import pytest
import torch

pytest.importorskip("torchdeq")
pytest.importorskip("higher")
from jiio_ext.apps.tasks import meta_methods  # noqa: E402
from jiio_ext.apps.tasks.meta import make_meta_problem  # noqa: E402
from jiio_ext.apps.tasks.meta_methods import MetaConfig, meta_step  # noqa: E402

CFG = MetaConfig(inner_lr=0.5, maml_lr=8.0, maml_steps=2)


def _live_objects() -> tuple[int, int]:
    """(live tensors, live torchdeq IFT graph nodes) after a full collection."""
    gc.collect()
    tensors = nodes = 0
    with warnings.catch_warnings():  # isinstance on torch's deprecated module attributes warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor):
                tensors += 1
            elif type(obj).__name__ == "IFTGradBackward":
                nodes += 1
    return tensors, nodes


def _meta_steps(model, sampler, steps: int, cfg: MetaConfig = CFG) -> list[tuple[int, int]]:
    generator = torch.Generator().manual_seed(0)
    counts = []
    for _ in range(steps):
        batch = sampler(2, True, generator)
        model.zero_grad()
        meta_step(model, "maml", batch, cfg)
        counts.append(_live_objects())
    return counts


def test_maml_meta_steps_do_not_accumulate_tensors():
    model, sampler = make_meta_problem("digits", hidden=8, context_dim=4)
    _, nodes_before = _live_objects()  # other tests' graphs (e.g. higher's own) may be alive
    counts = _meta_steps(model, sampler, 3)
    (tensors_first, _), (tensors_last, nodes_last) = counts[0], counts[-1]
    # the old code kept ~450 tensors (the whole unrolled graph) alive per meta-step here
    assert tensors_last - tensors_first < 20, counts
    assert nodes_last == nodes_before, counts  # no IFT node of a finished meta-step survives


def test_breaking_the_cycles_leaves_the_meta_gradient_bit_identical(monkeypatch):
    def grads():
        model, sampler = make_meta_problem("digits", hidden=8, context_dim=4)
        _meta_steps(model, sampler, 1, dataclasses.replace(CFG, maml_steps=3))
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    fixed = grads()
    monkeypatch.setattr(meta_methods, "release_ift_closures", lambda tensors: None)
    monkeypatch.setattr(meta_methods, "boxed_saved_tensors", lambda boxes: contextlib.nullcontext())
    leaky = grads()
    assert fixed.keys() == leaky.keys()
    for name in fixed:
        assert torch.equal(fixed[name], leaky[name]), name
