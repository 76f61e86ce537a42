"""JIIOPGD / JIIOPGDL2 on a real torchdeq classifier, against torchattacks' own PGD."""

from __future__ import annotations

import functools
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

torchattacks = pytest.importorskip("torchattacks")
pytest.importorskip("torchdeq")
from jiio_ext.adapters.torchattacks import JIIOPGD, JIIOPGDL2  # noqa: E402

from jiio_ext.apps.models import DEQClassifier  # noqa: E402


def _data(batch=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, 8, 8, generator=gen), torch.randint(0, 10, (batch,), generator=gen)


@functools.cache
def _trained_weights() -> dict[str, torch.Tensor]:
    """Weights of a model trained briefly on a fixed random batch (trained once per session)."""
    model = DEQClassifier()
    images, labels = _data(32, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _trained_model():
    """A fresh copy of the briefly trained model (so clean accuracy is high) and its batch."""
    model = DEQClassifier()
    model.load_state_dict(_trained_weights())
    images, labels = _data(32, seed=2)
    return model.eval(), images, labels


@pytest.mark.parametrize("cls,norm", [(JIIOPGD, "linf"), (JIIOPGDL2, "l2")])
def test_outputs_in_threat_model(cls, norm):
    model = DEQClassifier().eval()
    images, labels = _data()
    eps = 0.1 if norm == "linf" else 0.5
    adv = cls(model, eps=eps, alpha=eps / 4, steps=3)(images, labels)
    assert adv.shape == images.shape and adv.dtype == images.dtype and not adv.requires_grad
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - images).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps + 1e-6).all())
    assert size.max() > 0.5 * eps  # it moved


@pytest.mark.parametrize("cls,stock", [(JIIOPGD, "PGD"), (JIIOPGDL2, "PGDL2")])
def test_at_least_as_strong_as_stock_pgd(cls, stock):
    model, images, labels = _trained_model()
    eps = 0.1 if cls is JIIOPGD else 0.5
    with torch.no_grad():
        clean = (model(images).argmax(1) == labels).float().mean()
    assert clean > 0.9
    ours = cls(model, eps=eps, alpha=eps / 4, steps=10, random_start=False)(images, labels)
    theirs = getattr(torchattacks, stock)(
        model, eps=eps, alpha=eps / 4, steps=10, random_start=False
    )(images, labels)
    with torch.no_grad():
        loss_ours = F.cross_entropy(model(ours), labels)
        loss_theirs = F.cross_entropy(model(theirs), labels)
        acc_ours = (model(ours).argmax(1) == labels).float().mean()
        acc_theirs = (model(theirs).argmax(1) == labels).float().mean()
    assert loss_ours >= 0.9 * loss_theirs
    assert acc_ours <= acc_theirs + 1 / 32 + 1e-6


def test_targeted_mode_hits_targets():
    model, images, labels = _trained_model()
    atk = JIIOPGD(model, eps=0.3, alpha=0.05, steps=10)
    atk.set_mode_targeted_by_function(lambda x, y: (y + 1) % 10)
    adv = atk(images, labels)
    target = (labels + 1) % 10
    with torch.no_grad():
        hit_adv = (model(adv).argmax(1) == target).float().mean()
        hit_clean = (model(images).argmax(1) == target).float().mean()
    assert hit_adv > hit_clean


def test_normalisation_round_trip_mode_and_grads_untouched():
    model = DEQClassifier().train()
    mean, std = [0.5], [0.25]
    images, labels = _data()
    normalized = (images - 0.5) / 0.25
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.123)
    atk = JIIOPGD(model, eps=0.1, alpha=0.02, steps=2)
    atk.set_normalization_used(mean, std)
    adv = atk(normalized, labels)
    raw = adv * 0.25 + 0.5  # back to [0, 1]
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert bool(((raw - images).abs() <= 0.1 + 1e-5).all())
    assert model.training  # mode restored
    assert all(torch.equal(p.grad, torch.full_like(p, 0.123)) for p in model.parameters())


def test_madry_loop_runs_with_attack_swapped_in_and_composes():
    model = DEQClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = _data()
    for attack_cls in (torchattacks.PGD, JIIOPGD):  # the same loop, only the class swapped
        atk = attack_cls(model, eps=0.1, alpha=0.02, steps=2)
        model.train()
        adv = atk(images, labels)
        loss = F.cross_entropy(model(adv), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    multi = torchattacks.MultiAttack(
        [
            JIIOPGD(model, eps=0.1, alpha=0.02, steps=2),
            torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=2),
        ]
    )
    assert multi(images.clone(), labels).shape == images.shape


def test_save_writes_adversarial_set(tmp_path):
    model = DEQClassifier().eval()
    images, labels = _data(8)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=4
    )
    path = tmp_path / "adv.pt"
    JIIOPGD(model, eps=0.1, alpha=0.02, steps=2).save(loader, save_path=str(path), verbose=False)
    assert path.exists()


def test_bad_arguments():
    model = DEQClassifier()
    images, labels = _data()
    for kwargs, name in (({"eps": 0}, "eps"), ({"alpha": -1.0}, "alpha"), ({"steps": 0}, "steps")):
        with pytest.raises(ValueError, match=name):
            JIIOPGD(model, **kwargs)
    atk = JIIOPGD(model, eps=0.1, alpha=0.02, steps=1)
    with pytest.raises(ValueError, match="images"):
        atk(images * 3 - 1, labels)
    with pytest.raises(ValueError, match="labels"):
        atk(images, labels[:3])
    with pytest.raises(TypeError, match="torchattacks.PGD"):
        JIIOPGD(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    with pytest.raises(ValueError, match="safeguard"):
        JIIOPGD(model, safeguard="yes")


def test_adversarial_logits_give_the_training_gradient_at_x_adv():
    from jiio_ext.adapters.torchattacks import adversarial_logits

    model, images, labels = _trained_model()
    atk = JIIOPGD(model, eps=0.1, alpha=0.025, steps=10, random_start=False)
    adv, logits = adversarial_logits(atk, images, labels)
    params = [model.cell.weight, model.head.weight]
    ours = torch.autograd.grad(F.cross_entropy(logits, labels), params)
    model.train()  # the reference: a full forward solve at x_adv and torchdeq-style IFT
    reference = torch.autograd.grad(F.cross_entropy(model(adv), labels), params)
    for a, b in zip(ours, reference):  # float32, solver tolerances ~1e-5: compare norms
        assert (a - b).norm() <= 1e-2 * b.norm()


@functools.cache
def _stock_pgdl2_loss() -> float:
    """Cross-entropy at torchattacks' PGDL2 examples on the trained model (computed once)."""
    model, images, labels = _trained_model()
    theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.125, steps=10, random_start=False)(
        images, labels
    )
    with torch.no_grad():
        return float(F.cross_entropy(model(theirs), labels))


@pytest.mark.parametrize("projection", ["composed", "exact"])
def test_l2_projections_stay_feasible_and_strong(projection):
    model, images, labels = _trained_model()
    attack = JIIOPGDL2(
        model, eps=0.5, alpha=0.125, steps=10, random_start=False, projection=projection
    )
    adv = attack(images, labels)
    assert float((adv - images).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    assert 0 <= float(adv.min()) and float(adv.max()) <= 1
    stock_loss = _stock_pgdl2_loss()  # the stock attack needs gradients: outside no_grad
    with torch.no_grad():
        assert float(F.cross_entropy(model(adv), labels)) >= 0.9 * stock_loss
    with pytest.raises(ValueError, match="projection"):
        JIIOPGDL2(model, projection="nearest")


def test_an_unsettled_deq_state_warns_and_is_reported():
    from jiio_ext import Status
    from jiio_ext.apps.bench.user_classifiers import UserClassifier

    torch.manual_seed(0)
    # tanh(0.3 · conv(z) + u) with a large convolution: plain iteration oscillates
    model = UserClassifier(cell="tanh", spectral_norm=12.0).eval()
    images, labels = torch.rand(6, 1, 8, 8), torch.arange(6)
    attack = JIIOPGD(model, eps=0.1, alpha=0.025, steps=5)
    with pytest.warns(RuntimeWarning, match="did not settle"):
        attack(images, labels)
    status = attack.last_solution.status
    assert bool((status == Status.UNSETTLED).any())
    # a model whose state settles gives no such warning and no such status
    settled = DEQClassifier().eval()
    attack = JIIOPGD(settled, eps=0.1, alpha=0.025, steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        attack(images, labels)
    assert not bool((attack.last_solution.status == Status.UNSETTLED).any())


@pytest.mark.parametrize("cls,eps", [(JIIOPGD, 0.1), (JIIOPGDL2, 0.5)])
def test_the_safeguard_resolves_unsettled_images_and_never_lowers_the_loss(cls, eps):
    from jiio_ext import Status
    from jiio_ext.apps.bench.user_classifiers import _ANDERSON_IFT, UserClassifier

    # relu(conv(z) + u), conv at spectral norm 1.5: the damped joint iteration does not settle
    torch.manual_seed(3)
    model = UserClassifier(cell="relu", spectral_norm=1.5, deq_options=_ANDERSON_IFT, seed=3)
    model = model.double().eval()
    images, labels = torch.rand(8, 1, 8, 8, dtype=torch.float64), torch.arange(8)
    runs = {}
    for safeguard in (False, True):
        attack = cls(
            model, eps=eps, alpha=eps / 4, steps=5, random_start=False, safeguard=safeguard
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            adv = attack(images, labels)
        with torch.no_grad():
            loss = F.cross_entropy(model(adv), labels, reduction="none")
        runs[safeguard] = (attack.last_solution, loss, [str(w.message) for w in caught])
    (off, off_loss, off_warned), (on, on_loss, on_warned) = runs[False], runs[True]
    flagged = on.info["status_joint"] == Status.UNSETTLED
    assert torch.equal(on.info["status_joint"], off.status) and bool(flagged.any())
    assert torch.equal(on.info["resolved"], torch.nonzero(flagged).flatten())
    # the attack's loss (the objective at the settled state) never ends lower, per image ...
    assert bool((on.objective <= off.objective + 1e-12).all())
    assert bool((on.objective < off.objective - 1e-6).any())
    # ... and the model's own cross-entropy at the adversarial images is at least as high
    assert float(on_loss.sum()) >= float(off_loss.sum()) - 1e-9
    # the warning counts only the images still unsettled after the safeguard
    left = int((on.status == Status.UNSETTLED).sum())
    assert left <= int(flagged.sum()) and bool((on.status[~flagged] == off.status[~flagged]).all())
    assert f"for {int(flagged.sum())} of 8" in off_warned[0]
    assert (f"for {left} of 8" in on_warned[0]) if left else not on_warned


@pytest.mark.parametrize("cls,eps", [(JIIOPGD, 0.1), (JIIOPGDL2, 0.5)])
def test_the_safeguard_never_triggers_on_a_contractive_model(cls, eps):
    model = DEQClassifier().double().eval()
    images, labels = _data(8)
    images = images.double()
    runs = []
    for safeguard in (False, True):
        attack = cls(
            model, eps=eps, alpha=eps / 4, steps=5, random_start=False, safeguard=safeguard
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            runs.append((attack(images, labels), attack.last_solution))
    (adv_off, off), (adv_on, on) = runs
    assert torch.equal(adv_on, adv_off) and torch.equal(on.x, off.x)  # the same iterates
    assert on.f_evals == off.f_evals and "resolved" not in on.info
    assert "model_checked" not in on.info  # nor does the model check: no image is unsettled


def test_without_torchdeq_the_import_names_both_extras():
    code = (
        "import sys; sys.modules['torchdeq'] = None\n"
        "try:\n"
        "    import jiio_ext.adapters.torchattacks\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'jiio-ext[deq,attacks]'" in done.stdout, done.stderr[-2000:]


def _briefly_trained_relu_cell(seed: int):
    """A non-contractive ReLU cell (spectral norm 1.5, Anderson/IFT) fit to a random batch."""
    from jiio_ext.apps.bench.user_classifiers import _ANDERSON_IFT, UserClassifier

    model = UserClassifier(cell="relu", spectral_norm=1.5, seed=seed, deq_options=_ANDERSON_IFT)
    images, labels = _data(32, seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    return model.eval(), images, labels


def test_the_model_check_takes_iterates_the_model_calls_adversarial():
    from jiio_ext.adapters.torchattacks import _margin

    model, images, labels = _briefly_trained_relu_cell(seed=2)
    runs = {}
    for model_check in (False, True):
        attack = JIIOPGD(
            model, eps=0.1, alpha=0.025, steps=2, random_start=False, model_check=model_check
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            adv = attack(images, labels)
        with torch.no_grad():
            fooled = _margin(model(adv), labels, targeted=False) > 0
        runs[model_check] = (adv, fooled, attack.last_solution)
    (adv_off, fooled_off, off), (adv_on, fooled_on, on) = runs[False], runs[True]
    replaced = on.info["model_checked"]
    assert "model_checked" not in off.info and replaced.numel() > 0
    # each replacement is adversarial for the model itself, and no image is lost
    assert bool(fooled_on[replaced].all()) and bool((fooled_on | ~fooled_off).all())
    assert int(fooled_on.sum()) > int(fooled_off.sum())
    kept = torch.ones(len(images), dtype=torch.bool)
    kept[replaced] = False
    assert torch.equal(adv_on[kept], adv_off[kept]) and torch.equal(
        on.x[replaced], adv_on[replaced]
    )
    # the objective reported for a replacement is the attack loss at the returned image
    with torch.no_grad():
        loss = F.cross_entropy(model(adv_on[replaced]), labels[replaced], reduction="none")
    torch.testing.assert_close(on.objective[replaced], -loss, rtol=1e-4, atol=1e-5)
    # the replacements lie in the threat model
    assert bool(((adv_on - images).abs().amax(dim=(1, 2, 3)) <= 0.1 + 1e-6).all())
    assert adv_on.min() >= 0 and adv_on.max() <= 1
    with pytest.raises(ValueError, match="model_check"):
        JIIOPGD(model, model_check="yes")
