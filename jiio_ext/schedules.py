"""Step-size schedules for the x-update, functions of the iteration index.

Example:
    >>> from jiio_ext.schedules import StepSwitch
    >>> schedule = StepSwitch(0.6, 0.2)
    >>> schedule(0, 80), schedule(50, 80)
    (0.6, 0.2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Constant", "Cosine", "Schedule", "StepSwitch", "as_schedule"]


class Schedule:
    """Base class: ``schedule(k, max_iter) -> step size`` at iteration ``k`` (from 0).

    Example:
        >>> from jiio_ext.schedules import Constant
        >>> Constant(0.1)(7, 100)
        0.1
    """

    def __call__(self, k: int, max_iter: int) -> float:
        """Step size at iteration ``k`` of a budget of ``max_iter``."""
        raise NotImplementedError

    def validate(self, name: str = "step_size") -> None:
        """Raise ValueError unless every step size is a finite number > 0.

        Args:
            name: argument name used in the error message.
        """
        for field_name, value in vars(self).items():
            if isinstance(value, (int, float)) and (not math.isfinite(value) or value <= 0):
                raise ValueError(
                    f"{name}: {type(self).__name__}.{field_name} must be finite and > 0, "
                    f"got {value}"
                )


@dataclass(frozen=True)
class Constant(Schedule):
    """A constant step size.

    Args:
        step: the step size.

    Example:
        >>> Constant(0.05)(10, 100)
        0.05
    """

    step: float

    def __call__(self, k: int, max_iter: int) -> float:
        """Step size at iteration ``k`` of a budget of ``max_iter``."""
        return self.step


@dataclass(frozen=True)
class StepSwitch(Schedule):
    """One switch from ``first`` to ``second`` (the reference code's schedule).

    The switch happens at iteration ``max(min_switch, floor(switch_fraction * max_iter))``,
    i.e. ``max(50, floor(0.625 * iters))`` by default.

    Args:
        first: step size before the switch.
        second: step size after it.
        switch_fraction: fraction of the budget at which to switch.
        min_switch: earliest switch iteration.

    Example:
        >>> StepSwitch(0.01, 0.003)(62, 100)
        0.003
    """

    first: float
    second: float
    switch_fraction: float = 0.625
    min_switch: int = 50

    def switch_at(self, max_iter: int) -> int:
        """Iteration index at which the step changes."""
        return max(self.min_switch, math.floor(self.switch_fraction * max_iter))

    def __call__(self, k: int, max_iter: int) -> float:
        """Step size at iteration ``k`` of a budget of ``max_iter``."""
        return self.first if k < self.switch_at(max_iter) else self.second


@dataclass(frozen=True)
class Cosine(Schedule):
    """Cosine decay from ``first`` to ``last`` over the budget.

    Args:
        first: initial step size.
        last: final step size.

    Example:
        >>> round(Cosine(1.0, 0.1)(50, 101), 3)
        0.55
    """

    first: float
    last: float

    def __call__(self, k: int, max_iter: int) -> float:
        """Step size at iteration ``k`` of a budget of ``max_iter``."""
        progress = min(k / max(max_iter - 1, 1), 1.0)
        return self.last + 0.5 * (self.first - self.last) * (1.0 + math.cos(math.pi * progress))


def as_schedule(step: float | Schedule, name: str = "step_size") -> Schedule:
    """Turn a number into a :class:`Constant` schedule and check the result.

    Args:
        step: a positive number or a schedule.
        name: argument name for error messages.

    Returns:
        A validated schedule.

    Raises:
        ValueError: when a step size is not a finite number > 0.
        TypeError: when ``step`` is neither a number nor a schedule.

    Example:
        >>> as_schedule(0.1)
        Constant(step=0.1)
    """
    if isinstance(step, Schedule):
        step.validate(name)
        return step
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise TypeError(f"{name}: expected a number or a Schedule, got {type(step).__name__}")
    if not math.isfinite(step) or step <= 0:
        raise ValueError(f"{name}: must be finite and > 0, got {step}")
    return Constant(float(step))
