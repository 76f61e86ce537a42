"""``fnet`` forwards of the higher adapter: joint evaluations and DEQ solves, per task or vmapped.

Internal to :mod:`jiio_ext.adapters.higher`. A *joint* forward (the support input, after the
first step) evaluates every DEQ once at the joint state; with ``tasks=T`` the T tasks are one
``torch.func.vmap`` call of the model (a Python loop over the tasks where the model cannot be
vmapped). A *solve* forward (the first support forward, any other input) runs the model's own
DEQ solver per task and attaches the implicit backward.

Example:
    >>> import torch
    >>> from jiio_ext.adapters.higher import innerloop_ctx
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> with innerloop_ctx(net, opt, tasks=3) as (fnet, diffopt):
    ...     x = torch.ones(3, 4, 2)
    ...     _ = diffopt.step(fnet(x).pow(2).mean((1, 2)))
    ...     fnet(x).shape  # one vmapped joint evaluation of the three tasks
    torch.Size([3, 4, 1])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from jiio_ext.adapters._higher_backward import Gate, rank_above
from jiio_ext.adapters._higher_tap import Forward
from torch.func import functional_call, vmap

__all__ = ["joint_forward", "solve_forward"]

# what a model that torch.func.vmap cannot trace raises: the tasks are then evaluated in a loop
_VMAP_ERRORS = (RuntimeError, NotImplementedError, ValueError)

# The state of an innerloop_ctx block (``_higher_loop.InnerLoop``). Not imported: that module
# dispatches fnet calls to this one, so this one depends on its attributes only.
InnerLoop = Any


def _bind(loop: InnerLoop, phi: list[torch.Tensor], kwargs: dict) -> tuple[dict, dict]:
    """``(parameters, kwargs)`` of one model call with the adapted values ``phi``."""
    values = dict(loop.overrides)
    call_kwargs = dict(kwargs)
    for slot, value in zip(loop.slots, phi):
        if slot.is_context:
            call_kwargs[slot.name] = value
        else:
            values[slot.name] = value
    return values, call_kwargs


def _task_args(loop: InnerLoop, args: tuple, t: int) -> tuple:
    return tuple(a[t] if loop.tasks and isinstance(a, torch.Tensor) else a for a in args)


def _stack(loop: InnerLoop, outputs: list[Any]) -> Any:
    if not loop.tasks:
        return outputs[0]
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        raise TypeError("model: with tasks=T the model must return a tensor per task")
    return torch.stack(outputs)


def _vmapped(loop: InnerLoop, mode: str, record: Forward, phi: list, args: tuple, kwargs: dict):
    """One vmapped model call over the tasks at the given DEQ states ``record.z``."""

    def one(z: list[torch.Tensor], phi: list[torch.Tensor], task_args: tuple):
        values, call_kwargs = _bind(loop, phi, kwargs)
        with loop.tap.active(mode, z, record.gate):
            out = functional_call(loop.model, values, task_args, call_kwargs)
        return out, tuple(loop.tap.images)

    dims = tuple(0 if isinstance(a, torch.Tensor) else None for a in args)
    try:
        output, images = vmap(one, in_dims=(0, 0, dims))(record.z, phi, args)
    finally:
        loop.tap.states, loop.tap.images = [], []  # vmap-level tensors must not escape
    if not isinstance(output, torch.Tensor):
        raise TypeError("model: with tasks=T the model must return a tensor per task")
    record.images = list(images)
    return output


def _try_vmapped(loop: InnerLoop, run: Callable[[], Any]) -> Any:
    """``run()`` when the tasks can be vmapped; ``None`` (and a warning, once) when not."""
    if not (loop.tasks and loop.vectorize):
        return None
    try:
        return run()
    except _VMAP_ERRORS as err:
        loop.vectorize = False
        warnings.warn(
            f"model: torch.func.vmap could not evaluate the tasks together ({err}); "
            "evaluating them one by one (pass vectorize=False to skip the attempt)",
            RuntimeWarning,
            stacklevel=5,
        )
        return None


def _first_leaves(loop: InnerLoop, phi: list[torch.Tensor]) -> tuple[list, list]:
    """Before the first step: ``(leaves, values)``; the values keep a gradient path to θ."""
    leaves = [p.detach().requires_grad_() for p in phi]
    values = [
        leaf if s.is_context or not loop.track else leaf + (s.anchor - s.anchor.detach())
        for leaf, s in zip(leaves, loop.slots)
    ]
    return leaves, values


def joint_forward(loop: InnerLoop, args: tuple, kwargs: dict, support: Any) -> Any:
    """Evaluate the model at the joint state (each DEQ once); record leaves and images.

    Example:
        >>> import torch
        >>> from jiio_ext.adapters.higher import innerloop_ctx
        >>> net = torch.nn.Linear(2, 1)
        >>> with innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1)) as (fnet, opt):
        ...     x = torch.ones(4, 2)
        ...     _ = opt.step(fnet(x).pow(2).mean())
        ...     fnet(x).shape  # a joint forward: the input of the first step
        torch.Size([4, 1])
    """
    z_rows, phi_rows, _ = loop.split_state(loop.state)
    record = Forward(support, "joint", Gate(), loop.rows, batched=True)
    record.z = record.split(z_rows, loop.z_shapes)
    record.phi = list(loop.slot_layout.unflatten(phi_rows))
    if not (loop.keep_graph and loop.state.requires_grad):
        # one step's graph: the state enters as leaves (the unrolled mode keeps the chain)
        record.z = [t.detach().requires_grad_() for t in record.z]
        record.phi = [t.detach().requires_grad_() for t in record.phi]
    else:  # the chain: the step restarts from these blocks, not from the re-joined parts
        record.z_rows, record.phi_rows = z_rows, phi_rows
    output = _try_vmapped(loop, lambda: _vmapped(loop, "joint", record, record.phi, args, kwargs))
    if output is None:
        outputs, images = [], []
        for t in range(loop.rows):
            values, call_kwargs = _bind(loop, [p[t] for p in record.phi], kwargs)
            with loop.tap.active("joint", [z[t] for z in record.z], record.gate):
                task_args = _task_args(loop, args, t)
                outputs.append(functional_call(loop.model, values, task_args, call_kwargs))
            images.append(loop.tap.images)
        output = _stack(loop, outputs)
        record.images = [torch.stack(parts) for parts in zip(*images)]
    loop.last = record
    return output


def solve_forward(loop: InnerLoop, args: tuple, kwargs: dict, support: Any) -> Any:
    """Run the model with its own DEQ solver at the adapted values (implicit backward).

    With ``tasks=T`` the DEQs are solved task by task without a graph, then the T tasks are
    evaluated at their fixed points in one vmapped call whose implicit backward is one batched
    adjoint solve. Before the first step the adapted values are leaves of the first step's
    gradient (their meta-gradient still reaches the meta-parameters).

    Example:
        >>> import torch
        >>> from jiio_ext.adapters.higher import innerloop_ctx
        >>> net = torch.nn.Linear(2, 1)
        >>> with innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1)) as (fnet, _):
        ...     fnet(torch.ones(4, 2)).shape  # before any step: a solve forward
        torch.Size([4, 1])
    """
    adapted = loop.adapted_now()
    output = _try_vmapped(loop, lambda: _solve_vmapped(loop, adapted, args, kwargs, support))
    if output is not None:
        return output
    record = Forward(support, "solve", Gate(), loop.rows, batched=False)
    outputs = []
    for t in range(loop.rows):
        phi = [a[t] for a in adapted]
        if loop.n_steps == 0:
            leaves, phi = _first_leaves(loop, phi)
            record.phi.extend(leaves)
            record.values.extend(phi)
        values, call_kwargs = _bind(loop, phi, kwargs)
        with loop.tap.active("solve", [], record.gate, phi):
            task_args = _task_args(loop, args, t)
            outputs.append(functional_call(loop.model, values, task_args, call_kwargs))
        record.z.extend(loop.tap.states)
        record.images.extend(loop.tap.images)
        record.limits.extend(loop.tap.limits)
    loop.last = record
    return _stack(loop, outputs)


def _solve_vmapped(loop: InnerLoop, adapted: list, args: tuple, kwargs: dict, support: Any):
    record = Forward(support, "solve", Gate(), loop.rows, batched=True)
    solved = []
    with torch.no_grad():  # the fixed points, task by task (the solver is not vmappable)
        for t in range(loop.rows):
            values, call_kwargs = _bind(loop, [a[t] for a in adapted], kwargs)
            with loop.tap.active("probe", [], record.gate):
                functional_call(loop.model, values, _task_args(loop, args, t), call_kwargs)
            solved.append(loop.tap.states)
    record.z = [
        rank_above(torch.stack(parts).detach().requires_grad_(), adapted) for parts in zip(*solved)
    ]
    phi = adapted
    if loop.n_steps == 0:
        record.phi, phi = _first_leaves(loop, adapted)
        record.values = list(phi)
    output = _vmapped(loop, "solved", record, phi, args, kwargs)
    record.limits = list(loop.tap.limits)
    loop.last = record
    return output
