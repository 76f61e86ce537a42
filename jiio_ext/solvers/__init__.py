"""Fixed-point solvers over batches of flat per-sample states.

The solvers (:class:`Anderson`, :class:`DampedIteration`, optionally wrapped in
:class:`BestSoFar`) propose iterates; :class:`FixedPointEngine` steps them
(``init`` / ``step`` / ``terminate``) with the one per-sample test, :class:`Termination`;
:func:`fixed_point` is the plain loop.

Example:
    >>> from jiio_ext.solvers import Anderson, DampedIteration, get_solver
    >>> isinstance(get_solver("anderson"), Anderson)
    True
"""

from __future__ import annotations

from jiio_ext.solvers.anderson import Anderson, AndersonState, DampedIteration
from jiio_ext.solvers.best import BestSoFar
from jiio_ext.solvers.engine import EngineState, FixedPointEngine, FixedPointResult
from jiio_ext.solvers.fixed_point import fixed_point
from jiio_ext.solvers.termination import Termination, TerminationState, status_codes

__all__ = [
    "Anderson",
    "AndersonState",
    "BestSoFar",
    "DampedIteration",
    "EngineState",
    "FixedPointEngine",
    "FixedPointResult",
    "Termination",
    "TerminationState",
    "fixed_point",
    "get_solver",
    "status_codes",
]

# the options each named solver takes (anything else is an error, not silently dropped)
_OPTIONS = {"anderson": ("memory", "kind", "ridge", "mixing", "safeguard"), "damped": ()}


def get_solver(
    solver: str | Anderson | DampedIteration | BestSoFar, **options
) -> Anderson | DampedIteration | BestSoFar:
    """A solver instance from a name (``"anderson"``, ``"damped"``) or pass an instance through.

    Args:
        solver: name or instance.
        **options: constructor options for a named solver (e.g. ``memory=10``).

    Returns:
        The solver.

    Raises:
        ValueError: for an unknown name, or an option the chosen solver does not take (also
            any option given with an instance).

    Example:
        >>> get_solver("anderson", memory=8).memory
        8
        >>> get_solver("damped", memory=8)
        Traceback (most recent call last):
        ...
        ValueError: memory: the 'damped' solver takes no such option (it takes none)
    """
    if isinstance(solver, (Anderson, DampedIteration, BestSoFar)):
        if options:
            raise ValueError(
                f"{sorted(options)[0]}: options go to a named solver; got a "
                f"{type(solver).__name__} instance (set them on the instance)"
            )
        return solver
    if solver not in _OPTIONS:
        raise ValueError(f"solver: unknown solver {solver!r}; expected 'anderson' or 'damped'")
    unknown = sorted(set(options) - set(_OPTIONS[solver]))
    if unknown:
        takes = ", ".join(_OPTIONS[solver]) or "none"
        raise ValueError(
            f"{unknown[0]}: the {solver!r} solver takes no such option (it takes {takes})"
        )
    return Anderson(**options) if solver == "anderson" else DampedIteration()
