"""Input updates: how the x-block of the augmented map turns the x-gradient into a step.

The fixed point of the x-block, ``x = Π_C(x − P(g))``, is projected stationarity for any
positive preconditioner ``P`` that is a per-sample scalar (or diagonal, for separable
constraints); the update only decides how fast the iteration gets there.

* :class:`Adaptive` (the default): an Adam-style diagonal preconditioner kept per sample in
  the map's state, so the step does not depend on the scale of the objective; its learning
  rate is relative to the scale of ``x`` (its RMS at the start, or the constraint's radius),
  so rescaling the units of ``x`` changes nothing either; the rate decays on a half cosine over
  a fixed number of iterations (``horizon``, not the budget), so the iteration settles instead
  of oscillating at the rate, and reaches a given quality at the same iteration whatever
  ``max_iter`` is.
* :class:`GradientStep`: the raw step ``α_x · step_rule(g)`` with a hand-set schedule, as in
  the reference code (attacks use it with the ``sign`` / ``l2`` rules, whose steps are
  already scale-free).

Example:
    >>> import torch
    >>> from jiio_ext.updates import Adaptive
    >>> update = Adaptive(lr=0.1)
    >>> update.start(torch.zeros(2, 3), None)
    >>> step = update(torch.tensor([[1e-6, 2e-6, 0.0], [1e6, -1e6, 0.0]]), None, 0, 100)
    >>> step.abs().amax(dim=1).round(decimals=3)  # the same first step at any gradient scale
    tensor([0.1000, 0.1000])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from jiio_ext.constraints import Constraint
from jiio_ext.schedules import Constant, Schedule
from jiio_ext.steps import StepRule, raw_step

__all__ = ["Adaptive", "GradientStep", "InputUpdate"]


class InputUpdate:
    """Base class: ``update(g, index, k, max_iter) -> step`` with ``x⁺ = Π_C(x − step)``.

    ``start(x0, constraint)`` is called once per solve with the full batch; ``index`` holds
    the batch positions of the rows of ``g`` (``None``: the whole batch), so per-sample state
    follows the active samples. With ``frozen=True`` the update is a fixed linear function of
    ``g`` (the one the iteration ended with), which is what implicit differentiation of the
    fixed point needs.

    Example:
        >>> import torch
        >>> update = GradientStep(step_size=0.5)
        >>> update.start(torch.zeros(1, 2), None)
        >>> update(torch.tensor([[2.0, -4.0]]), None, 0, 10)
        tensor([[ 1., -2.]])
    """

    def start(self, x0: torch.Tensor, constraint: Constraint | None) -> None:
        """Reset the per-sample state for a new solve over ``x0`` (full batch)."""

    def __call__(
        self,
        grad: torch.Tensor,
        index: torch.Tensor | None,
        k: int,
        max_iter: int,
        *,
        frozen: bool = False,
        objective: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The step for gradient ``grad`` of the rows ``index`` at iteration ``k``.

        ``objective`` holds the per-sample objective at the current iterate (the map computes
        it anyway); updates that control their step from it use it, the others ignore it.
        """
        raise NotImplementedError

    def gain(self, index: torch.Tensor | None) -> torch.Tensor | float:
        """Step per unit gradient of the last step, per element ``(b, n)`` or a number.

        The stationarity measure ``(x − Π_C(x − gain ⊙ g)) / gain`` of the augmented map uses
        it: a projected gradient in the gradient's units, whatever the step size.
        """
        raise NotImplementedError


@dataclass
class GradientStep(InputUpdate):
    """The hand-set step ``α_x(k) · step_rule(g)`` (the reference code's update).

    Args:
        step_size: ``α_x``: a number or a schedule.
        step_rule: gradient → direction (raw, sign, l2).

    Example:
        >>> import torch
        >>> from jiio_ext.steps import sign_step
        >>> update = GradientStep(step_size=0.1, step_rule=sign_step)
        >>> update(torch.tensor([[3.0, -0.01]]), None, 0, 10)
        tensor([[ 0.1000, -0.1000]])
    """

    step_size: float | Schedule = 0.01
    step_rule: StepRule = raw_step

    def __post_init__(self) -> None:
        if not isinstance(self.step_size, Schedule):
            self.step_size = Constant(float(self.step_size))
        self._last = float(self.step_size(0, 1))

    def __call__(self, grad, index, k, max_iter, *, frozen=False, objective=None):
        """The step for gradient ``grad`` of the rows ``index`` at iteration ``k``."""
        if frozen:
            return self._last * self.step_rule(grad)
        self._last = float(self.step_size(k, max_iter))
        return self._last * self.step_rule(grad)

    def gain(self, index: torch.Tensor | None) -> float:
        """The last step size (see :meth:`InputUpdate.gain`)."""
        return self._last


def _unit(x0: torch.Tensor, constraint: Constraint | None) -> torch.Tensor:
    """Per-sample scale of ``x``: the constraint's radius, else the RMS of ``x0``, else 1."""
    batch = x0.shape[0]
    radius = None if constraint is None else constraint.scale(x0)
    rms = x0.detach().flatten(1).pow(2).mean(1).sqrt() if x0[0].numel() else x0.new_ones(batch)
    unit = torch.where(rms > 0, rms, torch.ones_like(rms))
    if radius is not None:
        unit = torch.where(torch.isfinite(radius), radius.to(unit), unit)
    return unit


@dataclass
class Adaptive(InputUpdate):
    """Adam-style preconditioned steps, scale-free in the objective and in the units of ``x``.

    Per sample, ``m`` and ``v`` are exponential moving averages of ``g`` and ``g²`` (bias
    corrected), and the step is ``lr(k) · unit · m̂ / (√v̂ + ε)``, where ``unit`` is the
    sample's scale of ``x`` (the constraint's radius, else the RMS of ``x0``, else 1) and
    ``lr(k)`` decays from ``lr`` to ``lr · final`` on a half cosine over the first ``horizon``
    iterations (or the budget ``max_iter``, when that is shorter or ``horizon`` is ``None``),
    then stays at ``lr · final``; over the last ``tail`` of the budget it anneals once more,
    on a half cosine down to ``lr · end``, so that ``z`` and the adjoint catch up with an
    ``x`` that slows down before the budget ends. A fixed horizon makes the iterates until
    that closing anneal independent of the budget: a larger ``max_iter`` runs further at the
    floor rate before it. With a
    non-separable constraint (an L2 ball) the preconditioner is the per-sample mean of ``v̂``,
    a scalar, so that the fixed point is still projected stationarity. Multiplying the
    objective by any constant leaves every step unchanged.

    The rate is also controlled per sample by the objective the map computes at each iterate:
    when a sample's objective rises by more than ``rise`` (relative to its magnitude) from
    one iteration to the next, its rate is multiplied by ``backoff``; otherwise it recovers
    by a factor ``recover`` per iteration, never above the schedule. This damps the
    oscillation that a joint iteration shows when ``x`` moves faster than ``z`` can follow,
    and costs nothing on problems where the objective falls steadily.

    Args:
        lr: initial step, relative to the scale of ``x``.
        final: final step as a fraction of ``lr`` (the cosine decay's floor).
        horizon: iterations over which the rate decays (``None``: over the whole budget
            ``max_iter``, as a cosine schedule in training does).
        tail: fraction of the budget, at its end, over which the rate anneals to
            ``lr · end`` (0: no closing anneal).
        end: the rate at the last iteration, as a fraction of ``lr`` (at most ``final``).
        beta1: momentum of the first moment.
        beta2: averaging of the second moment.
        eps: relative floor of ``√v̂`` (against its per-sample mean).
        backoff: factor on a sample's rate when its objective rises by more than ``rise``
            (1 switches the control off).
        recover: factor by which a backed-off rate grows back each iteration (>= 1).
        rise: relative rise of the objective that counts as overshooting.

    Example:
        >>> import torch
        >>> from jiio_ext import solve_joint
        >>> f = lambda z, x: 0.5 * z + x
        >>> target = torch.ones(2, 3)
        >>> objective = lambda z, x: 1e4 * (z - target).pow(2).sum(1)  # any scale works
        >>> sol = solve_joint(f, objective, torch.zeros(2, 3), z0=torch.zeros(2, 3), max_iter=300)
        >>> bool((sol.x - 0.5).abs().max() < 1e-3)
        True
    """

    lr: float = 0.15
    final: float = 2 / 15  # the floor lr · final = 0.02
    horizon: int | None = 80
    tail: float = 0.2
    end: float = 0.01
    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-3
    backoff: float = 0.7
    recover: float = 1.05
    rise: float = 0.2
    _m: torch.Tensor | None = field(default=None, repr=False)
    _v: torch.Tensor | None = field(default=None, repr=False)
    _t: torch.Tensor | None = field(default=None, repr=False)
    _unit: torch.Tensor | None = field(default=None, repr=False)
    _scalar: bool = field(default=False, repr=False)
    _gain: torch.Tensor | None = field(default=None, repr=False)
    _factor: torch.Tensor | None = field(default=None, repr=False)
    _previous: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in (
            "lr",
            "final",
            "tail",
            "end",
            "beta1",
            "beta2",
            "eps",
            "backoff",
            "recover",
            "rise",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Adaptive.{name}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"Adaptive.{name}: expected a finite number, got {value!r}")
        if self.horizon is not None and (
            isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1
        ):
            raise ValueError(
                f"Adaptive.horizon: expected an integer >= 1 or None, got {self.horizon!r}"
            )
        if self.lr <= 0:
            raise ValueError(f"Adaptive.lr: expected a number > 0, got {self.lr!r}")
        if not 0 < self.final <= 1:
            raise ValueError(f"Adaptive.final: expected a number in (0, 1], got {self.final!r}")
        if not 0 <= self.tail < 1:
            raise ValueError(f"Adaptive.tail: expected a number in [0, 1), got {self.tail!r}")
        if not 0 < self.end <= self.final:
            raise ValueError(
                f"Adaptive.end: expected a number in (0, final={self.final!r}], got {self.end!r}"
            )
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"Adaptive.{name}: expected a number in [0, 1)")
        if self.eps < 0:
            raise ValueError(f"Adaptive.eps: expected a number >= 0, got {self.eps!r}")
        if not 0 < self.backoff <= 1:
            raise ValueError(f"Adaptive.backoff: expected a number in (0, 1], got {self.backoff!r}")
        if self.recover < 1:
            raise ValueError(f"Adaptive.recover: expected a number >= 1, got {self.recover!r}")
        if self.rise < 0:
            raise ValueError(f"Adaptive.rise: expected a number >= 0, got {self.rise!r}")

    def start(self, x0: torch.Tensor, constraint: Constraint | None) -> None:
        """Reset the moments for a new solve over ``x0`` (full batch)."""
        flat = x0.detach().flatten(1)
        self._m = torch.zeros_like(flat) if self.beta1 > 0 else None
        self._v = torch.zeros_like(flat)
        self._t = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
        self._unit = _unit(x0, constraint).to(flat)
        self._scalar = constraint is not None and not constraint.separable
        self._gain = torch.zeros_like(flat)
        self._factor = torch.ones_like(self._t)
        self._previous = torch.full_like(self._t, math.inf)

    def _control(self, objective: torch.Tensor | None, index: torch.Tensor | None, whole: bool):
        """Per-sample rate factors after seeing ``objective`` (backoff on a rise, else recover)."""
        factor = self._factor if whole else self._factor[index]
        if objective is None or self.backoff == 1:
            return factor
        value = objective.detach().to(factor).reshape(-1)
        previous = self._previous if whole else self._previous[index]
        rose = (value - previous) > self.rise * previous.abs()
        factor = torch.where(rose, factor * self.backoff, (factor * self.recover).clamp_max(1.0))
        value = torch.where(value - value == 0, value, previous)  # finite: v - v is 0
        if whole:
            self._factor, self._previous = factor, value
        else:
            self._factor[index], self._previous[index] = factor, value
        return factor

    def rate(self, k: int, max_iter: int) -> float:
        """The relative step at iteration ``k`` of ``max_iter`` (half-cosine decay).

        Example:
            >>> update = Adaptive(lr=0.1, final=0.2, horizon=80, tail=0.2, end=0.01)
            >>> [round(update.rate(k, 300), 4) for k in (0, 79, 239, 299)]  # flat, then anneal
            [0.1, 0.02, 0.02, 0.001]
            >>> round(update.rate(31, 40), 4)  # a shorter budget decays within it
            0.028
            >>> round(Adaptive(lr=0.1, final=0.01, horizon=None, tail=0).rate(99, 100), 4)  # budget
            0.001
        """
        span = max_iter if self.horizon is None else min(self.horizon, max_iter)
        progress = min(k / max(span - 1, 1), 1.0)
        floor = self.lr * self.final
        rate = floor + 0.5 * (self.lr - floor) * (1.0 + math.cos(math.pi * progress))
        length = round(self.tail * max_iter)
        start = max_iter - length
        if length < 1 or k < start:
            return rate
        # the closing anneal: a half cosine from the rate down to lr · end at the last iteration
        closing = min((k - start + 1) / length, 1.0)
        low = self.end * self.lr
        return low + 0.5 * (rate - low) * (1.0 + math.cos(math.pi * closing))

    def __call__(self, grad, index, k, max_iter, *, frozen=False, objective=None):
        """The step for gradient ``grad`` of the rows ``index`` at iteration ``k``."""
        if self._v is None:
            raise RuntimeError("Adaptive: start(x0, constraint) must be called before stepping")
        flat = grad.flatten(1)
        # the engine passes the sorted active rows: all of them means the whole batch
        whole = index is None or index.numel() == self._v.shape[0]
        if frozen:
            return ((self._gain if whole else self._gain[index]) * flat).view_as(grad)
        g = flat.detach()
        t = self._t + 1 if whole else self._t[index] + 1
        v = (
            (self._v if whole else self._v[index])
            .mul(self.beta2)
            .addcmul_(g, g, value=1 - self.beta2)
        )
        v_hat = v / (1 - self.beta2**t).unsqueeze(1)
        mean_v = v_hat.mean(dim=1, keepdim=True)
        if self._scalar:
            v_hat = mean_v.expand_as(v_hat)
        tiny = torch.finfo(g.dtype).tiny
        denom = v_hat.sqrt().add_(self.eps * mean_v.sqrt() + tiny)
        unit = self._unit if whole else self._unit[index]
        factor = self._control(objective, index, whole)
        gain = (self.rate(k, max_iter) * unit * factor).unsqueeze(1) / denom
        if self.beta1 > 0:
            m = (self._m if whole else self._m[index]).mul(self.beta1).add_(g, alpha=1 - self.beta1)
            direction = m / (1 - self.beta1**t).unsqueeze(1)
        else:  # no momentum: the bias-corrected first moment is the gradient itself
            m, direction = None, g
        if whole:
            self._v, self._t, self._gain = v, t, gain
            if m is not None:
                self._m = m
        else:
            self._v[index], self._t[index], self._gain[index] = v, t, gain
            if m is not None:
                self._m[index] = m
        return (gain * direction).view_as(grad)

    def gain(self, index: torch.Tensor | None) -> torch.Tensor:
        """Per-element gain of the last step (see :meth:`InputUpdate.gain`)."""
        return self._gain if index is None else self._gain[index]
