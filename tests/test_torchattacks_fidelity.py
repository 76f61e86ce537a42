"""The drop-ins replayed the way torchattacks' own ``code_coverage/test_atks.py`` uses PGD/PGDL2.

Positional signatures, ``set_model``, every targeted mode, ``repr`` after a call, values a
rounding error outside ``[0, 1]``, and clear errors for NaN images and float labels.
"""

from __future__ import annotations

import pytest
import torch

torchattacks = pytest.importorskip("torchattacks")
pytest.importorskip("torchdeq")
from jiio_ext.adapters.torchattacks import JIIOPGD, JIIOPGDL2  # noqa: E402

from jiio_ext.apps.models import DEQClassifier  # noqa: E402

PAIRS = [(JIIOPGD, torchattacks.PGD, 0.1), (JIIOPGDL2, torchattacks.PGDL2, 0.5)]


def _data(batch: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, 8, 8, generator=gen), torch.randint(0, 10, (batch,), generator=gen)


@pytest.mark.parametrize("ours,stock,eps", PAIRS)
def test_positional_signature_is_stocks(ours, stock, eps):
    model = DEQClassifier().eval()
    extra = (1e-10,) if stock is torchattacks.PGDL2 else ()
    args = (model, eps, eps / 4, 2, False, *extra)
    mine, theirs = ours(*args), stock(*args)
    for name in (
        "eps",
        "alpha",
        "steps",
        "random_start",
        *(("eps_for_division",) if extra else ()),
    ):
        assert getattr(mine, name) == getattr(theirs, name), name


def test_eps_for_division_is_used():
    model = DEQClassifier().eval()
    images, labels = _data()
    atk = JIIOPGDL2(model, eps=0.5, alpha=0.1, steps=1, random_start=False, eps_for_division=1e3)
    adv = atk(images, labels)  # a huge eps_for_division makes the steps tiny
    assert (adv - images).flatten(1).norm(dim=1).max() < 1e-2
    with pytest.raises(ValueError, match="eps_for_division"):
        JIIOPGDL2(model, eps_for_division=-1.0)


@pytest.mark.parametrize("ours,stock,eps", PAIRS)
def test_set_model_attacks_the_new_model(ours, stock, eps):
    first, second = DEQClassifier(seed=0).eval(), DEQClassifier(seed=5).eval()
    images, labels = _data()
    atk = ours(first, eps=eps, alpha=eps / 4, steps=2, random_start=False)
    atk.set_model(second)
    assert atk.model is second
    moved = atk(images, labels)
    fresh = ours(second, eps=eps, alpha=eps / 4, steps=2, random_start=False)(images, labels)
    torch.testing.assert_close(moved, fresh)
    with pytest.raises(TypeError, match="model"):
        atk.set_model(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("ours,stock,eps", PAIRS)
@pytest.mark.parametrize(
    "mode", ["random", "least_likely", "by_function", "default_again"], ids=lambda m: m
)
def test_targeted_modes_as_in_torchattacks(ours, stock, eps, mode):
    model = DEQClassifier().eval()
    images, labels = _data()
    atk = ours(model, eps=eps, alpha=eps / 4, steps=2)
    if mode == "random":
        atk.set_mode_targeted_random()
    elif mode == "least_likely":
        atk.set_mode_targeted_least_likely()
    elif mode == "by_function":
        atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10)
    else:
        atk.set_mode_targeted_random()
        atk.set_mode_default()
    adv = atk(images, labels)
    assert adv.shape == images.shape and atk.targeted == (mode != "default_again")


@pytest.mark.parametrize("ours,stock,eps", PAIRS)
def test_repr_is_short_after_a_call(ours, stock, eps):
    model = DEQClassifier().eval()
    atk = ours(model, eps=eps, alpha=eps / 4, steps=1)
    atk(*_data())
    assert atk.last_solution is not None
    text = repr(atk)
    assert len(text) < 3 * len(repr(stock(model, eps=eps, alpha=eps / 4, steps=1)))
    assert text.startswith(ours.__name__ + "(") and "eps=" in text and "tensor" not in text


@pytest.mark.parametrize("ours,stock,eps", PAIRS)
def test_values_a_hair_outside_the_unit_box_behave_as_stock(ours, stock, eps):
    model = DEQClassifier().eval()
    images, labels = _data()
    images[0, 0, 0, 0], images[1, 0, 0, 0] = -1e-7, 1 + 1e-7
    ours_adv = ours(model, eps=eps, alpha=eps / 4, steps=1)(images, labels)
    stock_adv = stock(model, eps=eps, alpha=eps / 4, steps=1)(images, labels)
    for adv in (ours_adv, stock_adv):  # stock accepts them and clamps its output
        assert adv.min() >= 0 and adv.max() <= 1
    with pytest.raises(ValueError, match="images"):
        ours(model, eps=eps, alpha=eps / 4, steps=1)(images + 0.5, labels)


@pytest.mark.parametrize("ours,stock,eps", PAIRS)
def test_bad_images_and_labels_are_named(ours, stock, eps):
    model = DEQClassifier().eval()
    atk = ours(model, eps=eps, alpha=eps / 4, steps=1)
    images, labels = _data()
    nan = images.clone()
    nan[2, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="images: contains NaN"):
        atk(nan, labels)
    with pytest.raises(ValueError, match="labels: expected integer class indices"):
        atk(images, labels.float())
    with pytest.raises(ValueError, match="images: expected a non-empty batch"):
        atk(images[:0], labels[:0])


@pytest.fixture(scope="module")
def digits_model():
    """A torchdeq classifier trained for two epochs on scikit-learn's digits (92 % held out)."""
    pytest.importorskip("sklearn")
    from jiio_ext.apps.data import load_digits
    from jiio_ext.apps.models import train_classifier

    train_x, train_y, test_x, test_y = load_digits(torch.device("cpu"))
    torch.manual_seed(0)
    model = DEQClassifier()
    train_classifier(model, train_x, train_y, 2)
    return model.eval(), test_x[:48], test_y[:48]


def _hit_rate(model, attack, images, labels, mode: str) -> float:
    if mode == "least-likely":
        attack.set_mode_targeted_least_likely()
    else:
        attack.set_mode_targeted_by_function(lambda x, y: (y + 1) % 10)
    targets = attack.get_target_label(images, labels)
    adversarial = attack(images, labels)
    with torch.no_grad():
        return float((model(adversarial).argmax(1) == targets).float().mean())


@pytest.mark.parametrize(
    "ours,stock,eps,alpha",
    [(JIIOPGDL2, torchattacks.PGDL2, 2.0, 0.5), (JIIOPGD, torchattacks.PGD, 0.3, 0.05)],
    ids=["l2", "linf"],
)
@pytest.mark.parametrize("mode", ["by-function", "least-likely"])
def test_targeted_at_least_as_strong_as_stock_at_equal_steps(
    digits_model, ours, stock, eps, alpha, mode
):
    # the setting (eps 2, alpha 0.5): constant steps kept the targeted iterate
    # bouncing inside the ball (0.979 / 0.958 against stock's 1.0 here)
    model, images, labels = digits_model
    theirs = _hit_rate(model, stock(model, eps, alpha, 10, False), images, labels, mode)
    mine = _hit_rate(model, ours(model, eps, alpha, 10, False), images, labels, mode)
    assert theirs > 0.9
    assert mine >= theirs
