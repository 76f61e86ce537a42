"""Degradation operators and metrics of jiio_ext.adapters.kornia, against real kornia."""

import importlib
import math
import sys

import pytest
import torch

kornia = pytest.importorskip("kornia")

from jiio_ext.adapters.kornia import (  # noqa: E402
    PROBLEMS,
    BoxInpainting,
    Degradation,
    Downsample,
    GaussianBlur,
    GaussianNoise,
    IrregularInpainting,
    Measurement,
    MotionBlur,
    make_degradation,
    psnr,
    ssim,
)

from jiio_ext import solve_joint  # noqa: E402

BORDERS = ("reflect", "replicate", "circular", "constant")

LINEAR_OPERATORS = {
    "noise": lambda: GaussianNoise(0.1),
    "box": lambda: BoxInpainting(),
    "box-size": lambda: BoxInpainting(hole_size=3),
    "irregular": lambda: IrregularInpainting(coverage=(0.2, 0.4)),
    "gauss": lambda: GaussianBlur(5, 1.2),
    "gauss-wide": lambda: GaussianBlur(9, 3.0),
    "motion": lambda: MotionBlur(7, 45.0),
    "motion-skew": lambda: MotionBlur(9, 30.0, direction=0.6),
    "down2": lambda: Downsample(2),
    "down4": lambda: Downsample(4),
    "down4-box": lambda: Downsample(4, antialias_sigma=0.0),
    **{f"gauss-{b}": (lambda b=b: GaussianBlur(5, 1.0, border_type=b)) for b in BORDERS},
    **{f"motion-{b}": (lambda b=b: MotionBlur(7, 20.0, -0.4, border_type=b)) for b in BORDERS},
    **{f"down2-{b}": (lambda b=b: Downsample(2, border_type=b)) for b in BORDERS},
}


def images(*shape, dtype=torch.float64, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(params=sorted(LINEAR_OPERATORS), ids=sorted(LINEAR_OPERATORS))
def operator(request):
    return LINEAR_OPERATORS[request.param]()


# --------------------------------------------------------------------------- linear algebra


def test_adjoint_identity_and_vjp(operator):
    # non-square on purpose: catches height/width mix-ups
    x = images(3, 2, 16, 24)
    mask = operator.measure(x, seed=1).mask
    y = torch.randn(operator.measurement_shape(x.shape), dtype=torch.float64)
    ax, aty = operator.apply(x, mask), operator.adjoint(y, mask)
    assert ax.shape == y.shape and aty.shape == x.shape
    lhs, rhs = (ax * y).sum(), (x * aty).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    xr = x.clone().requires_grad_()
    (vjp,) = torch.autograd.grad(operator.apply(xr, mask), xr, y)
    assert torch.allclose(vjp, aty, rtol=1e-12, atol=1e-13)


def test_operators_are_linear(operator):
    x1, x2 = images(2, 3, 16, 16, seed=1), images(2, 3, 16, 16, seed=2)
    mask = operator.measure(x1, seed=0).mask
    combined = operator.apply(2.0 * x1 - 0.5 * x2, mask)
    expected = 2.0 * operator.apply(x1, mask) - 0.5 * operator.apply(x2, mask)
    assert operator.linear
    assert torch.allclose(combined, expected, atol=1e-12)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_consistency_is_zero_at_the_clean_image(problem):
    options = {"sigma": 0.0} if problem == "denoise" else {}
    op = make_degradation(problem, 32, **options)
    clean = images(4, 3, 32, 32, dtype=torch.float32)
    meas = op.measure(clean, seed=0)
    loss = op.consistency(clean, *meas.targets())
    assert loss.shape == (4,) and loss.dtype == torch.float32
    assert torch.equal(loss, torch.zeros(4))
    assert op.name == problem


@pytest.mark.parametrize("problem", PROBLEMS)
def test_consistency_gradient_matches_finite_differences(problem):
    options = {"sigma": 0.05} if problem == "denoise" else {"noise_sigma": 0.05}
    op = make_degradation(problem, 8, **options)
    clean = images(2, 1, 8, 8)
    targets = op.measure(clean, seed=3).targets()
    estimate = images(2, 1, 8, 8, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: op.consistency(x, *targets), (estimate,))


@pytest.mark.parametrize("name", sorted(LINEAR_OPERATORS))
def test_consistency_gradient_is_the_explicit_adjoint(name):
    op = LINEAR_OPERATORS[name]()
    meas = op.measure(images(2, 3, 16, 16), seed=5)
    estimate = images(2, 3, 16, 16, seed=6).requires_grad_()
    (grad,) = torch.autograd.grad(op.consistency(estimate, *meas.targets()).sum(), estimate)
    residual = op.apply(estimate.detach(), meas.mask) - meas.observed
    elements = meas.observed[0].numel()
    assert torch.allclose(grad, 2 / elements * op.adjoint(residual, meas.mask), atol=1e-12)


def test_consistency_formula_for_inpainting():
    op = BoxInpainting(hole_size=4)
    clean, estimate = images(2, 3, 16, 16), images(2, 3, 16, 16, seed=9)
    observed, mask = op.measure(clean, seed=0).targets()
    expected = (mask * (estimate - observed) ** 2).sum(dim=(1, 2, 3)) / (3 * 16 * 16)
    assert torch.allclose(op.consistency(estimate, observed, mask), expected)


def test_consistency_works_as_a_solve_joint_objective():
    # decode(z) = z and f(z, x) = x: the joint solve must recover the observed pixels
    op = BoxInpainting(hole_size=3)
    clean = images(3, 1, 8, 8)
    meas = op.measure(clean, seed=0)
    sol = solve_joint(
        lambda z, x: x,
        lambda z, x, t: op.consistency(z, *t),
        torch.zeros_like(clean),
        z0=torch.zeros_like(clean),
        targets=meas.targets(),
        step_size=20.0,
        max_iter=200,
    )
    assert torch.allclose(sol.x * meas.mask, clean * meas.mask, atol=1e-3)


# --------------------------------------------------------------------------- noise


def test_noise_std_on_the_stated_pixel_scale():
    op = make_degradation("denoise", 64, sigma=25, pixel_range=255)
    assert op.noise_sigma == pytest.approx(25 / 255)
    clean = torch.full((4, 3, 64, 64), 0.5)
    noise = op.measure(clean, seed=0).observed - clean
    assert noise.std().item() == pytest.approx(25 / 255, rel=0.03)
    assert abs(noise.mean().item()) < 0.005
    assert torch.equal(op.naive_inverse(op.measure(clean, seed=0)), clean + noise)


@pytest.mark.parametrize("problem", ["inpaint", "deblur", "superres"])
def test_measurement_noise_of_the_other_problems(problem):
    op = make_degradation(problem, 64, noise_sigma=0.05)
    clean = images(8, 3, 64, 64)
    meas = op.measure(clean, seed=1)
    noise = meas.observed - op.apply(clean, meas.mask)
    if meas.mask is not None:  # noise only on observed pixels
        assert torch.equal(noise * (1 - meas.mask), torch.zeros_like(noise))
        noise = noise[meas.mask.expand_as(noise) > 0]
    assert noise.std().item() == pytest.approx(0.05, rel=0.05)


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize(("size", "side"), [(64, 20), (32, 10), (16, 5), (28, 9)])
def test_box_hole_scales_with_the_image(size, side):
    op = BoxInpainting()
    mask = op.measure(torch.rand(6, 3, size, size), seed=size).mask
    assert op.hole_side(size, size) == side
    assert mask.shape == (6, 1, size, size)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    for hole in 1 - mask[:, 0]:
        rows, cols = hole.nonzero(as_tuple=True)
        assert hole.sum() == side * side  # one square hole
        assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side


def test_box_hole_size_and_positions():
    op = BoxInpainting(hole_size=7)
    mask = op.measure(torch.rand(200, 1, 16, 16), seed=0).mask
    assert ((1 - mask).sum(dim=(1, 2, 3)) == 49).all()
    tops = (1 - mask[:, 0]).amax(dim=2).argmax(dim=1)
    assert tops.min() == 0 and tops.max() == 16 - 7  # every position is reachable


@pytest.mark.parametrize("make", [BoxInpainting, IrregularInpainting])
def test_masks_reproducible_by_seed(make):
    op = make(noise_sigma=0.1)
    clean = torch.rand(4, 3, 32, 32)
    first, again = op.measure(clean, seed=7), op.measure(clean, seed=7)
    other = op.measure(clean, seed=8)
    assert torch.equal(first.mask, again.mask) and torch.equal(first.observed, again.observed)
    assert not torch.equal(first.mask, other.mask)
    assert not torch.equal(first.mask[0], first.mask[1])  # one draw per image
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(op.measure(clean, seed=generator).mask, first.mask)
    torch.manual_seed(3)
    global_rng = op.measure(clean).mask
    torch.manual_seed(3)
    assert torch.equal(op.measure(clean).mask, global_rng)


@pytest.mark.parametrize(
    ("size", "coverage"), [(16, (0.1, 0.3)), (32, (0.3, 0.5)), (64, (0.1, 0.2))]
)
def test_irregular_mask_coverage_in_range(size, coverage):
    op = IrregularInpainting(coverage=coverage)
    mask = op.measure(torch.rand(12, 1, size, size), seed=size).mask
    holes = 1 - mask.mean(dim=(1, 2, 3))
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert (holes >= coverage[0]).all() and (holes <= coverage[1]).all()
    assert holes.unique().numel() > 1  # coverage drawn per image
    # irregular: the hole does not fill its bounding box
    for hole in 1 - mask[:, 0]:
        rows, cols = hole.nonzero(as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert hole.sum() < box


def test_irregular_brush_radius_option():
    thin = IrregularInpainting(coverage=(0.2, 0.2), brush_radius=(1, 1))
    mask = thin.measure(torch.rand(2, 1, 20, 20), seed=0).mask
    assert ((1 - mask).sum(dim=(1, 2, 3)) == 80).all()


def test_inpainting_naive_inverse_fills_holes_with_the_observed_mean():
    op = BoxInpainting(hole_size=4)
    clean = images(2, 3, 16, 16)
    meas = op.measure(clean, seed=0)
    filled = op.naive_inverse(meas)
    observed = meas.mask.expand_as(clean) > 0
    assert torch.equal(filled[observed], clean[observed])
    for b in range(2):
        for c in range(3):
            mean = clean[b, c][observed[b, c]].mean()
            assert torch.allclose(filled[b, c][~observed[b, c]], mean.expand(16))


# --------------------------------------------------------------------------- blur / superres


def test_blur_kernels_come_from_kornia():
    x = images(2, 3, 16, 16)
    gauss = GaussianBlur(5, 1.5)
    expected = kornia.filters.gaussian_blur2d(x, (5, 5), (1.5, 1.5))
    assert torch.allclose(gauss.apply(x), expected, atol=1e-12)
    motion = MotionBlur(7, 30.0, 0.5)
    expected = kornia.filters.motion_blur(x, 7, 30.0, 0.5)
    assert torch.allclose(motion.apply(x), expected, atol=1e-6)
    meas = gauss.measure(x, seed=0)
    assert torch.equal(gauss.naive_inverse(meas), meas.observed)


@pytest.mark.parametrize(("factor", "size"), [(2, 32), (4, 32), (2, 16), (4, 16)])
def test_superres_shapes(factor, size):
    op = make_degradation("superres", size, factor=factor)
    clean = images(3, 3, size, size, dtype=torch.float32)
    meas = op.measure(clean, seed=0)
    low = size // factor
    assert meas.observed.shape == (3, 3, low, low) and meas.mask is None
    assert op.measurement_shape(clean.shape) == (3, 3, low, low)
    assert op.adjoint(meas.observed).shape == clean.shape
    upsampled = op.naive_inverse(meas)
    assert upsampled.shape == clean.shape and upsampled.dtype == torch.float32
    assert 0 <= upsampled.min() and upsampled.max() <= 1


def test_downsample_preserves_constants_and_antialiases():
    op = Downsample(4)
    assert torch.allclose(op.apply(torch.full((1, 1, 16, 16), 0.3)), torch.full((1, 1, 4, 4), 0.3))
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]).remainder(2).double()
    aliased = op.apply(checker[None, None])
    assert (aliased - 0.5).abs().max() < 0.05  # the Nyquist pattern averages out
    smooth = torch.linspace(0, 1, 32).double().expand(1, 1, 32, 32)
    restored = Downsample(2).naive_inverse(Downsample(2).measure(smooth))
    assert psnr(restored, smooth).item() > 35


# --------------------------------------------------------------------------- dtypes, devices


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("problem", PROBLEMS)
def test_dtype_preserved(problem, dtype):
    op = make_degradation(problem, 16)
    clean = images(2, 3, 16, 16, dtype=dtype)
    meas = op.measure(clean, seed=0)
    assert meas.observed.dtype == dtype
    assert meas.mask is None or meas.mask.dtype == dtype
    assert op.naive_inverse(meas).dtype == dtype
    assert op.adjoint(meas.observed, meas.mask).dtype == dtype


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("problem", PROBLEMS)
def test_cuda_matches_cpu(problem):
    op = make_degradation(problem, 32, **({} if problem == "denoise" else {"noise_sigma": 0.05}))
    clean = images(2, 3, 32, 32)
    cpu, cuda = op.measure(clean, seed=0), op.measure(clean.cuda(), seed=0)
    assert cuda.observed.is_cuda and (cuda.mask is None or cuda.mask.is_cuda)
    assert torch.allclose(cuda.observed.cpu(), cpu.observed, atol=1e-10)
    y = cuda.observed
    assert torch.allclose(op.adjoint(y, cuda.mask).cpu(), op.adjoint(cpu.observed, cpu.mask))
    assert op.consistency(clean.cuda(), *cuda.targets()).is_cuda
    assert op.naive_inverse(cuda).is_cuda


# --------------------------------------------------------------------------- measurement


def test_measurement_targets_index_select_and_to():
    op = BoxInpainting(hole_size=3)
    meas = op.measure(images(4, 1, 8, 8), seed=0)
    observed, mask = meas.targets()
    assert observed is meas.observed and mask is meas.mask
    rows = meas.index_select(torch.tensor([3, 1]))
    assert torch.equal(rows.observed, meas.observed[[3, 1]])
    assert torch.equal(rows.mask, meas.mask[[3, 1]])
    assert meas.to(torch.float32).observed.dtype == torch.float32
    assert Downsample(2).measure(images(2, 1, 8, 8)).targets()[0].shape == (2, 1, 4, 4)
    assert GaussianNoise(0.0).measure(images(2, 1, 8, 8)).index_select([0]).mask is None


# --------------------------------------------------------------------------- metrics


def test_psnr_values():
    reference = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    estimate = reference + torch.tensor([0.1, 0.01, 0.0], dtype=torch.float64).view(3, 1, 1, 1)
    values = psnr(estimate, reference)
    assert values.shape == (3,)
    assert torch.allclose(values[:2], torch.tensor([20.0, 40.0], dtype=torch.float64))
    assert values[2] == math.inf
    noisy = (images(4, 3, 16, 16) + 0.05 * torch.randn(4, 3, 16, 16, dtype=torch.float64)).clamp(
        0, 1
    )
    clean = images(4, 3, 16, 16)
    for k in range(4):
        expected = 10 * torch.log10(1 / (noisy[k] - clean[k]).pow(2).mean())
        assert torch.allclose(psnr(noisy, clean)[k], expected)


@pytest.mark.parametrize(("size", "window"), [(8, 3), (16, 7), (32, 11), (64, 11)])
def test_ssim_values_and_adaptive_window(size, window):
    clean = images(3, 1, size, size)
    assert torch.allclose(ssim(clean, clean), torch.ones(3, dtype=torch.float64))
    noisy = (clean + 0.2 * torch.randn_like(clean)).clamp(0, 1)
    values = ssim(noisy, clean)
    assert values.shape == (3,) and (values < 0.95).all()
    expected = kornia.metrics.ssim(noisy, clean, window).mean(dim=(1, 2, 3))
    assert torch.allclose(values, expected)
    assert torch.allclose(ssim(noisy[1:2], clean[1:2]), values[1:2])  # per image


# --------------------------------------------------------------------------- errors


BAD_CALLS = {
    "unknown problem": (
        lambda: make_degradation("colorize", 16),
        ValueError,
        r"problem: .*colorize",
    ),
    "negative sigma": (
        lambda: make_degradation("denoise", 16, sigma=-1),
        ValueError,
        r"sigma: .*non-negative.*-1",
    ),
    "negative noise": (
        lambda: make_degradation("deblur", 16, noise_sigma=-0.1),
        ValueError,
        r"noise_sigma: .*non-negative",
    ),
    "zero pixel range": (
        lambda: GaussianNoise(0.1, pixel_range=0),
        ValueError,
        r"pixel_range: .*positive",
    ),
    "string sigma": (lambda: GaussianNoise("0.1"), TypeError, r"sigma: expected a number, got str"),
    "hole equals image": (
        lambda: make_degradation("inpaint", 16, hole_size=16),
        ValueError,
        r"hole_size: .*smaller than the 16x16 image, got 16x16",
    ),
    "hole larger than image": (
        lambda: BoxInpainting(hole_size=40).measure(torch.rand(1, 1, 32, 32)),
        ValueError,
        r"hole_size: .*smaller.*32x32",
    ),
    "hole fraction": (
        lambda: BoxInpainting(hole_fraction=1.5),
        ValueError,
        r"hole_fraction: .*\(0, 1\)",
    ),
    "both hole options": (
        lambda: BoxInpainting(hole_fraction=0.3, hole_size=4),
        ValueError,
        r"hole_fraction, hole_size",
    ),
    "coverage order": (
        lambda: IrregularInpainting(coverage=(0.5, 0.2)),
        ValueError,
        r"coverage: .*low <= high < 1",
    ),
    "coverage one": (lambda: IrregularInpainting(coverage=(0.5, 1.0)), ValueError, r"coverage: "),
    "coverage not a pair": (
        lambda: IrregularInpainting(coverage=0.3),
        TypeError,
        r"coverage: .*\(low, high\) pair",
    ),
    "coverage too narrow": (
        lambda: make_degradation("inpaint-irregular", 4, coverage=(0.3, 0.3)),
        ValueError,
        r"coverage: no whole number",
    ),
    "brush radius": (
        lambda: IrregularInpainting(brush_radius=(3, 1)),
        ValueError,
        r"brush_radius: ",
    ),
    "even kernel": (
        lambda: make_degradation("deblur", 16, kernel_size=4),
        ValueError,
        r"kernel_size: .*odd.*4",
    ),
    "even motion kernel": (
        lambda: make_degradation("deblur-motion", 16, kernel_size=6),
        ValueError,
        r"kernel_size: .*odd",
    ),
    "kernel too large": (
        lambda: make_degradation("deblur", 8, kernel_size=17),
        ValueError,
        r"kernel_size: 17 .*8x8",
    ),
    "kernel too large at use": (
        lambda: GaussianBlur(17, 2.0).apply(torch.rand(1, 1, 8, 8)),
        ValueError,
        r"kernel_size: 17",
    ),
    "zero blur sigma": (
        lambda: make_degradation("deblur", 16, blur_sigma=0),
        ValueError,
        r"sigma: .*positive",
    ),
    "motion direction": (lambda: MotionBlur(direction=2.0), ValueError, r"direction: .*\[-1, 1\]"),
    "border": (lambda: GaussianBlur(border_type="wrap"), ValueError, r"border_type: .*wrap"),
    "factor 3": (
        lambda: make_degradation("superres", 24, factor=3),
        ValueError,
        r"factor: expected 2 or 4, got 3",
    ),
    "factor float": (lambda: Downsample(2.0), TypeError, r"factor: .*int"),
    "factor not dividing": (
        lambda: make_degradation("superres", 18, factor=4),
        ValueError,
        r"factor: .*multiples of 4.*18x18",
    ),
    "factor not dividing at use": (
        lambda: Downsample(2).apply(torch.rand(1, 1, 9, 8)),
        ValueError,
        r"factor: .*9x8",
    ),
    "unknown option": (
        lambda: make_degradation("deblur", 16, hole_size=3),
        TypeError,
        r"options: .*hole_size.*blur_sigma",
    ),
    "noise option on denoise": (
        lambda: make_degradation("denoise", 16, noise_sigma=0.1),
        TypeError,
        r"noise_sigma",
    ),
    "image size": (lambda: make_degradation("denoise", 0), ValueError, r"image_size: .*>= 1"),
    "3-D image": (
        lambda: GaussianBlur().apply(torch.rand(3, 16, 16)),
        ValueError,
        r"image: expected a \(B, C, H, W\).*\(3, 16, 16\)",
    ),
    "int image": (
        lambda: GaussianBlur().apply(torch.zeros(1, 1, 16, 16, dtype=torch.int64)),
        TypeError,
        r"image: .*floating-point.*int64",
    ),
    "not a tensor": (
        lambda: GaussianNoise(0.1).measure([[0.0]]),
        TypeError,
        r"clean: expected a torch.Tensor, got list",
    ),
    "missing mask": (
        lambda: BoxInpainting().apply(torch.rand(1, 1, 16, 16)),
        ValueError,
        r"mask: .*needs",
    ),
    "mask shape": (
        lambda: BoxInpainting().apply(torch.rand(2, 3, 16, 16), torch.ones(2, 3, 16, 16)),
        ValueError,
        r"mask: expected shape \(2, 1, 16, 16\)",
    ),
    "bool mask": (
        lambda: BoxInpainting().apply(
            torch.rand(1, 1, 16, 16), torch.ones(1, 1, 16, 16, dtype=torch.bool)
        ),
        TypeError,
        r"mask: .*floating",
    ),
    "targets count": (
        lambda: BoxInpainting().consistency(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)),
        ValueError,
        r"targets: .*\(observed, mask\).*1 tensor",
    ),
    "observed shape": (
        lambda: Downsample(2).consistency(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)),
        ValueError,
        r"observed: expected shape \(1, 1, 8, 8\)",
    ),
    "residual shape": (
        lambda: Downsample(4).adjoint(torch.rand(1, 1, 16)),
        ValueError,
        r"residual: ",
    ),
    "seed type": (
        lambda: GaussianNoise(0.1).measure(torch.rand(1, 1, 4, 4), seed=1.5),
        TypeError,
        r"seed: .*int, a torch.Generator or None, got float",
    ),
    "naive inverse": (
        lambda: GaussianNoise(0.1).naive_inverse(torch.rand(1, 1, 4, 4)),
        TypeError,
        r"measurement: expected a Measurement",
    ),
    "measurement mask": (
        lambda: Measurement(torch.rand(2, 3, 8, 8), torch.ones(2, 3, 8, 8)),
        ValueError,
        r"mask: expected shape \(2, 1, 8, 8\)",
    ),
    "psnr shapes": (
        lambda: psnr(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 4, 4)),
        ValueError,
        r"estimate: expected the reference's shape",
    ),
    "ssim window even": (
        lambda: ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), 4),
        ValueError,
        r"window_size: .*odd",
    ),
    "ssim window large": (
        lambda: ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), 11),
        ValueError,
        r"window_size: .*8, got 11",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_arguments_give_clear_errors(case):
    call, error, message = BAD_CALLS[case]
    with pytest.raises(error, match=message):
        call()


def test_base_class_is_exported_and_subclassed():
    for make in LINEAR_OPERATORS.values():
        op = make()
        assert isinstance(op, Degradation)
        assert repr(op).startswith(type(op).__name__ + "(")


def test_missing_kornia_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "kornia", None)  # what an absent package looks like
    monkeypatch.delitem(sys.modules, "jiio_ext.adapters.kornia")
    with pytest.raises(ImportError, match=r'pip install "jiio-ext\[inverse\]"'):
        importlib.import_module("jiio_ext.adapters.kornia")
