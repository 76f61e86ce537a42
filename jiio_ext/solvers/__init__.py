"""Fixed-point solvers over batches of flat per-sample states.

Example:
    >>> from jiio_ext.solvers import Anderson, DampedIteration, get_solver
    >>> isinstance(get_solver("anderson"), Anderson)
    True
"""

from __future__ import annotations

from jiio_ext.solvers.anderson import Anderson, AndersonState, DampedIteration
from jiio_ext.solvers.fixed_point import FixedPointResult, fixed_point

__all__ = [
    "Anderson",
    "AndersonState",
    "DampedIteration",
    "FixedPointResult",
    "fixed_point",
    "get_solver",
]


def get_solver(solver: str | Anderson | DampedIteration, **options) -> Anderson | DampedIteration:
    """A solver instance from a name (``"anderson"``, ``"damped"``) or pass an instance through.

    Args:
        solver: name or instance.
        **options: constructor options for a named solver (e.g. ``memory=10``).

    Returns:
        The solver.

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> get_solver("anderson", memory=8).memory
        8
    """
    if isinstance(solver, (Anderson, DampedIteration)):
        return solver
    if solver == "anderson":
        return Anderson(**options)
    if solver == "damped":
        return DampedIteration()
    raise ValueError(f"solver: unknown solver {solver!r}; expected 'anderson' or 'damped'")
