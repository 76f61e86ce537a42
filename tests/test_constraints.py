"""Property tests of the Euclidean projections in ``jiio_ext.constraints`` (float64).

Every case is built around an *anchor* point that lies in every part of the set by
construction (the ball centre, inside every box), so the set is never empty, the centre of an
L2 ball always lies in the box it is intersected with, and the anchor itself is a feasible
point known without calling the package. Membership is checked with independent formulas.

Scalar radii, centres and bounds are drawn on a coarse grid; exact float64 precision of
number parameters is checked separately
(``test_intersection_keeps_float64_precision_of_scalar_parameters``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jiio_ext import Box, Constraint, Intersection, L2Ball, LinfBall

D = torch.float64
TOL = 1e-12  # membership and idempotence
VI_TOL = 1e-10  # variational inequality <y - p, q - p> <= VI_TOL
SETTINGS = settings(max_examples=50, deadline=None)

SAMPLE_SHAPES = [(1,), (3,), (2, 3), (2, 3, 4)]  # per-sample shapes; (2, 3, 4) -> (B, C, H, W)
SPREADS = [0.01, 0.3, 1.0, 3.0, 10.0]
KINDS = ["l2", "linf", "box", "linf&box", "l2&box", "box&box"]

Anchor = float | torch.Tensor
Violation = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Case:
    """A constraint, an independent per-sample violation measure, a feasible anchor, a point."""

    constraint: Constraint
    violation: Violation
    anchor: Anchor
    y: torch.Tensor
    gen: torch.Generator
    spread: float

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.y.shape)

    def anchor_point(self) -> torch.Tensor:
        return torch.as_tensor(self.anchor, dtype=D).expand(self.shape).clone()


# --------------------------------------------------------------------------- builders


def _randn(gen: torch.Generator, shape) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen, dtype=D)


def _uniform(gen: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(tuple(shape), generator=gen, dtype=D)


def _per_sample(v: torch.Tensor | float, ndim: int) -> torch.Tensor | float:
    """A (B,) tensor becomes (B, 1, ..., 1); scalars pass through."""
    if isinstance(v, torch.Tensor):
        return v.view(-1, *([1] * (ndim - 1)))
    return v


def _f32(v: float) -> float:
    """Round to a multiple of 2**-10: exact in float32, and so are sums of such numbers."""
    return round(v * 1024) / 1024


def _make_anchor(mode: str, gen: torch.Generator, shape) -> Anchor | None:
    if mode == "none":
        return None
    if mode == "scalar":
        return _f32(float(_randn(gen, ())))
    if mode == "full":
        return _randn(gen, shape)
    return _randn(gen, (1, *shape[1:]))  # "bcast": one row broadcast over the batch


def _anchor_value(anchor: Anchor | None) -> Anchor:
    return 0.0 if anchor is None else anchor


def _make_radius(draw, gen: torch.Generator, batch: int, allow_tensor: bool = True):
    per_sample = allow_tensor and draw(st.booleans())
    radii = _uniform(gen, (batch,), 0.05, 2.0)
    return radii if per_sample else _f32(float(radii[0]))


def _make_box(draw, gen: torch.Generator, anchor: Anchor, shape) -> tuple[Box, Violation]:
    """A box containing ``anchor``; bounds are both scalars, both tensors, or one is None."""
    mode = draw(st.sampled_from(["scalar", "full", "bcast"]))
    sides = draw(st.sampled_from(["both", "lower", "upper"]))
    a = torch.as_tensor(anchor, dtype=D).expand(shape)
    if mode == "scalar":
        lo_ref, hi_ref = float(a.min()), float(a.max())
        gap_lo, gap_hi = (float(_uniform(gen, (), 0.05, 2.0)) for _ in range(2))
        lo_ref, hi_ref = _f32(lo_ref - gap_lo), _f32(hi_ref + gap_hi)
        gap_lo = gap_hi = 0.0
    else:
        if mode == "bcast":
            lo_ref, hi_ref = a.amin(0, keepdim=True), a.amax(0, keepdim=True)
        else:
            lo_ref, hi_ref = a.clone(), a.clone()
        gap_lo = _uniform(gen, lo_ref.shape, 0.05, 2.0)
        gap_hi = _uniform(gen, hi_ref.shape, 0.05, 2.0)
    lower = lo_ref - gap_lo if sides in ("both", "lower") else None
    upper = hi_ref + gap_hi if sides in ("both", "upper") else None
    box = Box(lower, upper)

    def violation(p: torch.Tensor) -> torch.Tensor:
        v = torch.zeros_like(p)
        if lower is not None:
            v = torch.maximum(v, torch.as_tensor(lower, dtype=D) - p)
        if upper is not None:
            v = torch.maximum(v, p - torch.as_tensor(upper, dtype=D))
        return v.flatten(1).amax(dim=1)

    return box, violation


def _l2_violation(center: Anchor, radius, ndim: int) -> Violation:
    def violation(p: torch.Tensor) -> torch.Tensor:
        return (p - center).flatten(1).norm(dim=1) - torch.as_tensor(radius, dtype=D)

    return violation


def _linf_violation(center: Anchor, radius, ndim: int) -> Violation:
    def violation(p: torch.Tensor) -> torch.Tensor:
        return ((p - center).abs() - _per_sample(radius, ndim)).flatten(1).amax(dim=1)

    return violation


def _worst(*violations: Violation) -> Violation:
    def violation(p: torch.Tensor) -> torch.Tensor:
        return torch.stack([v(p) for v in violations]).amax(dim=0)

    return violation


@st.composite
def cases(draw, kind: str) -> Case:
    batch = draw(st.integers(1, 5))
    shape = (batch, *draw(st.sampled_from(SAMPLE_SHAPES)))
    ndim = len(shape)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    spread = draw(st.sampled_from(SPREADS))

    if kind in ("l2", "linf", "linf&box", "l2&box"):
        center_mode = draw(st.sampled_from(["none", "scalar", "full", "bcast"]))
        center = _make_anchor(center_mode, gen, shape)
        anchor = _anchor_value(center)
        allow_tensor = True
        radius = _make_radius(draw, gen, batch, allow_tensor)
        if kind.startswith("l2"):
            ball: Constraint = L2Ball(radius, center=center)
            ball_violation = _l2_violation(anchor, radius, ndim)
        else:
            ball = LinfBall(radius, center=center)
            ball_violation = _linf_violation(anchor, radius, ndim)
        if kind in ("l2", "linf"):
            constraint, violation = ball, ball_violation
        else:
            box, box_violation = _make_box(draw, gen, anchor, shape)
            constraint = ball & box if draw(st.booleans()) else box & ball
            violation = _worst(ball_violation, box_violation)
    else:
        anchor = _make_anchor(draw(st.sampled_from(["scalar", "full", "bcast"])), gen, shape)
        constraint, violation = _make_box(draw, gen, anchor, shape)
        if kind == "box&box":
            other, other_violation = _make_box(draw, gen, anchor, shape)
            constraint = constraint & other
            violation = _worst(violation, other_violation)

    offset = draw(st.sampled_from([0.0, 1.0]))  # around the anchor, or shifted away from it
    y = torch.as_tensor(anchor, dtype=D) + offset + spread * _randn(gen, shape)
    return Case(constraint, violation, anchor, y, gen, spread)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_projection_is_feasible_and_idempotent(kind, data):
    case = data.draw(cases(kind))
    p = case.constraint.project(case.y)
    assert p.shape == case.y.shape and p.dtype == D
    assert torch.isfinite(p).all()
    assert (case.violation(p) <= TOL).all(), case.violation(p)
    assert case.constraint.contains(p, tol=TOL).all()
    pp = case.constraint.project(p)
    assert (pp - p).abs().max() <= TOL
    # The anchor is feasible by construction, so projecting it leaves it in place.
    a = case.anchor_point()
    assert (case.constraint.project(a) - a).abs().max() <= TOL


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_projection_is_nearest_point(kind, data):
    case = data.draw(cases(kind))
    y = case.y
    p = case.constraint.project(y)
    feasible = [case.anchor_point()]
    for spread in SPREADS:
        q = case.constraint.project(case.anchor_point() + spread * _randn(case.gen, case.shape))
        assert (case.violation(q) <= TOL).all()
        feasible.append(q)
    dist_p = (y - p).flatten(1).norm(dim=1)
    for q in feasible:
        inner = ((y - p) * (q - p)).flatten(1).sum(dim=1)
        assert (inner <= VI_TOL).all(), inner
        dist_q = (y - q).flatten(1).norm(dim=1)
        assert (dist_p <= dist_q + TOL).all()


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_index_projects_the_same_rows_as_the_full_batch(kind, data):
    case = data.draw(cases(kind))
    batch = case.shape[0]
    rows = data.draw(st.lists(st.integers(0, batch - 1), min_size=1, max_size=batch, unique=True))
    index = torch.tensor(rows, dtype=torch.long)
    full = case.constraint.project(case.y)
    part = case.constraint.project(case.y.index_select(0, index), index)
    torch.testing.assert_close(part, full.index_select(0, index), rtol=0.0, atol=TOL)


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_contains_agrees_with_the_definition(kind, data):
    case = data.draw(cases(kind))
    violation = case.violation(case.y)
    inside = case.constraint.contains(case.y, tol=TOL)
    assert inside.shape == (case.shape[0],) and inside.dtype == torch.bool
    assert not inside[violation > 1e-9].any()
    assert inside[violation < -1e-9].all()


# --------------------------------------------------------------------------- examples


def test_l2_ball_known_values_and_per_sample_radius():
    y = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.3, 0.4]], dtype=D)
    out = L2Ball(radius=torch.tensor([2.0, 10.0, 0.25], dtype=D)).project(y)
    expected = torch.tensor([[1.2, 1.6], [3.0, 4.0], [0.15, 0.2]], dtype=D)
    torch.testing.assert_close(out, expected, rtol=0.0, atol=1e-15)


def test_l2_ball_at_its_centre_is_finite():
    center = torch.randn(3, 2, 4, 4, dtype=D)
    out = L2Ball(0.5, center=center).project(center.clone())
    torch.testing.assert_close(out, center, rtol=0.0, atol=0.0)
    out = (L2Ball(0.5, center=center) & Box(-10.0, 10.0)).project(center.clone())
    torch.testing.assert_close(out, center, rtol=0.0, atol=0.0)


def test_linf_ball_per_sample_radius_on_images():
    images = torch.rand(3, 2, 4, 4, dtype=D)
    eps = torch.tensor([0.01, 0.1, 0.3], dtype=D)
    y = images + torch.randn_like(images)
    out = LinfBall(eps, center=images).project(y)
    expected = images + (y - images).clamp(-eps.view(-1, 1, 1, 1), eps.view(-1, 1, 1, 1))
    torch.testing.assert_close(out, expected, rtol=0.0, atol=0.0)


def test_linf_ball_and_box_is_the_clamp_to_the_intersection():
    images = torch.rand(4, 3, 5, 5, dtype=D)
    eps = torch.tensor([0.05, 0.1, 0.5, 2.0], dtype=D).view(-1, 1, 1, 1)
    y = images + torch.randn_like(images)
    out = (LinfBall(eps.flatten(), center=images) & Box(0.0, 1.0)).project(y)
    expected = torch.minimum(
        torch.maximum(y, (images - eps).clamp_min(0)), (images + eps).clamp_max(1)
    )
    torch.testing.assert_close(out, expected, rtol=0.0, atol=1e-15)


def test_projection_keeps_float32():
    images = torch.rand(2, 3, 4, 4)
    threat = LinfBall(8 / 255, center=images) & Box(0.0, 1.0)
    out = threat.project(images + 0.1 * torch.randn_like(images))
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert threat.contains(out).all()
    l2 = L2Ball(0.5, center=images) & Box(0.0, 1.0)
    out = l2.project(images + torch.randn_like(images))
    assert out.dtype == torch.float32 and l2.contains(out).all()


def test_intersection_flattens_nested_intersections():
    a, b, c = Box(-1.0, 1.0), LinfBall(0.5, center=0.0), L2Ball(radius=0.7)
    both = (a & b) & c
    assert isinstance(both, Intersection) and len(both.parts) == 3
    y = torch.randn(5, 4, dtype=D) * 3
    torch.testing.assert_close(both.project(y), (a & (b & c)).project(y), rtol=0.0, atol=1e-15)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", [L2Ball, LinfBall])
@pytest.mark.parametrize(
    "radius",
    [
        0.0,
        -1.0,
        float("nan"),
        float("inf"),
        torch.tensor([0.5, 0.0], dtype=D),
        torch.tensor([0.5, -0.1], dtype=D),
        torch.tensor([0.5, float("nan")], dtype=D),
        torch.tensor([float("inf"), 0.5], dtype=D),
    ],
    ids=["zero", "negative", "nan", "inf", "t-zero", "t-negative", "t-nan", "t-inf"],
)
def test_bad_radius_is_rejected(cls, radius):
    with pytest.raises(ValueError, match="radius"):
        cls(None, radius)


@pytest.mark.parametrize("cls", [L2Ball, LinfBall])
def test_integer_radius_tensor_is_rejected(cls):
    with pytest.raises(TypeError, match="radius"):
        cls(torch.tensor([1, 2]))


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        (1.0, 0.0),
        (1.0, 1.0),
        (float("nan"), 1.0),
        (torch.tensor([0.0, 0.5], dtype=D), torch.tensor([1.0, 0.5], dtype=D)),
        (torch.zeros(2, 3, dtype=D), -torch.ones(2, 3, dtype=D)),
        (torch.tensor([0.0, 2.0], dtype=D), 1.0),
    ],
    ids=["reversed", "equal", "nan", "tensor-equal-somewhere", "tensor-reversed", "mixed"],
)
def test_box_with_lower_not_below_upper_is_rejected(lower, upper):
    with pytest.raises(ValueError, match="lower"):
        Box(lower, upper)


def test_box_without_bounds_is_rejected():
    with pytest.raises(ValueError, match="lower"):
        Box()


@pytest.mark.parametrize(
    "make",
    [
        lambda: L2Ball(radius=1.0) & L2Ball(radius=2.0),
        lambda: (L2Ball(radius=1.0) & Box(-1.0, 1.0)) & L2Ball(radius=2.0),
        lambda: L2Ball(radius=1.0) & (Box(-1.0, 1.0) & L2Ball(radius=2.0)),
    ],
    ids=["two-balls", "ball-box-ball", "ball-(box-ball)"],
)
def test_intersection_of_two_l2_balls_is_rejected(make):
    with pytest.raises(ValueError, match="L2Ball"):
        make()


def test_intersection_with_a_non_constraint_is_rejected():
    with pytest.raises(TypeError, match="unsupported operand"):
        L2Ball(radius=1.0) & 3.0
    with pytest.raises(TypeError, match="parts"):
        Intersection([Box(0.0, 1.0), Constraint()])


def test_per_sample_tensor_of_wrong_batch_size_is_rejected():
    x = torch.zeros(4, 3, dtype=D)
    with pytest.raises(ValueError, match="batch size"):
        LinfBall(0.1, center=torch.zeros(3, 3, dtype=D)).check_against(x, "constraint")
    with pytest.raises(ValueError, match="batch size"):
        (L2Ball(torch.ones(5, dtype=D)) & Box(-1.0, 1.0)).check_against(x, "constraint")
    per_sample = LinfBall(torch.ones(4, dtype=D), center=torch.zeros(1, 3, dtype=D))
    per_sample.check_against(x, "constraint")


# --------------------------------------------------------------------------- known bugs


@pytest.mark.parametrize("tensor_side", ["lower", "upper"])
def test_box_with_one_tensor_and_one_scalar_bound(tensor_side):
    bound = torch.zeros(3, 4, dtype=D) if tensor_side == "lower" else torch.ones(3, 4, dtype=D)
    box = Box(bound, 1.0) if tensor_side == "lower" else Box(0.0, bound)
    y = 3 * torch.randn(3, 4, dtype=D)
    torch.testing.assert_close(box.project(y), y.clamp(0.0, 1.0), rtol=0.0, atol=0.0)


@pytest.mark.parametrize("center", [None, 0.0], ids=["none", "scalar"])
@pytest.mark.parametrize("features", [4, 3], ids=["raises", "silently-wrong"])
def test_linf_per_sample_radius_without_tensor_centre_in_intersection(center, features):
    eps = torch.tensor([0.1, 0.2, 0.3], dtype=D)
    y = 3 * torch.randn(3, features, dtype=D)
    out = (LinfBall(eps, center=center) & Box(-1.0, 1.0)).project(y)
    torch.testing.assert_close(out, LinfBall(eps, center=center).project(y), rtol=0.0, atol=0.0)


@pytest.mark.parametrize(
    "threat",
    [
        Box(0.0, 0.1) & Box(-1.0, 1.0),
        LinfBall(0.1, center=0.0) & Box(-1.0, 1.0),
        L2Ball(0.1, center=0.0) & Box(-1.0, 1.0),
        L2Ball(0.3, center=0.1) & Box(-1.0, 1.0),
    ],
    ids=["box&box", "linf&box", "l2&box", "l2-scalar-centre&box"],
)
def test_intersection_keeps_float64_precision_of_scalar_parameters(threat):
    y = torch.tensor([[1.0, 3.0]], dtype=D)
    p = threat.project(y)
    for part in threat.parts:
        assert part.contains(p, tol=1e-15).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), radius=st.floats(0.05, 3.0), scale=st.floats(0.1, 10.0))
def test_composed_projection_is_feasible_and_idempotent(seed, radius, scale):
    from jiio_ext.constraints import ComposedProjection

    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(4, 6, generator=gen, dtype=torch.float64)
    x = centre + scale * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    composed = ComposedProjection(L2Ball(radius, center=centre), Box(0.0, 1.0))
    y = composed.project(x)
    assert bool(composed.contains(y, tol=1e-9).all())
    torch.testing.assert_close(composed.project(y), y)
    # never closer to x than the exact projection onto the intersection
    exact = Intersection([L2Ball(radius, center=centre), Box(0.0, 1.0)]).project(x)
    assert bool(((x - exact).norm(dim=1) <= (x - y).norm(dim=1) + 1e-9).all())


@pytest.mark.parametrize("ball", [L2Ball, LinfBall])
def test_radius_is_the_first_parameter(ball):
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    only_radius = ball(0.3).project(x)
    assert float(only_radius.flatten(1).norm(p=2 if ball is L2Ball else float("inf"))) == (
        pytest.approx(0.3)
    )
    centred = ball(0.3, center=torch.ones(1, 2, dtype=torch.float64)).project(x)
    torch.testing.assert_close(centred, ball(0.3, torch.ones(1, 2, dtype=torch.float64)).project(x))
    assert float((centred - 1.0).abs().max()) <= 0.3 + 1e-12
    with pytest.raises(TypeError, match="radius"):
        ball()
