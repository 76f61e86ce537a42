"""kornia adapter: degradation operators and image metrics for inverse problems with JIIO.

Each :class:`Degradation` is a linear forward operator ``A`` (noise is additive, ``A = I``)
with an explicit adjoint and a per-sample measurement-consistency loss, so an inverse problem
over a DEQ decoder reads ``objective = lambda z, x, t: op.consistency(decode(z), *t)`` with
``targets=measurement.targets()``. Operators are built on kornia's filters (Gaussian and
motion kernels, ``filter2d``), its box machinery (``bbox_generator`` / ``bbox_to_mask``, as in
``RandomErasing``), morphology (brush strokes) and geometry (bicubic ``rescale``). Masks and
noise are drawn from a seeded generator, so the same seed gives the same measurement. Images are
``(B, C, H, W)`` floats in ``[0, 1]``.

The code is split by concern: the base classes (``_kornia_base``), the operators
(``_kornia_operators``: noise, blur, downsampling), the masks (``_kornia_masks``: inpainting)
and the metrics (``_kornia_metrics``); this module re-exports their public names and holds
the one table of problems, :data:`PROBLEMS`, that :func:`make_degradation` builds from.

Example:
    >>> import torch
    >>> from jiio_ext.adapters.kornia import make_degradation, psnr
    >>> op = make_degradation("inpaint", 16)
    >>> clean = torch.rand(2, 1, 16, 16)
    >>> meas = op.measure(clean, seed=0)
    >>> int((1 - meas.mask[0]).sum())  # one 5x5 hole: 20/64 of the side
    25
    >>> op.consistency(clean, *meas.targets())
    tensor([0., 0.])
    >>> bool((psnr(op.naive_inverse(meas), clean) > 10).all())
    True
"""

from __future__ import annotations

from typing import Any

try:
    import kornia  # noqa: F401  (the submodules below need it; a clear error first)
except ImportError as err:
    raise ImportError(
        'jiio_ext.adapters.kornia needs kornia: pip install "jiio-ext[inverse]"'
    ) from err

from jiio_ext.adapters._kornia_base import Degradation, Measurement, _check_int
from jiio_ext.adapters._kornia_masks import BoxInpainting, IrregularInpainting
from jiio_ext.adapters._kornia_metrics import psnr, ssim
from jiio_ext.adapters._kornia_operators import (
    Downsample,
    GaussianBlur,
    GaussianNoise,
    MotionBlur,
)

__all__ = [
    "PROBLEMS",
    "BoxInpainting",
    "Degradation",
    "Downsample",
    "GaussianBlur",
    "GaussianNoise",
    "IrregularInpainting",
    "Measurement",
    "MotionBlur",
    "make_degradation",
    "psnr",
    "ssim",
]

# problem -> (operator class, {make_degradation option: constructor argument}); the one list
# of problems (PROBLEMS is its keys)
_PROBLEM_TABLE: dict[str, tuple[type[Degradation], dict[str, str]]] = {
    "denoise": (GaussianNoise, {"sigma": "sigma", "pixel_range": "pixel_range"}),
    "inpaint": (BoxInpainting, {"hole_fraction": "hole_fraction", "hole_size": "hole_size"}),
    "inpaint-irregular": (
        IrregularInpainting,
        {"coverage": "coverage", "brush_radius": "brush_radius"},
    ),
    "deblur": (
        GaussianBlur,
        {"kernel_size": "kernel_size", "blur_sigma": "sigma", "border_type": "border_type"},
    ),
    "deblur-motion": (
        MotionBlur,
        {
            "kernel_size": "kernel_size",
            "angle": "angle",
            "direction": "direction",
            "border_type": "border_type",
        },
    ),
    "superres": (Downsample, {"factor": "factor", "antialias_sigma": "antialias_sigma"}),
}

# Problem names accepted by make_degradation (one degradation operator each).
PROBLEMS = tuple(_PROBLEM_TABLE)


def make_degradation(problem: str, image_size: int, **options: Any) -> Degradation:
    """Build the degradation operator of ``problem`` for square ``image_size`` images.

    Args:
        problem: one of :data:`PROBLEMS`.
        image_size: side of the (square) images, used to check the options.
        **options: ``sigma`` (default 0.1) and ``pixel_range`` (denoise); ``noise_sigma``
            (every other problem); ``hole_fraction`` / ``hole_size`` (inpaint); ``coverage``,
            ``brush_radius`` (inpaint-irregular); ``kernel_size``, ``blur_sigma``,
            ``border_type`` (deblur); ``kernel_size``, ``angle``, ``direction``, ``border_type``
            (deblur-motion); ``factor``, ``antialias_sigma`` (superres).

    Returns:
        The :class:`Degradation`.

    Raises:
        ValueError: unknown problem, out-of-range option (``sigma < 0``, a hole not smaller
            than the image, an even kernel size, a factor not dividing ``image_size``...).
        TypeError: an option the problem does not take, or an option of the wrong type.

    Example:
        >>> op = make_degradation("superres", 32, factor=4, noise_sigma=0.01)
        >>> type(op).__name__, op.measurement_shape((1, 3, 32, 32))
        ('Downsample', (1, 3, 8, 8))
        >>> make_degradation("deblur", 16, kernel_size=4)
        Traceback (most recent call last):
        ...
        ValueError: kernel_size: expected an odd size (the kernel needs a centre), got 4
    """
    if problem not in PROBLEMS:
        raise ValueError(f"problem: expected one of {PROBLEMS}, got {problem!r}")
    image_size = _check_int("image_size", image_size)
    cls, names = _PROBLEM_TABLE[problem]
    allowed = set(names) | ({"noise_sigma"} if problem != "denoise" else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"options: problem {problem!r} takes no option {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(allowed))}"
        )
    kwargs = {names.get(key, key): value for key, value in options.items()}
    if problem == "denoise":
        kwargs.setdefault("sigma", 0.1)
    operator = cls(**kwargs)
    operator._check_size(image_size, image_size)
    return operator
