"""torchdeq adapter: one decorator makes a torchdeq model's inputs optimisable with JIIO.

``input_optimizable`` finds the model's ``torchdeq.core.DEQBase`` submodules. During
``model.optimize_input(x0, objective)`` every joint iteration calls the model's own forward on
the current input; each intercepted DEQ call ``deq(func, z_init)`` returns the current joint
state (instead of solving) and records ``func(z)``, so one forward pass yields both ``f(z, x)``
and the model's output, and the core's :func:`jiio_ext.solve_joint` takes one VJP for the
adjoint and the input gradient. Outside ``optimize_input`` the model is untouched.

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

import inspect
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from jiio_ext.grad import EnvelopeGrad
from jiio_ext.layout import as_tuple
from jiio_ext.solution import JointSolution
from jiio_ext.solve import solve_joint
from jiio_ext.solvers import Anderson, BestSoFar, fixed_point
from jiio_ext.validate import check_positive

__all__ = ["JIIODEQ", "input_optimizable", "jiio_solver", "trajectory_penalty"]

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


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def _deq_modules(model: nn.Module) -> list[nn.Module]:
    base = _torchdeq().core.DEQBase
    return [m for m in _unwrap(model).modules() if isinstance(m, base)]


def _tree_map(fn: Callable, *trees: Any) -> Any:
    """Apply ``fn`` to the tensor leaves of matching tensors / tuples / lists / dicts."""
    head = trees[0]
    if isinstance(head, torch.Tensor):
        return fn(*trees)
    if isinstance(head, (tuple, list)):
        return type(head)(_tree_map(fn, *parts) for parts in zip(*trees))
    if isinstance(head, dict):
        return {key: _tree_map(fn, *(tree[key] for tree in trees)) for key in head}
    return head


class _CallRecord:
    """Structure of one DEQ call: a tensor state or a tuple of tensors."""

    def __init__(self, z_init: Any, index: int) -> None:
        if isinstance(z_init, torch.Tensor):
            parts = (z_init,)
            self.is_tuple = False
        elif (
            isinstance(z_init, (tuple, list))
            and z_init
            and all(isinstance(t, torch.Tensor) for t in z_init)
        ):
            parts = tuple(z_init)
            self.is_tuple = True
        else:
            raise TypeError(
                f"model: DEQ call {index} got a state of type {type(z_init).__name__}; "
                "input_optimizable needs a tensor or a tuple/list of tensors"
            )
        self.count = len(parts)
        self.init = tuple(p.detach() for p in parts)


class _Session:
    """Intercepts the DEQ calls of one model while ``optimize_input`` runs.

    Modes: ``probe`` records the calls' structure and returns the initial states;
    ``joint`` returns the given joint states and records ``func(z)``; ``replay`` returns the
    given states without evaluating ``func``.
    """

    def __init__(self, deqs: Sequence[nn.Module]) -> None:
        self.deqs = list(deqs)
        self.mode = "probe"
        self.records: list[_CallRecord] = []
        self.states: list[tuple[torch.Tensor, ...]] = []
        self.images: list[tuple[torch.Tensor, ...]] = []
        self.calls = 0
        self._saved: list[tuple[nn.Module, Any]] = []

    def __enter__(self) -> _Session:
        self.depth = getattr(self, "depth", 0) + 1
        if self.depth == 1:  # re-entrant: f may run inside or outside optimize_input
            for deq in self.deqs:
                self._saved.append((deq, deq.__dict__.get("forward")))
                deq.forward = types.MethodType(self._make_intercept(), deq)
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth:
            return
        for deq, previous in self._saved:
            if previous is None:
                del deq.forward
            else:
                deq.forward = previous
        self._saved.clear()

    def _make_intercept(self) -> Callable:
        session = self

        def intercept(deq: nn.Module, func: Callable, z_init: Any, *args: Any, **kwargs: Any):
            return session.handle(deq, func, z_init)

        return intercept

    def start(self, mode: str, states: list[tuple[torch.Tensor, ...]] | None = None) -> None:
        self.mode, self.calls, self.images = mode, 0, []
        if mode == "probe":
            self.records = []
        if states is not None:
            self.states = states

    def handle(self, deq: nn.Module, func: Callable, z_init: Any):
        index = self.calls
        self.calls += 1
        if self.mode == "probe":
            record = _CallRecord(z_init, index)
            record.deq = deq
            self.records.append(record)
            state = record.init
        else:
            if index >= len(self.records):
                raise RuntimeError(
                    f"model: forward made more DEQ calls ({index + 1}) than when it was probed "
                    f"({len(self.records)}); the number of DEQ calls must not depend on x"
                )
            record = self.records[index]
            state = self.states[index]
        if self.mode != "replay":
            image = func(*state) if record.is_tuple else func(state[0])
            self.images.append(tuple(as_tuple(tuple(image) if record.is_tuple else image)))
        z = list(state) if record.is_tuple else state[0]
        batch = state[0].shape[0]
        zeros = torch.zeros(batch, device=state[0].device)
        info = {"abs_lowest": zeros, "rel_lowest": zeros, "nstep": zeros, "sradius": zeros}
        return [z], info

    def split(self, flat: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, ...]]:
        out, start = [], 0
        for record in self.records:
            out.append(tuple(flat[start : start + record.count]))
            start += record.count
        return out


def _call_model(model: nn.Module, x: torch.Tensor, input_arg: int | str, args, kwargs) -> Any:
    if isinstance(input_arg, str):
        return model(*args, **{**kwargs, input_arg: x})
    positional = list(args)
    positional.insert(input_arg, x)
    return model(*positional, **kwargs)


def _check_input_arg(model: nn.Module, input_arg: int | str) -> None:
    if isinstance(input_arg, bool) or not isinstance(input_arg, (int, str)):
        raise TypeError(f"input_arg: expected a position or a keyword name, got {input_arg!r}")
    if isinstance(input_arg, str):
        params = inspect.signature(_unwrap(model).forward).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        if input_arg not in params and not takes_kwargs:
            raise ValueError(
                f"input_arg: forward() of {type(_unwrap(model)).__name__} has no argument "
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
    kwargs = dict(kwargs or {})
    _check_input_arg(self, input_arg)
    if not isinstance(x0, torch.Tensor) or not torch.is_floating_point(x0) or x0.dim() < 1:
        raise TypeError("x0: expected a batch-first floating-point tensor")
    if x0.shape[0] == 0:
        raise ValueError("x0: empty batch (B = 0); pass at least one sample")
    deqs = _deq_modules(self)
    if not deqs:
        raise TypeError(
            f"model: {type(_unwrap(self)).__name__} contains no torchdeq DEQ module (DEQBase); "
            "use jiio_ext.solve_joint with an explicit f(z, x) instead"
        )
    inner = _unwrap(self)
    batch = x0.shape[0]
    per_sample_args = any(
        isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch
        for a in (*args, *kwargs.values())
    )
    masks = _DropoutMasks(inner)
    if masks.modules or per_sample_args:
        # dropout masks and extra per-sample inputs have the full batch: no subset evaluation
        options.setdefault("subset", False)
    torchdeq.norm.reset_norm(inner)
    grad_mode = options.get("grad")

    with _Session(deqs) as session, masks:
        # probe: structure of the DEQ calls, and whether x reaches them
        x_probe = x0.detach().requires_grad_()
        session.start("probe")
        with torch.enable_grad():
            _call_model(inner, x_probe, input_arg, args, kwargs)
            if not session.records:
                raise ValueError(
                    "model: its forward made no DEQ call; input_optimizable needs the DEQ "
                    "to run inside forward"
                )
            images = [t for image in session.images for t in image if t.requires_grad]
            reached = None
            if images:
                total = sum(t.sum() for t in images)
                (reached,) = torch.autograd.grad(total, x_probe, allow_unused=True)
        if reached is None:
            raise ValueError(
                "x0: the input does not reach the DEQ (f(z, x) does not depend on it); "
                "choose the argument with input_arg="
            )
        probed = [t for r in session.records for t in r.init]
        start = (
            probed
            if z0 is None
            else list(as_tuple(z0 if isinstance(z0, torch.Tensor) else tuple(z0)))
        )
        if [tuple(t.shape) for t in start] != [tuple(t.shape) for t in probed]:
            raise ValueError(
                f"z0: expected tensors of shapes {[tuple(t.shape) for t in probed]} (the states "
                f"of the model's DEQ calls, in call order), got {[tuple(t.shape) for t in start]}"
            )
        full: dict[str, Any] = {}

        def f(z: tuple[torch.Tensor, ...], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with session:
                session.start("joint", session.split(z))
                full["output"] = _call_model(inner, x, input_arg, args, kwargs)
                return tuple(t for image in session.images for t in image)

        def joint_objective(z, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            output = full["output"]
            if rows.numel() == batch:
                full["output_all"] = _tree_map(lambda t: t.detach(), output)
                full["x_all"] = x.detach()
                return _checked(objective(output, x), batch)

            def merge(whole: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
                per_sample = (
                    whole.dim() >= 1
                    and whole.shape[0] == batch
                    and part.dim() >= 1
                    and part.shape[0] == rows.numel()
                )
                return whole.index_copy(0, rows, part) if per_sample else part

            merged = _tree_map(merge, full["output_all"], output)
            x_all = full["x_all"].index_copy(0, rows, x)
            loss = _checked(objective(merged, x_all), batch).index_select(0, rows)
            full["output_all"] = _tree_map(lambda t: t.detach(), merged)
            full["x_all"] = x_all.detach()
            return loss

        solution = solve_joint(
            f,
            joint_objective,
            x0,
            z0=tuple(start),
            targets=torch.arange(batch, device=x0.device),
            constraint=constraint,
            **options,
        )
        # the JIIO core's implicit backward starts from the joint adjoint of its own call
        for record, mu in zip(session.records, session.split(as_tuple(solution.mu))):
            if hasattr(record.deq, "adjoint_warm_start"):
                record.deq.adjoint_warm_start = torch.cat(
                    [t.reshape(batch, -1) for t in mu], dim=1
                ).detach()
        # the model's output at the solution (attached to θ when a gradient mode was asked)
        if grad_mode is not None:
            torchdeq.norm.reset_norm(inner)
        session.start("replay", session.split(as_tuple(solution.z)))
        with torch.set_grad_enabled(grad_mode is not None):
            target_model = self if grad_mode is not None else inner
            solution.output = _call_model(target_model, solution.x, input_arg, args, kwargs)
    solution.info["f"] = f
    solution.info["deq_calls"] = len(session.records)
    return solution


def _checked(loss: Any, batch: int) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or tuple(loss.shape) != (batch,):
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"objective: expected per-sample losses of shape ({batch},), got {got}")
    return loss


def input_optimizable(target: Any) -> Any:
    """Give a torchdeq model (class or instance) an ``optimize_input`` method.

    ``model.optimize_input(x0, objective, *, constraint=None, input_arg=0, args=(),
    kwargs=None, z0=None, **solve_options) -> JointSolution`` solves
    ``min_x objective(model(x), x)`` over ``x`` in ``constraint`` with
    :func:`jiio_ext.solve_joint` (``solve_options`` are its options: ``step_size``,
    ``step_rule``, ``max_iter``, ``grad``, ``throw``, ...). ``objective(output, x)`` sees the
    model's own output and returns per-sample losses ``(B,)``; it may close over per-sample
    data. ``input_arg`` picks which positional argument (int) or keyword (str) of ``forward``
    is ``x``; ``args``/``kwargs`` are the other arguments. The solution carries the model's
    output at ``x*`` in ``solution.output`` (differentiable with respect to the parameters
    when ``grad="envelope"`` or ``"implicit"``).

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
        >>> hasattr(net, "optimize_input")
        True
    """
    if isinstance(target, type) and issubclass(target, nn.Module):
        target.optimize_input = _optimize_input
        return target
    if isinstance(target, nn.Module):
        if not _deq_modules(target):
            raise TypeError(
                f"model: {type(_unwrap(target)).__name__} contains no torchdeq DEQ module "
                "(DEQBase); use jiio_ext.solve_joint with an explicit f(z, x) instead"
            )
        object.__setattr__(target, "optimize_input", types.MethodType(_optimize_input, target))
        return target
    raise TypeError(
        f"input_optimizable: expected a torch.nn.Module class or instance, got {target!r}"
    )


def trajectory_penalty(
    solution: JointSolution, *, iteration: int | None = None, n_probes: int = 2
) -> torch.Tensor:
    """Jacobian penalty of the model's DEQ layers at a trajectory point of an input solve.

    Args:
        solution: a solution of ``model.optimize_input(..., trajectory=[k])``.
        iteration: recorded iteration (default: the first one, or the solution itself).
        n_probes: Hutchinson probes.

    Returns:
        ``(B,)`` penalties with a graph to the model's parameters.

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

    if "f" not in solution.info:
        raise ValueError("solution: not produced by optimize_input (no DEQ layer recorded)")
    return core_penalty(solution.info["f"], solution, iteration=iteration, n_probes=n_probes)


def jiio_solver(
    func: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    max_iter: int = 50,
    tol: float = 1e-3,
    stop_mode: str = "abs",
    indexing: Sequence[int] | None = None,
    m: int = 5,
    lam: float = 1e-4,
    kind: str = "II",
    safeguard: float | None = 10.0,
    **kwargs: Any,
):
    """This package's safeguarded per-sample Anderson under torchdeq's solver contract.

    Registered in torchdeq as ``'jiio'`` (``get_deq(f_solver='jiio', b_solver='jiio')``).
    Each sample stops updating once its residual meets ``tol`` (``stop_mode='abs'``:
    ``||f(z) - z|| <= tol``; ``'rel'``: relative to ``||z||``, while ``rel_trace`` reports it
    relative to ``||f(z)||`` as torchdeq does); the solve ends when all have. A sample that
    runs out of budget returns its lowest-residual iterate, as torchdeq's solvers do.

    Args:
        func: the fixed-point map on tensors shaped like ``x0``.
        x0: initial state ``(B, ...)``.
        max_iter: iteration budget.
        tol: tolerance.
        stop_mode: ``'abs'`` or ``'rel'``.
        indexing: iteration counts at which to return intermediate states.
        m: Anderson memory.
        lam: ridge regularisation.
        kind: ``'II'`` (default) or ``'I'`` Anderson (see :class:`~jiio_ext.solvers.Anderson`).
        safeguard: residual-growth factor that rejects an Anderson step (``None``: off).
        **kwargs: other torchdeq solver options (ignored, as torchdeq's own solvers do).

    Returns:
        ``(z, states_at_indexing, info)`` with torchdeq's ``SolverStat`` keys
        (``abs_lowest``, ``rel_lowest``, ``abs_trace``, ``rel_trace``, ``nstep``,
        ``sradius``) plus ``status`` (per-sample :class:`~jiio_ext.solution.Status`).

    Example:
        >>> import torch
        >>> z, _, info = jiio_solver(lambda z: 0.5 * z + 1.0, torch.zeros(3, 2), tol=1e-8)
        >>> torch.allclose(z, torch.full((3, 2), 2.0)), info["nstep"].tolist()
        (True, [5.0, 5.0, 5.0])
    """
    from torchdeq.solver.stat import SolverStat

    if stop_mode not in ("abs", "rel"):
        raise ValueError(f"stop_mode: expected 'abs' or 'rel', got {stop_mode!r}")
    if not isinstance(x0, torch.Tensor) or x0.dim() < 1 or x0.shape[0] == 0:
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"x0: expected a non-empty batch (B, ...), got {shape}")
    check_positive(tol, "tol", allow_zero=True)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected an integer >= 1, got {max_iter!r}")
    batch = x0.shape[0]
    flat0 = x0.reshape(batch, -1)
    dim = flat0.shape[1]

    def step(s: torch.Tensor, index: torch.Tensor, k: int):
        mapped = func(s.view_as(x0)).reshape(batch, -1)
        return mapped, {"fnorm": torch.linalg.vector_norm(mapped, dim=1)}

    wanted = sorted({int(i) for i in (indexing or [])})
    with torch.no_grad():  # torchdeq's solvers run without a graph
        result = fixed_point(
            step,
            flat0,
            # like torchdeq's solvers, a sample out of budget returns its lowest residual
            solver=BestSoFar(
                Anderson(memory=m, kind=kind, ridge=lam, safeguard=safeguard),
                score=lambda res, state_rms, aux: res[:, 0],
            ),
            max_iter=max_iter,
            rtol=tol if stop_mode == "rel" else 0.0,
            atol=tol / dim**0.5 if stop_mode == "abs" else 0.0,
            subset=False,
            snapshot_at=[i for i in wanted if 0 < i < max_iter],
        )
    abs_trace = result.traces["residual_b0"] * dim**0.5  # (T, B) RMS -> norm
    abs_trace = _fill_forward(abs_trace).transpose(0, 1)
    fnorm = _fill_forward(result.traces["fnorm"]).transpose(0, 1)
    rel_trace = abs_trace / fnorm.clamp_min(torch.finfo(abs_trace.dtype).tiny)
    states = [(result.snapshots.get(i, result.state)).view_as(x0) for i in wanted if i > 0]
    info = SolverStat(
        abs_lowest=abs_trace.min(dim=1).values,
        rel_lowest=rel_trace.min(dim=1).values,
        abs_trace=abs_trace,
        rel_trace=rel_trace,
        nstep=result.nstep.to(x0.dtype),
    )
    info["status"] = result.status
    return result.state.view_as(x0), states, info


def _fill_forward(trace: torch.Tensor) -> torch.Tensor:
    """Replace NaN (frozen samples) by the sample's last value, along the time axis."""
    out = trace.clone()
    for k in range(1, out.shape[0]):
        out[k] = torch.where(torch.isnan(out[k]), out[k - 1], out[k])
    return out


def _make_jiio_core():
    """Build the ``JIIODEQ`` class on top of torchdeq's ``DEQSliced`` (lazily imported)."""
    core = _torchdeq().core
    from torchdeq.utils.layer_utils import deq_decorator

    class JIIODEQ(core.DEQSliced):
        """torchdeq's sliced DEQ core with a warm-started IFT backward and differentiable eval.

        Registered in torchdeq as ``'jiio'`` (``get_deq(core='jiio', ...)``). In ordinary
        training forwards without ``ift``, or with several states (``n_states`` /
        ``indexing``), it is torchdeq's ``DEQSliced``. With ``ift=True`` its
        implicit backward starts from the adjoint of the last joint input solve
        (``optimize_input`` stores it), rescaled to the incoming gradient, instead of from
        zero. In eval mode with gradients enabled (``differentiable_eval=True``, the default)
        it returns the fixed point with an implicit backward, so attacks and input gradients
        work on a model in ``eval()``; torchdeq's own eval returns a fixed point with no graph.

        Example:
            >>> import torch
            >>> from torchdeq import get_deq
            >>> deq = get_deq(core="jiio", f_solver="anderson", f_max_iter=50, f_tol=1e-6)
            >>> type(deq).__name__
            'JIIODEQ'
            >>> cell = torch.nn.Linear(3, 3)
            >>> x = torch.randn(2, 3, requires_grad=True)
            >>> _ = deq.eval()
            >>> z_out, info = deq(lambda z: torch.tanh(0.5 * cell(z) + x), torch.zeros(2, 3))
            >>> z_out[-1].sum().backward()  # an implicit backward even in eval mode
            >>> x.grad.shape
            torch.Size([2, 3])
        """

        def __init__(self, args=None, **kwargs: Any) -> None:
            super().__init__(args, **kwargs)
            self.ift = bool(
                kwargs.get("ift", False)
                or kwargs.get("hook_ift", False)
                or self.args.get("ift", False)
                or self.args.get("hook_ift", False)
            )
            self.differentiable_eval = bool(self.args.get("differentiable_eval", True))
            self.adjoint_warm_start: torch.Tensor | None = None

        def _backward_mode(self, dim: int) -> EnvelopeGrad:
            absolute = self.b_stop_mode == "abs"
            return EnvelopeGrad(
                max_iter=self.b_max_iter,
                rtol=0.0 if absolute else self.b_tol,
                atol=self.b_tol / dim**0.5 if absolute else 0.0,
            )

        def forward(
            self,
            func,
            z_star,
            solver_kwargs=None,
            sradius_mode=False,
            backward_writer=None,
            **kwargs,
        ):
            """Like ``DEQSliced.forward``; see the class docstring for the differences."""
            # several states (n_states / indexing) keep torchdeq's own segmented gradients
            single_state = len(self.indexing) == 1
            want_implicit = torch.is_grad_enabled() and (
                (self.training and self.ift and single_state)
                or (not self.training and self.differentiable_eval)
            )
            if not want_implicit:
                return super().forward(
                    func, z_star, solver_kwargs, sradius_mode, backward_writer, **kwargs
                )
            solver_kwargs = dict(solver_kwargs or {})
            deq_func, z_init = deq_decorator(func, z_star, no_stat=self.no_stat)
            budget = self.f_max_iter if self.training else self.eval_f_max_iter
            with torch.no_grad():
                z_fixed, info = self._solve_fixed_point(
                    deq_func,
                    z_init,
                    f_max_iter=solver_kwargs.pop("f_max_iter", budget),
                    solver_kwargs=solver_kwargs,
                )
            z_fixed = deq_func.detach(z_fixed)
            warm = self.adjoint_warm_start
            if warm is not None and warm.numel() != z_fixed.numel():
                warm = None
            mode = self._backward_mode(z_fixed[0].numel())
            self.last_backward_mode = mode
            z_out = mode.attach_fixed_point(deq_func, z_fixed, warm_start=warm)
            if not self.training:
                info["sradius"] = (
                    self._sradius(deq_func, z_fixed) if sradius_mode else (torch.zeros(1))
                )
            return [deq_func.vec2list(z_out)], info

    return JIIODEQ


def _register() -> type:
    """Register ``'jiio'`` with torchdeq once (a second import of this file keeps the first)."""
    torchdeq = _torchdeq()
    existing = torchdeq.core._core.get("jiio")
    if existing is not None and existing.__name__ == "JIIODEQ":
        return existing
    jiio_core = _make_jiio_core()
    torchdeq.core.register_deq("jiio", jiio_core)
    torchdeq.solver.register_solver("jiio", jiio_solver)
    return jiio_core


JIIODEQ = _register()
