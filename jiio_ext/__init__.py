"""jiio-ext: joint inference and input optimisation (JIIO) for deep equilibrium models.

Example:
    >>> import torch
    >>> import jiio_ext
    >>> f = lambda z, x: 0.5 * torch.tanh(z) + x
    >>> target = torch.ones(2, 3)
    >>> sol = jiio_ext.solve_joint(f, lambda z, x: (z - target).pow(2).sum(1),
    ...                            torch.zeros(2, 3), torch.zeros(2, 3), step_size=0.3)
    >>> sol.success
    True
"""

from jiio_ext.constraints import (
    Box,
    ComposedProjection,
    Constraint,
    Intersection,
    L2Ball,
    LinfBall,
)
from jiio_ext.grad import EnvelopeGrad, GradMode, ImplicitGrad
from jiio_ext.regularize import jacobian_penalty, random_trajectory_iteration, trajectory_penalty
from jiio_ext.schedules import Constant, Cosine, Schedule, StepSwitch
from jiio_ext.solution import JointSolution, JointSolveError, Status
from jiio_ext.solve import solve_joint, solve_nested
from jiio_ext.solvers import Anderson, DampedIteration

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
    "solve_joint",
    "solve_nested",
    "trajectory_penalty",
]

__version__ = "0.1.0.dev0"
