"""``infer_jiio`` runs the library's default solve: the adaptive input update, damped iteration."""

from __future__ import annotations

import torch

from jiio_ext.apps.tasks.latent import build_decoder, infer_jiio, latent_objective
from jiio_ext.updates import Adaptive


def _problem():
    decoder = build_decoder(latent_dim=4, channels=8, image_size=8, deq_tol=1e-6)
    decoder.double().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    truth = 0.5 * torch.randn(3, 4, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        target = decoder(truth)
    objective = latent_objective(lambda image: (image - target).pow(2).flatten(1).mean(1), 1e-3)
    return decoder, objective, truth, target


def test_infer_jiio_defaults_to_the_adaptive_update_and_reaches_the_optimum():
    decoder, objective, truth, target = _problem()
    x0 = torch.zeros_like(truth)
    with torch.no_grad():
        # budget 80 (the rate's horizon): at 60 the default's larger start (lr 0.15) leaves the
        # third sample 2.5 % above the truth's objective (lr 0.1: 6 % below), see solver-options.md
        solution = infer_jiio(decoder, objective, x0, max_iter=80)
        explicit = decoder.optimize_input(
            x0, objective, max_iter=80, step_size=Adaptive(), rtol=0.0, atol=0.0
        )
        start = objective(decoder(x0), x0)
        at_truth = objective(target, truth)
    assert solution.info["solver"] == "damped"  # a hand-set step would run Anderson
    assert torch.equal(solution.x, explicit.x)  # the same iterates as Adaptive() set by hand
    assert torch.equal(solution.nstep, torch.full((3,), 80))  # fixed budget
    # the true latent bounds the optimum from above; the start is 7-19x above it
    assert bool((solution.objective < at_truth).all()), (solution.objective, at_truth)
    assert bool((solution.objective < 0.2 * start).all())


def test_a_hand_set_step_is_still_an_explicit_option():
    from jiio_ext.schedules import StepSwitch

    decoder, objective, truth, _ = _problem()
    x0 = torch.zeros_like(truth)
    with torch.no_grad():
        tuned = infer_jiio(decoder, objective, x0, max_iter=5, step_size=StepSwitch(3.0, 1.0))
        default = infer_jiio(decoder, objective, x0, max_iter=5)
    assert tuned.info["solver"] == "anderson"
    assert not torch.equal(tuned.x, default.x)
