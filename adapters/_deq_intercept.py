"""DEQ discovery and interception: the one mechanism the torchdeq and higher adapters share.

A torchdeq model calls its DEQ as ``deq(func, z_init, ...)``. :func:`intercept` replaces the
``forward`` of the given ``DEQBase`` modules, inside a ``with`` block only, by a handler that
sees the call (``func``, ``z_init``, the original ``forward``) and returns what the model
receives in its place. :func:`find_deqs` lists a model's DEQ modules and :func:`state_parts`
reads a DEQ state (a tensor or a tuple/list of tensors).

Example:
    >>> import torch
    >>> from torchdeq import get_deq
    >>> deq = get_deq()
    >>> def handler(deq, original, func, z_init, args, kwargs):
    ...     return [func(z_init)], {}  # one application of f instead of a solve
    >>> with intercept([deq], handler):
    ...     z_out, _ = deq(lambda z: 0.5 * z + 1.0, torch.zeros(1, 2))
    >>> z_out[-1].tolist(), "forward" in deq.__dict__
    ([[1.0, 1.0]], False)
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Handler", "find_deqs", "intercept", "named_deqs", "state_parts", "unwrap"]

# handler(deq, original_forward, func, z_init, args, kwargs) -> what the DEQ call returns
Handler = Callable[[nn.Module, Callable, Callable, Any, tuple, dict], Any]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 2)
        >>> unwrap(torch.nn.DataParallel(lin)) is lin
        True
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def _deq_base() -> type | None:
    try:
        from torchdeq.core import DEQBase
    except ImportError:  # pragma: no cover - exercised only without the deq extra
        return None
    return DEQBase


def find_deqs(model: nn.Module) -> list[nn.Module]:
    """The torchdeq ``DEQBase`` submodules of ``model`` (none without torchdeq installed).

    Example:
        >>> import torch
        >>> from torchdeq import get_deq
        >>> find_deqs(torch.nn.Linear(2, 2)), len(find_deqs(torch.nn.ModuleList([get_deq()])))
        ([], 1)
    """
    base = _deq_base()
    if base is None:  # pragma: no cover - exercised only without the deq extra
        return []
    return [m for m in unwrap(model).modules() if isinstance(m, base)]


def named_deqs(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(parent, attribute name)`` of every torchdeq DEQ of ``model`` (to swap them).

    Example:
        >>> import torch
        >>> from torchdeq import get_deq
        >>> net = torch.nn.Module()
        >>> net.deq = get_deq()
        >>> [name for _, name in named_deqs(net)]
        ['deq']
    """
    base = _deq_base()
    if base is None:  # pragma: no cover - exercised only without the deq extra
        return []
    return [
        (parent, name)
        for parent in unwrap(model).modules()
        for name, child in parent.named_children()
        if isinstance(child, base)
    ]


def state_parts(z_init: Any, index: int = 0) -> tuple[tuple[torch.Tensor, ...], bool]:
    """The tensors of a DEQ state and whether it is a tuple/list state.

    Args:
        z_init: the state a DEQ call received.
        index: the call's position in the forward (for the error message).

    Returns:
        ``(parts, is_tuple)``.

    Raises:
        TypeError: for a state that is neither a tensor nor a non-empty tuple/list of tensors.

    Example:
        >>> import torch
        >>> parts, is_tuple = state_parts([torch.zeros(2, 1), torch.ones(2, 3)])
        >>> len(parts), is_tuple
        (2, True)
    """
    if isinstance(z_init, torch.Tensor):
        return (z_init,), False
    if (
        isinstance(z_init, (tuple, list))
        and z_init
        and all(isinstance(t, torch.Tensor) for t in z_init)
    ):
        return tuple(z_init), True
    raise TypeError(
        f"model: DEQ call {index} got a state of type {type(z_init).__name__}; "
        "expected a tensor or a tuple/list of tensors"
    )


@contextlib.contextmanager
def intercept(deqs: Sequence[nn.Module], handler: Handler) -> Iterator[None]:
    """Route every call of the given DEQ modules to ``handler`` inside this block.

    ``handler(deq, original, func, z_init, args, kwargs)`` receives the module, its
    ``forward`` as it was (to run the DEQ's own solve), and the call's arguments; what it
    returns is what the caller gets. Blocks nest: an inner block's ``original`` is the outer
    handler. On exit every module's ``forward`` is what it was before.

    Args:
        deqs: the DEQ modules (see :func:`find_deqs`).
        handler: the replacement of their ``forward``.

    Example:
        >>> import torch
        >>> from torchdeq import get_deq
        >>> deq, seen = get_deq(), []
        >>> def record(deq, original, func, z_init, args, kwargs):
        ...     seen.append(tuple(z_init.shape))
        ...     return original(func, z_init, *args, **kwargs)
        >>> with intercept([deq], record):
        ...     _ = deq(lambda z: 0.5 * z, torch.zeros(3, 2))
        >>> seen
        [(3, 2)]
    """
    saved = []
    try:
        for deq in deqs:
            saved.append((deq, deq.__dict__.get("forward")))
            deq.forward = types.MethodType(_routed(handler, deq.forward), deq)
        yield
    finally:
        for deq, previous in reversed(saved):
            if previous is None:
                del deq.forward
            else:
                deq.forward = previous


def _routed(handler: Handler, original: Callable) -> Callable:
    """A ``forward`` that hands the call and the previous ``forward`` to ``handler``."""

    def forward(module: nn.Module, func: Callable, z_init: Any, *args: Any, **kwargs: Any) -> Any:
        return handler(module, original, func, z_init, args, kwargs)

    return forward
