"""jiio-ext: joint inference and input optimisation (JIIO) for deep equilibrium models.

Example:
    >>> import torch
    >>> import jiio_ext
    >>> f = lambda z, x: 0.5 * torch.tanh(z) + x
    >>> target = torch.ones(2, 3)
    >>> sol = jiio_ext.solve_joint(f, lambda z, x: (z - target).pow(2).sum(1),
    ...                            torch.zeros(2, 3), z0=torch.zeros(2, 3), step_size=0.3)
    >>> sol.success
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jiio_ext.constraints import (
        Box,
        ComposedProjection,
        Constraint,
        Intersection,
        L2Ball,
        LinfBall,
    )
    from jiio_ext.forward import solve_forward
    from jiio_ext.grad import EnvelopeGrad, GradMode, ImplicitGrad
    from jiio_ext.nested import solve_nested
    from jiio_ext.regularize import (
        jacobian_penalty,
        random_trajectory_iteration,
        trajectory_penalty,
    )
    from jiio_ext.schedules import Constant, Cosine, Schedule, StepSwitch
    from jiio_ext.solution import JointSolution, JointSolveError, Status
    from jiio_ext.solve import solve_joint
    from jiio_ext.solvers import Anderson, DampedIteration

# Public names by the module that defines them. They are imported on first use (PEP 562), so
# that ``import jiio_ext.apps.cli`` (``jiio --help``, ``jiio --version``) does not import torch.
_ORIGINS = {
    "jiio_ext.constraints": (
        "Box",
        "ComposedProjection",
        "Constraint",
        "Intersection",
        "L2Ball",
        "LinfBall",
    ),
    "jiio_ext.forward": ("solve_forward",),
    "jiio_ext.grad": ("EnvelopeGrad", "GradMode", "ImplicitGrad"),
    "jiio_ext.regularize": (
        "jacobian_penalty",
        "random_trajectory_iteration",
        "trajectory_penalty",
    ),
    "jiio_ext.schedules": ("Constant", "Cosine", "Schedule", "StepSwitch"),
    "jiio_ext.solution": ("JointSolution", "JointSolveError", "Status"),
    "jiio_ext.nested": ("solve_nested",),
    "jiio_ext.solve": ("solve_joint",),
    "jiio_ext.solvers": ("Anderson", "DampedIteration"),
}
_MODULE_OF = {name: module for module, names in _ORIGINS.items() for name in names}

__all__ = [
    "Anderson",
    "Box",
    "ComposedProjection",
    "Constant",
    "Constraint",
    "Cosine",
    "DampedIteration",
    "EnvelopeGrad",
    "GradMode",
    "ImplicitGrad",
    "Intersection",
    "JointSolution",
    "JointSolveError",
    "L2Ball",
    "LinfBall",
    "Schedule",
    "Status",
    "StepSwitch",
    "jacobian_penalty",
    "random_trajectory_iteration",
    "solve_forward",
    "solve_joint",
    "solve_nested",
    "trajectory_penalty",
]

__version__ = "0.1.0.dev0"


def __getattr__(name: str) -> Any:
    """Import a public name from its module, or a submodule (``jiio_ext.solve``), on first use."""
    module = _MODULE_OF.get(name)
    if module is None and name.startswith("__"):
        raise AttributeError(f"module 'jiio_ext' has no attribute {name!r}")
    if module is None:
        try:
            return importlib.import_module(f"jiio_ext.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"jiio_ext.{name}":
                raise
            raise AttributeError(f"module 'jiio_ext' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazily imported public ones included."""
    return sorted(set(globals()) | set(__all__))
