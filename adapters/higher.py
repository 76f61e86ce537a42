"""higher adapter: MAML-style inner loops solved as one joint fixed point, exact meta-gradient.

``innerloop_ctx(model, opt, ...)`` has the call pattern of ``higher.innerloop_ctx``::

    with innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
        for _ in range(n_inner):
            diffopt.step(F.cross_entropy(fnet(x_spt), y_spt))
        F.cross_entropy(fnet(x_qry), y_qry).backward()

The adapted quantity ``φ`` is the set of parameters held by ``opt`` (e.g. a head or FiLM
layers) or, with ``context=``, a task-context vector passed to ``forward`` as a keyword. The
inner problem ``min_φ  support_loss(φ) + prox/2 ||φ - φ₀||²`` (iMAML's proximal term toward
the meta-parameters ``φ₀``; for a context, the L2 term toward its initial value) is solved as
one fixed point of the augmented map over ``(z, φ, μ)``: the DEQ states of the support
forward, the adapted quantity and the DEQ adjoint (see ``docs/meta.md``).

**What one ``diffopt.step(loss)`` does.** The support forward ``fnet(x_spt)`` evaluates each
DEQ layer *once* at the current joint state ``z`` (no inner DEQ solve) and returns the model's
output at ``f(z)``; ``diffopt.step`` takes one vector-Jacobian product of ``[loss + prox, f(z)]``
with ``[1, μ]``, which gives the φ-gradient and the adjoint update together, and applies one
Anderson-accelerated step of the augmented map ``z ← z + α_z (f(z) − z)``,
``μ ← μ + α_μ (g_z − μ)``, ``φ ← φ − lr · g_φ`` (``lr`` from ``opt``). So ``n_inner`` steps are
``n_inner`` joint iterations, each costing one ``f`` evaluation and one VJP on the support set
(the first support forward also solves the DEQ once, with the model's own solver, as a warm
start). The query forward ``fnet(x_qry)`` solves the DEQ with the model's solver at the adapted
``φ`` and differentiates it implicitly.

**Meta-gradient.** Backward from the query loss differentiates through the inner *solution*,
not the loop: ``λ = (∂F/∂s)ᵀ λ + v`` is solved at the last joint state with Hessian-vector
products of the support objective (implicit function theorem on the augmented fixed point),
so the DEQ's own implicit dependence is included and memory does not grow with ``n_inner``.
``first_order=True`` gives the first-order (FOMAML) gradient; ``track_higher_grads=False``
none. Built on ``torch.func.functional_call``; higher itself is not needed.

Example:
    >>> import torch
    >>> from torch.nn import functional as F
    >>> from jiio_ext.adapters.higher import innerloop_ctx
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> inner_opt = torch.optim.SGD(net[2].parameters(), lr=0.5)
    >>> x_spt, y_spt = torch.randn(6, 3), torch.tensor([0, 1] * 3)
    >>> with innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
    ...     for _ in range(20):
    ...         _ = diffopt.step(F.cross_entropy(fnet(x_spt), y_spt))
    ...     F.cross_entropy(fnet(torch.randn(4, 3)), torch.tensor([0, 1, 0, 1])).backward()
    >>> net[0].weight.grad.shape
    torch.Size([8, 3])
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from jiio_ext.layout import Layout, as_tuple
from jiio_ext.solution import Status
from jiio_ext.solvers import Anderson, fixed_point

__all__ = ["DifferentiableJointOptimizer", "JointFunctionalModel", "innerloop_ctx"]


class _Gate:
    """Switches the implicit-backward hooks of one forward off while the adapter differentiates."""

    def __init__(self) -> None:
        self.active = True

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        self.active = False
        try:
            yield
        finally:
            self.active = True


@dataclass
class _Backward:
    """Settings of the adjoint fixed points solved in backward passes."""

    max_iter: int
    rtol: float
    atol: float

    def solve(self, vjp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, what: str):
        """Solve ``w = vjp(w) + v`` row by row; warn about rows that did not converge."""
        result = fixed_point(
            lambda w, index, k: (vjp(w) + v, {}),
            v,
            solver=Anderson(memory=5, kind="II"),
            max_iter=self.max_iter,
            rtol=self.rtol,
            atol=self.atol,
            subset=False,
            balance=False,
        )
        failed = int((result.status != Status.CONVERGED).sum())
        if failed:
            import warnings

            warnings.warn(
                f"{what}: adjoint fixed point did not converge for {failed} row(s) in "
                f"{self.max_iter} iterations",
                RuntimeWarning,
                stacklevel=4,
            )
        return result.state


def _attach_ift(
    state: tuple[torch.Tensor, ...],
    image: tuple[torch.Tensor, ...],
    gate: _Gate,
    backward: _Backward,
) -> tuple[torch.Tensor, ...]:
    """``image = f(state)`` at a fixed point, with an implicit (IFT) backward per DEQ sample."""
    layout = Layout.of(image)
    flat = layout.flatten(image)
    if not flat.requires_grad:
        return image
    batch = flat.shape[0]

    def vjp(w: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            grads = torch.autograd.grad(
                image, state, layout.unflatten(w), retain_graph=True, allow_unused=True
            )
        grads = tuple(torch.zeros_like(s) if g is None else g for g, s in zip(grads, state))
        return Layout.of(grads).flatten(grads)

    def hook(v: torch.Tensor) -> torch.Tensor | None:
        if not gate.active:
            return None
        return backward.solve(vjp, v.reshape(batch, -1), "DEQ backward").view_as(v)

    attached = flat.view_as(flat)
    attached.register_hook(hook)
    parts = layout.unflatten(attached)
    return as_tuple(parts)


@dataclass
class _Forward:
    """What one ``fnet`` forward recorded: per task, per DEQ-call part, the state and f(state)."""

    support: torch.Tensor | None
    mode: str
    gate: _Gate
    z: list[list[torch.Tensor]] = field(default_factory=list)
    images: list[list[torch.Tensor]] = field(default_factory=list)
    phi: list[list[torch.Tensor]] = field(default_factory=list)
    total: torch.Tensor | None = None


class _Tap:
    """Intercepts the torchdeq DEQ calls of the model during ``fnet`` forwards.

    ``solve`` mode runs the DEQ's own solver without a graph and returns ``f(z*)`` with an
    implicit backward; ``joint`` mode returns ``f(z)`` at the given joint state (no solve).
    """

    def __init__(self, deqs: Sequence[nn.Module], backward: _Backward) -> None:
        self.deqs = list(deqs)
        self.backward = backward
        self.mode = "solve"
        self.given: list[torch.Tensor] = []
        self.states: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []
        self.gate = _Gate()

    @contextlib.contextmanager
    def active(self, mode: str, given: list[torch.Tensor], gate: _Gate) -> Iterator[None]:
        self.mode, self.given, self.gate = mode, list(given), gate
        self.states, self.images = [], []
        saved = []
        for deq in self.deqs:
            saved.append((deq, deq.__dict__.get("forward"), deq.forward))
            deq.forward = types.MethodType(self._intercept(deq.forward), deq)
        try:
            yield
        finally:
            for deq, previous, _ in saved:
                if previous is None:
                    del deq.forward
                else:
                    deq.forward = previous

    def _intercept(self, original: Callable) -> Callable:
        tap = self

        def forward(deq: nn.Module, func: Callable, z_init: Any, *args: Any, **kwargs: Any):
            return tap.handle(original, func, z_init, args, kwargs)

        return forward

    def handle(self, original: Callable, func: Callable, z_init: Any, args, kwargs):
        is_tuple = not isinstance(z_init, torch.Tensor)
        count = len(z_init) if is_tuple else 1
        if self.mode == "joint":
            start = len(self.states)
            if start + count > len(self.given):
                raise RuntimeError(
                    "model: the support forward made more DEQ calls than the first one; the "
                    "number and shapes of DEQ calls must not depend on the adapted quantity"
                )
            state = tuple(self.given[start : start + count])
            info: dict[str, Any] = {}
        else:
            with torch.no_grad():
                solved, info = original(func, z_init, *args, **kwargs)
            state = tuple(t.detach().requires_grad_() for t in as_tuple(_as_state(solved[-1])))
        inits = as_tuple(_as_state(z_init))
        if tuple(s.shape for s in state) != tuple(t.shape for t in inits):
            raise RuntimeError(
                f"model: DEQ state shapes {[tuple(s.shape) for s in state]} differ from the "
                f"call's z_init {[tuple(t.shape) for t in inits]}"
            )
        with torch.enable_grad():
            image = as_tuple(_as_state(func(*state) if is_tuple else func(state[0])))
        self.states.extend(state)
        self.images.extend(image)
        if self.mode == "solve":
            image = _attach_ift(state, image, self.gate, self.backward)
        out = list(image) if is_tuple else image[0]
        return [out], info


def _as_state(value: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
    return value if isinstance(value, torch.Tensor) else tuple(value)


@dataclass
class _Slot:
    """One adapted tensor: a model parameter (``name``) or the context keyword."""

    name: str
    anchor: torch.Tensor
    lr: float
    weight_decay: float
    is_context: bool


def _deqs(model: nn.Module) -> list[nn.Module]:
    try:
        from torchdeq.core import DEQBase
    except ImportError:  # pragma: no cover - exercised only without the deq extra
        return []
    return [m for m in model.modules() if isinstance(m, DEQBase)]


def _map_optimizer(
    opt: Any, override: dict[str, list[Any]] | None
) -> list[tuple[list, float, float]]:
    """``[(params, lr, weight_decay)]`` per param group of a plain SGD optimiser."""
    if not isinstance(opt, torch.optim.SGD):
        raise TypeError(
            f"opt: cannot map {type(opt).__module__}.{type(opt).__name__} to a fixed-point step; "
            "expected torch.optim.SGD without momentum (its step φ ← φ − lr·∇ is the φ-update of "
            "the joint map)"
        )
    override = dict(override or {})
    unknown = sorted(set(override) - {"lr"})
    if unknown:
        raise ValueError(f"override: only 'lr' can be overridden, got {unknown}")
    lrs = override.get("lr")
    if lrs is not None and len(lrs) != len(opt.param_groups):
        raise ValueError(
            f"override: 'lr' needs one value per param group ({len(opt.param_groups)}), "
            f"got {len(lrs)}"
        )
    groups = []
    for i, group in enumerate(opt.param_groups):
        if group.get("momentum", 0) or group.get("nesterov", False):
            raise TypeError(
                f"opt: param group {i} uses momentum; expected torch.optim.SGD without momentum"
            )
        if group.get("maximize", False):
            raise TypeError(f"opt: param group {i} maximises; expected a minimising SGD")
        lr = float(lrs[i] if lrs is not None else group["lr"])
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"opt: param group {i} has lr={lr}; expected a finite lr > 0")
        groups.append((list(group["params"]), lr, float(group.get("weight_decay", 0.0))))
    return groups


class JointFunctionalModel:
    """The ``fmodel`` of :func:`innerloop_ctx`: the model with fast (adapted) parameters.

    Calls on the support input (the input of the forward before the first ``diffopt.step``)
    evaluate the DEQ once at the joint state; calls on any other input solve the DEQ with the
    model's own solver at the latest fast parameters, with an implicit backward. ``fmodel(x,
    params=[...])`` runs the model with an explicit list of parameters (in
    ``model.parameters()`` order), like higher.

    Attributes:
        module: the wrapped model.
        tasks: number of tasks solved together (``None``: one task, higher's layout).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> with innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1)) as (fnet, _):
        ...     len(fnet.fast_params)
        2
    """

    def __init__(self, ctx: _InnerLoop) -> None:
        self._ctx = ctx
        self.module = ctx.model
        self.tasks = ctx.tasks

    @property
    def fast_params(self) -> list[torch.Tensor]:
        """Current fast parameters, in ``model.parameters()`` order (like higher)."""
        return list(self.parameters(time=-1))

    def parameters(self, time: int | None = None) -> Iterator[torch.Tensor]:
        """Fast parameters at ``time`` 0 (the meta-parameters) or -1 (the adapted ones).

        The adapted values are differentiable with respect to the meta-parameters through
        the inner solution (implicit meta-gradient). Only times 0 and -1 are kept: memory
        does not grow with the number of steps.
        """
        ctx = self._ctx
        if time is None:
            time = -1
        if time not in (0, -1, ctx.n_steps):
            raise ValueError(
                f"time: only 0 (initial) and -1 (latest, = {ctx.n_steps}) are kept by the joint "
                f"inner loop, got {time}"
            )
        values = ctx.initial if time == 0 and ctx.n_steps > 0 else ctx.current_params()
        return iter(list(values.values()))

    def __call__(self, *args: Any, params: Sequence[torch.Tensor] | None = None, **kwargs: Any):
        """Run the model; see the class docstring for which calls are joint evaluations."""
        return self._ctx.forward(args, kwargs, params)

    def __getattr__(self, name: str) -> Any:
        """Other attributes are read from the wrapped model (e.g. ``training``)."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._ctx.model, name)


class DifferentiableJointOptimizer:
    """The ``diffopt`` of :func:`innerloop_ctx`: each ``step`` is one joint iteration.

    Attributes:
        status: per-task :class:`~jiio_ext.solution.Status` after the latest step ``(T,)``.
        residuals: per-task RMS residuals of the ``z``, ``x`` (adapted) and ``mu`` blocks.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> with innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1)) as (fnet, opt):
        ...     for _ in range(30):
        ...         _ = opt.step(fnet(torch.ones(3, 2)).pow(2).mean())
        >>> opt.summary()
        'CONVERGED: 1 (of 1 samples)'
    """

    def __init__(self, ctx: _InnerLoop) -> None:
        self._ctx = ctx

    @property
    def status(self) -> torch.Tensor:
        """Per-task status codes after the latest step."""
        return self._ctx.status

    @property
    def residuals(self) -> dict[str, torch.Tensor]:
        """Per-task block residuals after the latest step."""
        return self._ctx.residuals

    def summary(self) -> str:
        """Counts of tasks per status."""
        counts = torch.bincount(self.status.cpu(), minlength=len(Status))
        parts = [f"{s.name}: {int(counts[s])}" for s in Status if int(counts[s]) > 0]
        return f"{', '.join(parts)} (of {self.status.numel()} samples)"

    def step(self, loss: torch.Tensor, params: Any = None, **kwargs: Any) -> list[torch.Tensor]:
        """One joint iteration on the inner objective ``loss + prox term``.

        Args:
            loss: support loss computed from the latest support forward: a scalar for one task
                or per-task losses ``(T,)`` when ``tasks=T``.
            params: not supported (higher's explicit-parameter form); must be ``None``.
            **kwargs: higher's ``override``/``grad_callback``: not supported.

        Returns:
            The adapted values after the step (detached), in slot order.
        """
        if params is not None or kwargs:
            raise TypeError(
                "params: the joint inner loop keeps its own state; call diffopt.step(loss) with "
                f"no params/override/grad_callback (got {sorted(kwargs) or 'params'})"
            )
        return self._ctx.step(loss)


class _InnerLoop:
    """State of one ``innerloop_ctx`` block."""

    def __init__(
        self,
        model: nn.Module,
        opt: Any,
        *,
        copy_initial_weights: bool,
        override: dict[str, list[Any]] | None,
        track_higher_grads: bool,
        first_order: bool,
        context: int | torch.Tensor | None,
        context_arg: str,
        prox: float,
        tasks: int | None,
        alpha_z: float | None,
        alpha_mu: float | None,
        memory: int,
        rtol: float,
        atol: float,
        backward: _Backward,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if tasks is not None and (
            isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1
        ):
            raise ValueError(f"tasks: expected None or an integer >= 1, got {tasks!r}")
        if not (isinstance(prox, (int, float)) and math.isfinite(prox) and prox >= 0):
            raise ValueError(f"prox: expected a finite number >= 0, got {prox!r}")
        self.model = model
        self.tasks = tasks
        self.rows = tasks or 1
        self.deqs = _deqs(model)
        for name, value in (("alpha_z", alpha_z), ("alpha_mu", alpha_mu)):
            if value is not None and not self.deqs:
                raise TypeError(
                    f"{name}: {type(model).__name__} contains no torchdeq DEQ module (DEQBase); "
                    f"{name} applies only to DEQ models"
                )
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name}: expected a damping in (0, 1], got {value!r}")
        self.alpha_z = 0.8 if alpha_z is None else float(alpha_z)
        self.alpha_mu = 0.6 if alpha_mu is None else float(alpha_mu)
        self.prox = float(prox)
        self.exact = track_higher_grads and not first_order
        self.track = track_higher_grads
        self.first_order = first_order
        self.context_arg = context_arg
        self.rtol, self.atol = rtol, atol
        self.backward = _Backward(**vars(backward))
        self.solver = Anderson(memory=memory, kind="II")
        self.tap = _Tap(self.deqs, backward)

        named = dict(model.named_parameters())
        by_id = {id(p): n for n, p in named.items()}
        if copy_initial_weights:
            self.initial = {
                n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in named.items()
            }
        else:
            self.initial = dict(named)
        groups = _map_optimizer(opt, override)
        self.slots: list[_Slot] = []
        if context is not None:
            init = torch.zeros(context) if isinstance(context, int) else context
            if not isinstance(init, torch.Tensor) or not torch.is_floating_point(init):
                raise TypeError(
                    f"context: expected a context size (int) or a floating-point tensor, got "
                    f"{type(context).__name__}"
                )
            ref = next(iter(named.values()), init)
            init = init.detach().to(device=ref.device, dtype=ref.dtype)
            _, lr, wd = groups[0]
            self.slots.append(_Slot(context_arg, init, lr, wd, True))
        else:
            for g, (params, lr, wd) in enumerate(groups):
                for i, p in enumerate(params):
                    if id(p) not in by_id:
                        raise ValueError(
                            f"opt: parameter {i} of param group {g} (shape {tuple(p.shape)}) is "
                            f"not a parameter of {type(model).__name__}; expected the model's "
                            "own parameters to adapt"
                        )
                    self.slots.append(
                        _Slot(by_id[id(p)], self.initial[by_id[id(p)]], lr, wd, False)
                    )
        if not self.slots:
            raise ValueError("opt: holds no parameters to adapt (or pass context=)")
        self.slot_layout = Layout(tuple(tuple(s.anchor.shape) for s in self.slots), True)
        self.n_steps = 0
        self.support: torch.Tensor | None = None
        self.state: torch.Tensor | None = None  # (T, n) joint state [z; φ; μ]
        self.z_shapes: list[tuple[int, ...]] = []
        self.buffers = None
        self.weights: torch.Tensor | None = None
        self.last: _Forward | None = None
        self.step_record: tuple[_Forward, torch.Tensor, torch.Tensor] | None = None
        self.final: tuple[int, list[torch.Tensor]] | None = None
        ref = self.slots[0].anchor
        self.status = torch.full((self.rows,), int(Status.MAX_ITER), dtype=torch.long)
        self.residuals: dict[str, torch.Tensor] = {}
        self.lr_vec = torch.cat(
            [
                torch.full((s.anchor.numel(),), s.lr, dtype=ref.dtype, device=ref.device)
                for s in self.slots
            ]
        )

    # ----- the adapted quantity -----
    def current_params(self) -> dict[str, torch.Tensor]:
        """Fast parameters now: model parameters with the adapted ones replaced (per task)."""
        adapted = self._adapted_now()
        values = dict(self.initial)
        for slot, value in zip(self.slots, adapted):
            if not slot.is_context:
                values[slot.name] = value if self.tasks else value[0]
        return values

    def _adapted_now(self) -> list[torch.Tensor]:
        """Per slot ``(T, ...)`` adapted tensors, differentiable as the mode asks."""
        if self.n_steps == 0:
            return [s.anchor.unsqueeze(0).expand(self.rows, *s.anchor.shape) for s in self.slots]
        if self.final is None or self.final[0] != self.n_steps:
            self.final = (self.n_steps, self._finalise())
        return self.final[1]

    def _finalise(self) -> list[torch.Tensor]:
        record, state_e, mapped_e = self.step_record
        nz = self.nz
        phi_value = mapped_e[:, nz : mapped_e.shape[1] - nz]
        parts = self._split_phi(phi_value.detach())
        if not self.track:
            return parts
        if self.first_order:
            return [
                p if s.is_context else s.anchor + (p - s.anchor.detach())
                for p, s in zip(parts, self.slots)
            ]
        mapped, leaves = self._map_with_graph(record, state_e)
        backward = self.backward

        def vjp(w: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad(), record.gate.off():
                grads = torch.autograd.grad(mapped, leaves, w, retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
            return self._join_leaves(grads)

        def hook(v: torch.Tensor) -> torch.Tensor:
            return backward.solve(vjp, v, "meta-gradient backward")

        attached = mapped.view_as(mapped)
        attached.register_hook(hook)
        return self._split_phi(attached[:, nz : mapped.shape[1] - nz])

    def _split_phi(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return list(self.slot_layout.unflatten(flat))

    # ----- forward -----
    def _is_support(self, args: tuple) -> bool:
        """Whether a call's first argument is the support input (same tensor or equal values)."""
        x = args[0] if args else None
        ref = self.support
        if self.n_steps == 0 or not isinstance(x, torch.Tensor) or ref is None:
            return False
        if x is ref:
            return True
        same = x.shape == ref.shape and x.dtype == ref.dtype and x.device == ref.device
        return same and bool(torch.equal(x.detach(), ref))

    def forward(self, args: tuple, kwargs: dict, params: Sequence[torch.Tensor] | None):
        if params is not None:
            values = list(params)
            if len(values) != len(self.initial):
                raise ValueError(
                    f"params: expected {len(self.initial)} tensors (model.parameters() order), "
                    f"got {len(values)}"
                )
            with self.tap.active("solve", [], _Gate()):
                return functional_call(self.model, dict(zip(self.initial, values)), args, kwargs)
        joint = self._is_support(args)
        first = args[0].detach() if args and isinstance(args[0], torch.Tensor) else None
        record = _Forward(support=first, mode="joint" if joint else "solve", gate=_Gate())
        if joint:
            z_rows, phi_rows, _ = self._split_state(self.state)
            phi_rows = phi_rows.detach()
        else:
            phi_rows = None
        adapted = None if joint else self._adapted_now()
        outputs = []
        for t in range(self.rows):
            task_args = tuple(
                a[t] if self.tasks and isinstance(a, torch.Tensor) else a for a in args
            )
            if joint:
                given = [g.detach().requires_grad_() for g in self._z_parts(z_rows[t])]
                phi = [
                    p[0].clone().requires_grad_()
                    for p in self.slot_layout.unflatten(phi_rows[t : t + 1])
                ]
            else:
                given = []
                phi = [a[t] for a in adapted]
                if self.n_steps == 0:  # leaves for the first step, gradient still reaching θ
                    leaves = [p.detach().requires_grad_() for p in phi]
                    phi = [
                        leaf
                        if s.is_context or not self.track
                        else leaf + (s.anchor - s.anchor.detach())
                        for leaf, s in zip(leaves, self.slots)
                    ]
                    record.phi.append(leaves)
            if joint:
                record.phi.append(phi)
            values = dict(self.initial)
            task_kwargs = dict(kwargs)
            for slot, value in zip(self.slots, phi):
                if slot.is_context:
                    task_kwargs[slot.name] = value
                else:
                    values[slot.name] = value
            with self.tap.active(record.mode, given, record.gate):
                outputs.append(functional_call(self.model, values, task_args, task_kwargs))
            record.z.append(self.tap.states)
            record.images.append(self.tap.images)
        self.last = record
        if not self.tasks:
            return outputs[0]
        if not all(isinstance(o, torch.Tensor) for o in outputs):
            raise TypeError("model: with tasks=T the model must return a tensor per task")
        return torch.stack(outputs)

    # ----- the joint state -----
    def _z_parts(self, row: torch.Tensor) -> list[torch.Tensor]:
        """The DEQ-call states of one task from its row of the z (or μ) block."""
        sizes = [math.prod(s) for s in self.z_shapes]
        return [c.view(s) for c, s in zip(torch.split(row, sizes), self.z_shapes)]

    def _split_state(self, state: torch.Tensor):
        nz = self.nz
        return state[:, :nz], state[:, nz : state.shape[1] - nz], state[:, state.shape[1] - nz :]

    def _join_leaves(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Flat ``(T, n)`` from per-task leaf lists ``[z parts..., φ parts...]*T + [μ]``."""
        per_task = len(parts[:-1]) // self.rows
        rows = []
        for t in range(self.rows):
            chunk = parts[t * per_task : (t + 1) * per_task]
            rows.append(
                torch.cat([c.reshape(-1) for c in chunk]) if chunk else parts[-1].new_zeros(0)
            )
        return torch.cat([torch.stack(rows), parts[-1]], dim=1)

    def _init_state(self, record: _Forward) -> None:
        self.z_shapes = [tuple(t.shape) for t in record.z[0]]
        phi = torch.stack([torch.cat([p.detach().reshape(-1) for p in ps]) for ps in record.phi])
        z = torch.stack(
            [
                torch.cat([t.detach().reshape(-1) for t in [*parts, phi[0, :0]]])
                for parts in record.z
            ]
        )
        self.state = torch.cat([z, phi, torch.zeros_like(z)], dim=1)
        self.nz = z.shape[1]
        nz, nphi = z.shape[1], phi.shape[1]
        sizes = [s for s in (nz, nphi, nz) if s]
        self.weights = torch.cat(
            [torch.full((s,), 1.0 / math.sqrt(s), dtype=z.dtype, device=z.device) for s in sizes]
        ).unsqueeze(0)

    def _objective(self, record: _Forward, loss: torch.Tensor) -> torch.Tensor:
        """Per-task inner objective: the user's loss plus the proximal / L2 term."""
        if self.tasks:
            if loss.shape != (self.rows,):
                raise ValueError(
                    f"loss: expected per-task losses of shape ({self.rows},) with tasks="
                    f"{self.rows}, got shape {tuple(loss.shape)}"
                )
        elif loss.numel() != 1:
            raise ValueError(f"loss: expected a scalar support loss, got shape {tuple(loss.shape)}")
        loss = loss.reshape(self.rows)
        terms = []
        for phis in record.phi:
            term = loss.new_zeros(())
            for phi, slot in zip(phis, self.slots):
                anchor = slot.anchor if self.exact else slot.anchor.detach()
                if self.prox:
                    term = term + 0.5 * self.prox * (phi - anchor).pow(2).sum()
                if slot.weight_decay:
                    term = term + 0.5 * slot.weight_decay * phi.pow(2).sum()
            terms.append(term)
        return loss + torch.stack(terms)

    def _grads(self, record: _Forward, total: torch.Tensor, mu: torch.Tensor, create_graph: bool):
        z_leaves = [t for parts in record.z for t in parts]
        phi_leaves = [p for ps in record.phi for p in ps]
        images = [t for parts in record.images for t in parts]
        mu_parts = [p for t in range(self.rows) for p in self._z_parts(mu[t])]
        with torch.enable_grad(), record.gate.off():
            outputs = [total.sum(), *images]
            grad_outputs = [torch.ones_like(outputs[0]), *mu_parts]
            keep = [i for i, o in enumerate(outputs) if o.requires_grad]
            grads = torch.autograd.grad(
                [outputs[i] for i in keep],
                [*z_leaves, *phi_leaves],
                [grad_outputs[i] for i in keep],
                allow_unused=True,
                retain_graph=self.exact or create_graph,
                create_graph=create_graph,
            )
        inputs = [*z_leaves, *phi_leaves]
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]
        g_z, g_phi = grads[: len(z_leaves)], grads[len(z_leaves) :]
        per_z, per_phi = len(z_leaves) // self.rows, len(phi_leaves) // self.rows

        def rows(parts: list[torch.Tensor], per: int) -> torch.Tensor:
            if per == 0:
                return mu.new_zeros(self.rows, 0)
            return torch.stack(
                [
                    torch.cat([p.reshape(-1) for p in parts[t * per : (t + 1) * per]])
                    for t in range(self.rows)
                ]
            )

        return (
            rows(g_z, per_z),
            rows(g_phi, per_phi),
            rows(images, per_z),
            rows(z_leaves, per_z),
            rows(phi_leaves, per_phi),
        )

    def _apply(self, z, phi, mu, image, g_z, g_phi) -> torch.Tensor:
        z_new = z + self.alpha_z * (image - z)
        mu_new = mu + self.alpha_mu * (g_z - mu)
        phi_new = phi - self.lr_vec * g_phi
        return torch.cat([z_new, phi_new, mu_new], dim=1)

    def _map_with_graph(self, record: _Forward, state_e: torch.Tensor):
        """``F`` at the last evaluated state with a graph to the state and the meta-parameters."""
        nz = self.nz
        mu = state_e[:, state_e.shape[1] - nz :].detach().requires_grad_()
        total = record.total
        with torch.enable_grad():
            g_z, g_phi, image, z, phi = self._grads(record, total, mu, create_graph=True)
            mapped = self._apply(z, phi, mu, image, g_z, g_phi)
        leaves = [
            *[t for t_parts in zip(record.z, record.phi) for t in (*t_parts[0], *t_parts[1])],
            mu,
        ]
        return mapped, leaves

    def step(self, loss: torch.Tensor) -> list[torch.Tensor]:
        record = self.last
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss: expected a tensor, got {type(loss).__name__}")
        if record is None:
            raise RuntimeError("diffopt.step: call fnet on the support set before the first step")
        if self.n_steps == 0:
            self.support = record.support
            self._init_state(record)
        elif record.mode != "joint":
            raise ValueError(
                "loss: diffopt.step needs a loss of the latest support forward; the latest "
                "fnet call was on another input than the first step's (pass the support set, "
                "unchanged, to fnet before every step)"
            )
        total = self._objective(record, loss)
        record.total = total
        state = self.state
        nz = self.nz
        mu = state[:, state.shape[1] - nz :]
        with torch.no_grad():
            g_z, g_phi, image, z, phi = self._grads(record, total, mu, create_graph=False)
            mapped = self._apply(z.detach(), phi.detach(), mu, image.detach(), g_z, g_phi)
            resid = mapped - state
            if self.buffers is None:
                self.buffers = self.solver.init(state, resid, self.weights)
            w_norm = (resid * self.weights).norm(dim=1)
            nxt, self.buffers = self.solver.step(self.buffers, state, resid, w_norm)
        self._update_status(state, resid, total)
        self.step_record = (record, state, mapped)
        self.state = nxt
        self.n_steps += 1
        return [p.detach() for p in self._split_phi(mapped[:, nz : mapped.shape[1] - nz])]

    def _update_status(self, state: torch.Tensor, resid: torch.Tensor, total: torch.Tensor) -> None:
        nz = self.nz
        sizes = [nz, state.shape[1] - 2 * nz, nz]
        names = ("z", "x", "mu")
        scale = (1.0 / self.alpha_z, 1.0, 1.0 / self.alpha_mu)
        ok = torch.isfinite(resid).all(dim=1) & torch.isfinite(total.detach())
        converged = ok.clone()
        for name, r, s, c in zip(
            names, torch.split(resid, sizes, dim=1), torch.split(state, sizes, dim=1), scale
        ):
            if r.shape[1] == 0:
                continue
            rms = r.pow(2).mean(dim=1).sqrt() * c
            self.residuals[name] = rms
            converged &= rms <= self.atol + self.rtol * s.pow(2).mean(dim=1).sqrt()
        status = torch.where(converged, int(Status.CONVERGED), int(Status.MAX_ITER))
        self.status = torch.where(ok, status, int(Status.NONFINITE)).long().cpu()


@contextlib.contextmanager
def innerloop_ctx(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    device: torch.device | str | None = None,
    copy_initial_weights: bool = True,
    override: dict[str, list[Any]] | None = None,
    track_higher_grads: bool = True,
    *,
    first_order: bool = False,
    context: int | torch.Tensor | None = None,
    context_arg: str = "context",
    prox: float = 1.0,
    tasks: int | None = None,
    alpha_z: float | None = None,
    alpha_mu: float | None = None,
    memory: int = 5,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    backward_max_iter: int = 100,
    backward_rtol: float = 1e-6,
    backward_atol: float = 1e-10,
) -> Iterator[tuple[JointFunctionalModel, DifferentiableJointOptimizer]]:
    """Drop-in for ``higher.innerloop_ctx``: the inner loop is one joint fixed point.

    Args:
        model: the model (a torchdeq model, or any module: then the state is ``φ`` alone).
        opt: ``torch.optim.SGD`` without momentum over the parameters to adapt; its ``lr``
            (per group) is the φ-step size and ``weight_decay`` adds ``wd/2 ||φ||²``.
        device: must be ``None`` or the model's device (fast weights live with the model).
        copy_initial_weights: as in higher: ``True`` starts from detached copies (the
            meta-gradient then lands on ``fnet.parameters(time=0)``), ``False`` from the
            model's own parameters (the meta-gradient lands on ``model``).
        override: ``{"lr": [...]}`` per param group, as in higher.
        track_higher_grads: ``False``: no meta-gradient through the inner solution.
        first_order: first-order meta-gradient (FOMAML): ``dφ*/dφ₀ = I``, no Hessian terms.
        context: adapt a task-context vector instead of ``opt``'s parameters: its size (starts
            at zeros) or its initial value; it is passed to ``forward`` as ``context_arg=``.
        context_arg: keyword under which the context reaches ``forward``.
        prox: weight ``λ`` of ``λ/2 ||φ − φ₀||²`` (iMAML's proximal term; for a context the
            L2 term toward its initial value). ``0`` solves the plain support loss.
        tasks: ``T`` tasks solved as one batched joint fixed point: every positional tensor
            argument of ``fnet`` has a leading task dimension and ``diffopt.step`` takes the
            per-task losses ``(T,)``; each task has its own Anderson coefficients and status.
        alpha_z: damping of the DEQ-state block (DEQ models only; default 0.8).
        alpha_mu: damping of the adjoint block (DEQ models only; default 0.6).
        memory: Anderson memory of the joint iteration.
        rtol: relative tolerance of the per-task status.
        atol: absolute tolerance of the per-task status.
        backward_max_iter: budget of the adjoint fixed points of backward passes.
        backward_rtol: their relative tolerance.
        backward_atol: their absolute tolerance.

    Yields:
        ``(fnet, diffopt)``: a :class:`JointFunctionalModel` and a
        :class:`DifferentiableJointOptimizer`.

    Raises:
        TypeError: ``opt`` is not a plain SGD, ``model`` is not a module, or a DEQ option was
            given for a model without a DEQ.
        ValueError: ``opt`` holds parameters that are not the model's, or bad settings.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> adam = torch.optim.Adam(net.parameters())
        >>> try:
        ...     with innerloop_ctx(net, adam) as (fnet, diffopt):
        ...         pass
        ... except TypeError as err:
        ...     print(str(err)[:45])
        opt: cannot map torch.optim.adam.Adam to a fi
    """
    if device is not None:
        expected = (
            next(model.parameters()).device if any(True for _ in model.parameters()) else None
        )
        if expected is not None and torch.device(device) != expected:
            raise ValueError(
                f"device: fast weights live on the model's device ({expected}); got {device}"
            )
    ctx = _InnerLoop(
        model,
        opt,
        copy_initial_weights=copy_initial_weights,
        override=override,
        track_higher_grads=track_higher_grads,
        first_order=first_order,
        context=context,
        context_arg=context_arg,
        prox=prox,
        tasks=tasks,
        alpha_z=alpha_z,
        alpha_mu=alpha_mu,
        memory=memory,
        rtol=rtol,
        atol=atol,
        backward=_Backward(backward_max_iter, backward_rtol, backward_atol),
    )
    yield JointFunctionalModel(ctx), DifferentiableJointOptimizer(ctx)
