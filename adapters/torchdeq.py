"""torchdeq adapter: one decorator makes a torchdeq model's inputs optimisable with JIIO.

``input_optimizable`` finds the model's ``torchdeq.core.DEQBase`` submodules. During
``model.optimize_input(x0, objective)`` every joint iteration calls the model's own forward on
the current input; each intercepted DEQ call ``deq(func, z_init)`` returns the current joint
state (instead of solving) and records ``func(z)``, so one forward pass yields both ``f(z, x)``
and the model's output: the model is the core's ``f(z, x) -> (z_next, output)`` with
``has_aux=True``, and :func:`jiio_ext.solve_joint` takes one VJP for the adjoint and the input
gradient. Outside ``optimize_input`` the model is untouched. The interception is
:mod:`jiio_ext.adapters._deq_intercept` (shared with the higher adapter); the registered
``'jiio'`` solver and DEQ core live in ``_torchdeq_solver`` and ``_torchdeq_core``.

Example:
    >>> import torch
    >>> from torchdeq import get_deq
    >>> from jiio_ext.adapters.torchdeq import input_optimizable
    >>> @input_optimizable
    ... class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.cell = torch.nn.Linear(4, 4)
    ...         self.deq = get_deq(f_solver="anderson", f_max_iter=30)
    ...     def forward(self, x):
    ...         cell = lambda z: torch.tanh(0.5 * self.cell(z) + x)
    ...         z_out, _ = self.deq(cell, torch.zeros_like(x))
    ...         return z_out[-1]
    >>> net = Net()
    >>> target = torch.full((2, 4), 0.3)
    >>> sol = net.optimize_input(torch.zeros(2, 4), lambda out, x: (out - target).pow(2).sum(1),
    ...                          step_size=0.3, max_iter=200)
    >>> bool(sol.objective.max() < 1e-6)
    True
"""

from __future__ import annotations

import contextlib
import inspect
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jiio_ext.adapters._deq_intercept import find_deqs, intercept, state_parts, unwrap
from jiio_ext.adapters._torchdeq_core import JIIODEQ as _JIIO_CORE
from jiio_ext.adapters._torchdeq_solver import jiio_solver
from torch import nn

from jiio_ext.forward import solve_forward
from jiio_ext.layout import as_tuple
from jiio_ext.solution import JointSolution
from jiio_ext.solve import solve_joint

__all__ = [
    "JIIODEQ",
    "adjoint_warm_start",
    "input_optimizable",
    "jiio_solver",
    "trajectory_penalty",
]

Objective = Callable[[Any, torch.Tensor], torch.Tensor]


def _torchdeq():
    try:
        import torchdeq
        import torchdeq.core
        import torchdeq.dropout
        import torchdeq.norm
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "jiio_ext.adapters.torchdeq needs torchdeq: pip install 'jiio-ext[deq]'"
        ) from err
    return torchdeq


@dataclass(frozen=True)
class _Call:
    """Structure of one DEQ call of the model's forward: its state's parts."""

    count: int
    is_tuple: bool
    init: tuple[torch.Tensor, ...]


def _solver_info(state: torch.Tensor) -> dict[str, torch.Tensor]:
    zeros = torch.zeros(state.shape[0], device=state.device)
    return {"abs_lowest": zeros, "rel_lowest": zeros, "nstep": zeros, "sradius": zeros}


class _Layer:
    """The model as the core's ``f(z, x) -> (z_next, output)``, one forward per call.

    Each intercepted DEQ call ``deq(func, z_init)`` returns the given joint state instead of
    solving and records ``func(state)``; the next state is those images in call order and
    the aux is the model's output. :meth:`probe` records the calls' structure first.
    """

    def __init__(self, model: nn.Module, input_arg: int | str, args: Sequence, kwargs: dict):
        self.model, self.input_arg = model, input_arg
        self.args, self.kwargs = tuple(args), dict(kwargs)
        self.deqs = find_deqs(model)
        self.calls: list[_Call] = []

    def run(self, model: nn.Module, x: torch.Tensor) -> Any:
        """``model``'s forward with ``x`` in its input position."""
        if isinstance(self.input_arg, str):
            return model(*self.args, **{**self.kwargs, self.input_arg: x})
        positional = list(self.args)
        positional.insert(self.input_arg, x)
        return model(*positional, **self.kwargs)

    def probe(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Record the DEQ calls at ``x``; returns their images (to test that ``x`` reaches them)."""
        self.calls, images = [], []

        def handle(deq, original, func, z_init, args, kwargs):
            parts, is_tuple = state_parts(z_init, len(self.calls))
            init = tuple(p.detach() for p in parts)
            self.calls.append(_Call(len(init), is_tuple, init))
            images.extend(as_tuple(_image(func, init, is_tuple)))
            return [list(init) if is_tuple else init[0]], _solver_info(init[0])

        with intercept(self.deqs, handle):
            self.run(self.model, x)
        return images

    def split(self, flat: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
        """The joint state's parts grouped by DEQ call."""
        out, start = [], 0
        for call in self.calls:
            out.append(tuple(flat[start : start + call.count]))
            start += call.count
        return out

    def __call__(
        self, z: tuple[torch.Tensor, ...], x: torch.Tensor, model: nn.Module | None = None
    ) -> tuple[tuple[torch.Tensor, ...], Any]:
        given, images = self.split(as_tuple(z)), []

        def handle(deq, original, func, z_init, args, kwargs):
            index = len(images)
            if index >= len(self.calls):
                raise RuntimeError(
                    f"model: forward made more DEQ calls ({index + 1}) than when it was probed "
                    f"({len(self.calls)}); the number of DEQ calls must not depend on x"
                )
            state, is_tuple = given[index], self.calls[index].is_tuple
            images.append(as_tuple(_image(func, state, is_tuple)))
            return [list(state) if is_tuple else state[0]], _solver_info(state[0])

        with intercept(self.deqs, handle):
            output = self.run(self.model if model is None else model, x)
        return tuple(t for image in images for t in image), output


def _image(func: Callable, state: tuple[torch.Tensor, ...], is_tuple: bool) -> Any:
    image = func(*state) if is_tuple else func(state[0])
    return tuple(image) if is_tuple else image


def _check_input_arg(model: nn.Module, input_arg: int | str) -> None:
    if isinstance(input_arg, bool) or not isinstance(input_arg, (int, str)):
        raise TypeError(f"input_arg: expected a position or a keyword name, got {input_arg!r}")
    if isinstance(input_arg, str):
        params = inspect.signature(unwrap(model).forward).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        if input_arg not in params and not takes_kwargs:
            raise ValueError(
                f"input_arg: forward() of {type(unwrap(model)).__name__} has no argument "
                f"{input_arg!r}; it takes {list(params)}"
            )


class _DropoutMasks:
    """Keeps torchdeq's variational-dropout masks fixed across the joint iterations."""

    def __init__(self, model: nn.Module) -> None:
        base = _torchdeq().dropout._VariationalDropoutNd
        self.modules = [m for m in model.modules() if isinstance(m, base) and m.training]
        self.masks: dict[int, torch.Tensor] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> _DropoutMasks:
        for module in self.modules:
            self.handles.append(module.register_forward_pre_hook(self._restore))
            self.handles.append(module.register_forward_hook(self._save))
        return self

    def _restore(self, module: nn.Module, inputs: Any) -> None:
        if id(module) in self.masks:
            module.mask = self.masks[id(module)]

    def _save(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.masks[id(module)] = module.mask

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _prepare(
    model: nn.Module,
    x0: torch.Tensor,
    input_arg: int | str,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None,
    z0: Any,
) -> tuple[_Layer, tuple[torch.Tensor, ...]]:
    """The model's layer (DEQ calls probed at ``x0``) and the initial joint state."""
    _check_input_arg(model, input_arg)
    if not isinstance(x0, torch.Tensor) or not torch.is_floating_point(x0) or x0.dim() < 1:
        raise TypeError("x0: expected a batch-first floating-point tensor")
    if x0.shape[0] == 0:
        raise ValueError("x0: empty batch (B = 0); pass at least one sample")
    layer = _Layer(unwrap(model), input_arg, args, kwargs or {})
    if not layer.deqs:
        raise TypeError(
            f"model: {type(unwrap(model)).__name__} contains no torchdeq DEQ module (DEQBase); "
            "use jiio_ext.solve_joint with an explicit f(z, x) instead"
        )
    x_probe = x0.detach().requires_grad_()
    with torch.enable_grad():
        images = [t for t in layer.probe(x_probe) if t.requires_grad]
        if not layer.calls:
            raise ValueError(
                "model: its forward made no DEQ call; input_optimizable needs the DEQ "
                "to run inside forward"
            )
        reached = None
        if images:
            total = sum(t.sum() for t in images)
            (reached,) = torch.autograd.grad(total, x_probe, allow_unused=True)
    if reached is None:
        raise ValueError(
            "x0: the input does not reach the DEQ (f(z, x) does not depend on it); "
            "choose the argument with input_arg="
        )
    probed = [t for call in layer.calls for t in call.init]
    start = (
        probed if z0 is None else list(as_tuple(z0 if isinstance(z0, torch.Tensor) else tuple(z0)))
    )
    if [tuple(t.shape) for t in start] != [tuple(t.shape) for t in probed]:
        raise ValueError(
            f"z0: expected tensors of shapes {[tuple(t.shape) for t in probed]} (the states "
            f"of the model's DEQ calls, in call order), got {[tuple(t.shape) for t in start]}"
        )
    return layer, tuple(start)


def _full_batch_only(masks: _DropoutMasks, x0: torch.Tensor, args, kwargs) -> bool:
    """Whether dropout masks or extra per-sample arguments forbid subset evaluation."""
    batch = x0.shape[0]
    return bool(masks.modules) or any(
        isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch
        for a in (*args, *(kwargs or {}).values())
    )


def _optimize_input(
    self: nn.Module,
    x0: torch.Tensor,
    objective: Objective,
    *,
    constraint=None,
    input_arg: int | str = 0,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    z0: Sequence[Any] | None = None,
    **options: Any,
) -> JointSolution:
    """Optimise the model's input with JIIO (see :func:`input_optimizable`)."""
    torchdeq = _torchdeq()
    masks = _DropoutMasks(unwrap(self))
    if _full_batch_only(masks, x0, args, kwargs):
        # dropout masks and extra per-sample inputs have the full batch: no subset evaluation
        options.setdefault("subset", False)
    grad_mode = options.get("grad")
    with torch.set_grad_enabled(torch.is_grad_enabled() or grad_mode is not None):
        torchdeq.norm.reset_norm(unwrap(self))  # normalised weights with a graph for grad=
    with masks:
        layer, start = _prepare(self, x0, input_arg, args, kwargs, z0)
        solution = solve_joint(
            layer,
            lambda z, x, output: objective(output, x),
            x0,
            z0=start,
            constraint=constraint,
            has_aux=True,
            **options,
        )
        if grad_mode is not None and unwrap(self) is not self:
            # a wrapper (DistributedDataParallel) must see the forward its backward reduces
            with torch.enable_grad():
                _, solution.aux = layer(solution.z, solution.x, model=self)
            solution.f_evals += 1
    solution.info["deq_calls"] = len(layer.calls)
    return solution


def _solve_forward(
    self: nn.Module,
    x: torch.Tensor,
    *,
    input_arg: int | str = 0,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    z0: Sequence[Any] | None = None,
    warm_start: JointSolution | None = None,
    **options: Any,
) -> JointSolution:
    """The model's DEQ fixed points at a fixed input (see :func:`input_optimizable`)."""
    torchdeq = _torchdeq()
    with torch.set_grad_enabled(torch.is_grad_enabled() or options.get("grad") is not None):
        torchdeq.norm.reset_norm(unwrap(self))
    with _DropoutMasks(unwrap(self)):
        layer, start = _prepare(self, x, input_arg, args, kwargs, z0)
        if warm_start is not None:
            shapes = [tuple(t.shape) for t in as_tuple(warm_start.z)]
            if shapes != [tuple(t.shape) for t in start]:
                raise ValueError(
                    f"warm_start: its states have shapes {shapes}, the model's DEQ calls "
                    f"{[tuple(t.shape) for t in start]}"
                )
        solution = solve_forward(layer, x, z0=start, warm_start=warm_start, has_aux=True, **options)
        if options.get("grad") is not None and unwrap(self) is not self:
            with torch.enable_grad():
                _, solution.aux = layer(solution.z, solution.x, model=self)
            solution.f_evals += 1
    solution.info["deq_calls"] = len(layer.calls)
    return solution


def input_optimizable(target: Any) -> Any:
    """Give a torchdeq model (class or instance) ``optimize_input`` and ``solve_forward``.

    ``model.optimize_input(x0, objective, *, constraint=None, input_arg=0, args=(),
    kwargs=None, z0=None, **solve_options) -> JointSolution`` solves
    ``min_x objective(model(x), x)`` over ``x`` in ``constraint`` with
    :func:`jiio_ext.solve_joint` (``solve_options`` are its options: ``step_size``,
    ``step_rule``, ``max_iter``, ``grad``, ``throw``, ...). ``objective(output, x)`` sees the
    model's own output and returns per-sample losses ``(B,)``; it may close over per-sample
    data. ``input_arg`` picks which positional argument (int) or keyword (str) of ``forward``
    is ``x``; ``args``/``kwargs`` are the other arguments. The model is the core's
    ``f(z, x) -> (z_next, output)`` (``has_aux=True``), so the solution carries the model's
    output at ``x*`` in ``solution.aux`` (also ``solution.output``; differentiable with
    respect to the parameters when ``grad="envelope"`` or ``"implicit"``).

    ``model.solve_forward(x, *, input_arg=0, args=(), kwargs=None, z0=None, warm_start=None,
    **options) -> JointSolution`` solves the model's DEQs at a fixed ``x`` with
    :func:`jiio_ext.solve_forward` (``options``: ``max_iter``, ``rtol``, ``grad="envelope"``,
    ...); ``warm_start`` is an earlier solution (its states and adjoint).

    Works with both torchdeq cores, any solver settings, tensor and tuple states, several DEQ
    calls in one forward, weight/spectral norm (``reset_norm`` is applied), variational
    dropout (masks held fixed), train and eval mode, and models wrapped in
    ``DistributedDataParallel``. The model's samples must not interact (no batch statistics).

    Args:
        target: an ``nn.Module`` subclass (decorated in place) or instance.

    Returns:
        The same class or instance.

    Raises:
        TypeError: ``target`` is neither a module class nor a module instance.

    Example:
        >>> import torch
        >>> from torchdeq import get_deq
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.deq = get_deq()
        ...     def forward(self, x):
        ...         return self.deq(lambda z: 0.5 * torch.tanh(z) + x, torch.zeros_like(x))[0][-1]
        >>> net = input_optimizable(Net())
        >>> sol = net.solve_forward(torch.ones(2, 3), rtol=1e-8)
        >>> bool(torch.allclose(sol.output, net(torch.ones(2, 3)), atol=1e-5))
        True
    """
    if isinstance(target, type) and issubclass(target, nn.Module):
        target.optimize_input = _optimize_input
        target.solve_forward = _solve_forward
        return target
    if isinstance(target, nn.Module):
        if not find_deqs(target):
            raise TypeError(
                f"model: {type(unwrap(target)).__name__} contains no torchdeq DEQ module "
                "(DEQBase); use jiio_ext.solve_joint with an explicit f(z, x) instead"
            )
        object.__setattr__(target, "optimize_input", types.MethodType(_optimize_input, target))
        object.__setattr__(target, "solve_forward", types.MethodType(_solve_forward, target))
        return target
    raise TypeError(
        f"input_optimizable: expected a torch.nn.Module class or instance, got {target!r}"
    )


@contextlib.contextmanager
def adjoint_warm_start(model: nn.Module, solution: JointSolution) -> Iterator[None]:
    """Inside this block, the model's ``'jiio'`` DEQ calls start their backward from ``μ*``.

    Every forward of ``model`` in the block hands each ``JIIODEQ`` call its part of
    ``solution.mu`` (the parts in DEQ-call order, as ``optimize_input`` returns them) as
    ``adjoint_warm_start``; the implicit backward then starts from it, rescaled to the
    incoming gradient, which makes it nearly exact when the training loss is the inner
    objective. Other DEQ cores are called unchanged. Nothing is stored on the modules.

    Args:
        model: the model that produced ``solution`` (decorated or not).
        solution: a solution of ``model.optimize_input`` (or ``solve_forward``).

    Example:
        >>> import torch
        >>> from torchdeq import get_deq
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(3, 3)
        ...         self.deq = get_deq(core="jiio", ift=True, f_max_iter=40)
        ...     def forward(self, x):
        ...         cell = lambda z: torch.tanh(0.5 * self.lin(z)) + x
        ...         return self.deq(cell, torch.zeros_like(x))[0][-1]
        >>> net = input_optimizable(Net())
        >>> sol = net.optimize_input(torch.zeros(2, 3), lambda out, x: out.pow(2).sum(1),
        ...                          max_iter=30)
        >>> with adjoint_warm_start(net, sol):
        ...     loss = net(sol.x).pow(2).sum()
        >>> loss.backward()
        >>> "adjoint_warm_start" in vars(net.deq)
        False
    """
    if not isinstance(solution, JointSolution):
        raise TypeError(f"solution: expected a JointSolution, got {type(solution).__name__}")
    mu = tuple(t.detach() for t in as_tuple(solution.mu))
    position = 0

    def handle(deq, original, func, z_init, args, kwargs):
        nonlocal position
        parts, _ = state_parts(z_init)
        if position + len(parts) > len(mu):
            position = 0  # the next forward of the model: its calls start again
        take = mu[position : position + len(parts)]
        position += len(parts)
        if isinstance(deq, JIIODEQ) and "adjoint_warm_start" not in kwargs:
            batch = parts[0].shape[0]
            if all(t.shape[0] == batch for t in take):
                warm = torch.cat([t.reshape(batch, -1) for t in take], dim=1)
                kwargs = {**kwargs, "adjoint_warm_start": warm}
        return original(func, z_init, *args, **kwargs)

    with intercept(find_deqs(model), handle):
        yield


def trajectory_penalty(
    solution: JointSolution, *, iteration: int | None = None, n_probes: int = 2
) -> torch.Tensor:
    """Jacobian penalty of the model's DEQ layers at a trajectory point of an input solve.

    Args:
        solution: a solution of ``model.optimize_input(..., trajectory=[k])`` (or of
            ``model.solve_forward``: the penalty at its fixed point).
        iteration: recorded iteration (default: the first one, or the solution itself).
        n_probes: Hutchinson probes.

    Returns:
        ``(B,)`` penalties with a graph to the model's parameters.

    Raises:
        ValueError: for a solution without its layer (``solution.layer is None``).

    Example:
        >>> import torch
        >>> from torchdeq import get_deq
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin, self.deq = torch.nn.Linear(3, 3), get_deq()
        ...     def forward(self, x):
        ...         cell = lambda z: torch.tanh(self.lin(z)) + x
        ...         return self.deq(cell, torch.zeros_like(x))[0][-1]
        >>> net = input_optimizable(Net())
        >>> sol = net.optimize_input(torch.zeros(2, 3), lambda out, x: out.pow(2).sum(1),
        ...                          max_iter=20, trajectory=[5])
        >>> trajectory_penalty(sol).shape
        torch.Size([2])
    """
    from jiio_ext.regularize import trajectory_penalty as core_penalty

    if not isinstance(solution, JointSolution) or solution.layer is None:
        raise ValueError("solution: not produced by optimize_input (no DEQ layer recorded)")
    return core_penalty(solution.layer, solution, iteration=iteration, n_probes=n_probes)


def _register() -> type:
    """Register ``'jiio'`` with torchdeq once (a second import of this file keeps the first)."""
    torchdeq = _torchdeq()
    existing = torchdeq.core._core.get("jiio")
    if existing is not None and existing.__name__ == "JIIODEQ":
        return existing
    torchdeq.core.register_deq("jiio", _JIIO_CORE)
    torchdeq.solver.register_solver("jiio", jiio_solver)
    return _JIIO_CORE


JIIODEQ = _register()
