"""higher adapter: MAML-style inner loops solved as one joint fixed point, exact meta-gradient.

``innerloop_ctx(model, opt, ...)`` has the call pattern of ``higher.innerloop_ctx``::

    with innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
        for _ in range(n_inner):
            diffopt.step(F.cross_entropy(fnet(x_spt), y_spt))
        F.cross_entropy(fnet(x_qry), y_qry).backward()

The adapted quantity ``φ`` is the set of parameters held by ``opt`` (e.g. a head or FiLM
layers) or, with ``context=``, a task-context vector passed to ``forward`` as a keyword. The
inner loop iterates the augmented map over ``(z, φ, μ)``: the DEQ states of the support
forward, the adapted quantity and the DEQ adjoint (see ``docs/meta.md``), optionally with
iMAML's proximal term ``prox/2 ||φ - φ₀||²`` toward the meta-parameters ``φ₀``.

**What one ``diffopt.step(loss)`` does.** The support forward ``fnet(x_spt)`` evaluates each
DEQ layer *once* at the current joint state ``z`` (no inner DEQ solve) and returns the model's
output at ``f(z)``; ``diffopt.step`` takes one vector-Jacobian product of ``[loss + prox, f(z)]``
with ``[1, μ]``, which gives the φ-gradient and the adjoint update together, and applies one
step of the augmented map ``z ← z + α_z (f(z) − z)``, ``μ ← μ + α_μ (g_z − μ)``,
``φ ← φ − lr · g_φ`` (``lr`` from ``opt``). So ``n_inner`` steps are ``n_inner`` joint
iterations, each costing one ``f`` evaluation and one VJP on the support set (the first support
forward also solves the DEQ once, with the model's own solver, as a warm start). The query
forward ``fnet(x_qry)`` solves the DEQ with the model's solver at the adapted ``φ`` and
differentiates it implicitly. (A torchdeq DEQ whose solver is torchdeq's Anderson is solved
with the same algorithm and settings, re-implemented at a lower cost per iteration.)

**Meta-gradient** (``meta_gradient=``). ``"unrolled"`` (default): the steps are plain (damped,
not Anderson-mixed) joint iterations and backward from the query loss is the exact gradient of
the steps that were computed, for any number of steps, converged or not (each step keeps its
graph: one ``f`` evaluation and its VJP, not a DEQ solve). With no ``prox`` this is the user's
MAML loop. ``"implicit"``: Anderson-accelerated steps and the implicit gradient of the inner
fixed point of ``min_φ support_loss(φ) + prox/2 ||φ − φ₀||²`` (``prox > 0`` required), solved
at the last joint state with Hessian-vector products: memory does not grow with ``n_inner``,
and a ``RuntimeWarning`` says when the state is not converged at the query (then the gradient
is approximate). ``first_order=True`` gives the first-order (FOMAML) gradient;
``track_higher_grads=False`` none. Built on ``torch.func.functional_call``; higher itself is
not needed.

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
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jiio_ext.adapters._higher_backward import AdjointSolve
from jiio_ext.adapters._higher_loop import InnerLoop
from torch import nn

from jiio_ext.schedules import Schedule
from jiio_ext.solution import status_summary
from jiio_ext.validate import check_positive

__all__ = ["DifferentiableJointOptimizer", "JointFunctionalModel", "innerloop_ctx"]


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

    def __init__(self, ctx: InnerLoop) -> None:
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

    def __init__(self, ctx: InnerLoop) -> None:
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
        """Counts of tasks per status (as :meth:`~jiio_ext.solution.JointSolution.summary`)."""
        return status_summary(self.status)

    def jacobian_penalty(self) -> torch.Tensor:
        """``jac_reg`` × Hutchinson ``||∂f/∂z||_F² / dim(z)`` at the latest joint step.

        Add it to the query loss: ``(loss_qry + diffopt.jacobian_penalty()).backward()``.

        Example:
            >>> import torch
            >>> net = torch.nn.Linear(2, 1)
            >>> with innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1)) as (f, opt):
            ...     _ = opt.step(f(torch.ones(3, 2)).pow(2).mean())
            ...     float(opt.jacobian_penalty())  # no DEQ, jac_reg=0: nothing to penalise
            0.0
        """
        return self._ctx.jacobian_penalty()

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
    meta_gradient: str = "unrolled",
    prox: float | Sequence[float] | None = None,
    lr_scale: float | Schedule = 1.0,
    max_iter: int | None = None,
    jac_reg: float = 0.0,
    jac_probes: int = 2,
    tasks: int | None = None,
    alpha_z: float | None = None,
    alpha_mu: float | None = None,
    memory: int = 5,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    backward_max_iter: int = 100,
    backward_rtol: float = 1e-5,
    backward_atol: float = 1e-10,
    backward_solver: str = "neumann",
    vectorize: bool = True,
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
        meta_gradient: ``"unrolled"`` (default): the steps are plain damped joint steps and
            the meta-gradient is the exact gradient of the computed steps (every step's graph
            is kept: one ``f`` evaluation and one VJP per step, no DEQ solve); ``"implicit"``:
            Anderson-accelerated steps and the implicit gradient of the inner fixed point
            (one step's graph; exact only once converged, else a ``RuntimeWarning`` at the
            query).
        prox: weight ``λ`` of ``λ/2 ||φ − φ₀||²`` (iMAML's proximal term; for a context the
            L2 term toward its initial value), or one weight per param group of ``opt`` (e.g.
            a weak pull on a context and a strong one on a head). ``None`` (default): no
            proximal term with the unrolled meta-gradient (the loop the user wrote, plain
            MAML); the implicit one needs an explicit ``prox > 0`` for every param group
            (K steps at rate lr act like ``prox ≈ 1/(lr*K)``), and ``0`` is rejected there.
        lr_scale: a number or a :class:`~jiio_ext.schedules.Schedule` multiplying ``opt``'s
            lr at step ``k`` (e.g. ``StepSwitch(1.0, 0.25)``: the reference's 0.04 → 0.01).
        max_iter: the planned number of steps (the loop's budget), passed to ``lr_scale`` as
            its ``max_iter``.
        jac_reg: weight of the trajectory Jacobian regularisation (the reference uses 0.5 on
            Omniglot): ``diffopt.jacobian_penalty()`` then returns ``jac_reg`` times a
            Hutchinson estimate of ``||∂f/∂z||_F² / dim(z)`` at the latest joint step, to add
            to the query loss (``0`` when ``jac_reg=0``).
        jac_probes: Gaussian probes of that estimate.
        tasks: ``T`` tasks solved as one batched joint fixed point: every positional tensor
            argument of ``fnet`` has a leading task dimension and ``diffopt.step`` takes the
            per-task losses ``(T,)``; each task has its own Anderson coefficients and status.
        alpha_z: damping of the DEQ-state block (DEQ models only; default 0.8).
        alpha_mu: damping of the adjoint block (DEQ models only; default 0.6).
        memory: Anderson memory of the joint iteration.
        rtol: relative tolerance of the per-task status.
        atol: absolute tolerance of the per-task status.
        backward_max_iter: budget of the adjoint fixed points of backward passes; a torchdeq
            DEQ's adjoint takes no more products in all than the DEQ's own ``b_max_iter``
            when that is smaller.
        backward_rtol: their relative tolerance (default ``1e-5``: the loosest at which the
            unrolled meta-gradient keeps matching finite differences to ``1e-4`` with a
            margin, docs/meta.md). A DEQ's adjoint is solved as the model's own backward would
            solve it, no tighter than its forward: a row also stops at the forward fixed
            point's relative residual, or once it meets the DEQ's ``b_tol`` test (torchdeq's
            ``b_stop_mode``, per sample).
        backward_atol: their absolute tolerance.
        backward_solver: ``"neumann"`` (default: the plain series ``w ← Jᵀw + v``, handing
            over to Anderson, warm-started, when it contracts too slowly; measured cheaper
            than Anderson on a contractive DEQ, docs/meta.md) or ``"anderson"``.
        vectorize: with ``tasks=T``, evaluate the T support forwards of a joint iteration as
            one ``torch.func.vmap`` call of the model (``False``: a Python loop over the tasks;
            a model that vmap cannot trace falls back to the loop with a warning).

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
    for name, value in (
        ("rtol", rtol),
        ("atol", atol),
        ("backward_rtol", backward_rtol),
        ("backward_atol", backward_atol),
    ):
        check_positive(value, name, allow_zero=True)
    if (
        isinstance(backward_max_iter, bool)
        or not isinstance(backward_max_iter, int)
        or backward_max_iter < 1
    ):
        raise ValueError(f"backward_max_iter: expected an integer >= 1, got {backward_max_iter!r}")
    if device is not None:
        expected = (
            next(model.parameters()).device if any(True for _ in model.parameters()) else None
        )
        if expected is not None and torch.device(device) != expected:
            raise ValueError(
                f"device: fast weights live on the model's device ({expected}); got {device}"
            )
    ctx = InnerLoop(
        model,
        opt,
        copy_initial_weights=copy_initial_weights,
        override=override,
        track_higher_grads=track_higher_grads,
        first_order=first_order,
        context=context,
        context_arg=context_arg,
        prox=prox,
        meta_gradient=meta_gradient,
        lr_scale=lr_scale,
        max_iter=max_iter,
        jac_reg=jac_reg,
        jac_probes=jac_probes,
        tasks=tasks,
        alpha_z=alpha_z,
        alpha_mu=alpha_mu,
        memory=memory,
        rtol=rtol,
        atol=atol,
        backward=AdjointSolve(backward_max_iter, backward_rtol, backward_atol, backward_solver),
        vectorize=vectorize,
    )
    yield JointFunctionalModel(ctx), DifferentiableJointOptimizer(ctx)
