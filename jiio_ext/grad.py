"""θ-gradients after a joint solve: the envelope mode and the exact implicit mode.

Both make the solution's tensors differentiable with respect to everything ``f`` and the
objective depend on (module parameters, closed-over tensors, ``targets``) by re-applying one
map at the detached solution and attaching a backward hook that solves an adjoint fixed point
(implicit function theorem), as torchdeq does for its own DEQs.

* :class:`EnvelopeGrad` (``grad="envelope"``): ``x*`` is held constant; ``z = f(z*, x*)`` is
  attached and its backward solves ``w = (∂f/∂z)ᵀ w + v``, warm-started from the joint adjoint
  ``μ*`` rescaled per sample to the incoming gradient. By Danskin's theorem this is the exact
  gradient of the optimal value ``min_x ℓ(x; θ)`` when the outer loss equals the inner objective;
  otherwise it ignores ``dx*/dθ``.
* :class:`ImplicitGrad` (``grad="implicit"``): differentiates through the augmented fixed
  point ``s* = F(s*; θ)`` with ``s = (z, x, μ)``, solving ``(I − (∂F/∂s)ᵀ) λ = v`` with
  Hessian-vector products, by GMRES (:mod:`jiio_ext.krylov`): the input block of ``∂F/∂s`` has
  eigenvalues near 1 when the input step is small, where a fixed-point iteration stalls.
  Exact for any outer loss of ``(z*, x*)``; needs the raw step rule.

After the backward, ``solution.info["backward_status"]`` holds its per-sample
:class:`~jiio_ext.solution.Status` codes (``"backward_nstep"`` its products, ``"backward_residual"``
its residual RMS); a sample that did not converge warns, or raises
:class:`~jiio_ext.solution.JointSolveError` from ``.backward()`` under ``throw=True``.

Example:
    >>> import torch
    >>> from jiio_ext import solve_joint
    >>> W = torch.nn.Parameter(0.3 * torch.eye(2, dtype=torch.float64))
    >>> f = lambda z, x: torch.tanh(z @ W + x)
    >>> target = torch.full((3, 2), 0.2, dtype=torch.float64)
    >>> objective = lambda z, x: (z - target).pow(2).sum(1) + 0.1 * x.pow(2).sum(1)
    >>> x0 = torch.zeros(3, 2, dtype=torch.float64)
    >>> sol = solve_joint(f, objective, x0, z0=torch.zeros_like(x0), step_size=0.5, max_iter=200,
    ...                   rtol=1e-9, atol=1e-12, grad="envelope")
    >>> objective(sol.z, sol.x).sum().backward()
    >>> W.grad.shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch

from jiio_ext.krylov import GMRES, gmres
from jiio_ext.layout import Layout
from jiio_ext.solution import JointSolution, JointSolveError, Status
from jiio_ext.solvers import Anderson, DampedIteration, FixedPointResult, fixed_point

BackwardSolver = Anderson | DampedIteration | GMRES

__all__ = [
    "EnvelopeGrad",
    "GradMode",
    "ImplicitGrad",
    "attach_implicit",
    "get_grad_mode",
    "solve_adjoint",
]

# the backward solve of attach_implicit: (vjp, v) -> w with w = vjp(w) + v, or None to pass v on
AdjointSolver = Callable[
    [Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor | None
]


def solve_adjoint(
    vjp: Callable[[torch.Tensor], torch.Tensor],
    v: torch.Tensor,
    start: torch.Tensor,
    *,
    solver: BackwardSolver,
    max_iter: int,
    rtol: float,
    atol: float,
    scale: torch.Tensor | None = None,
) -> FixedPointResult:
    """Solve the adjoint system ``w = vjp(w) + v`` per sample (whole batch each call).

    The backward solve behind every implicit gradient of the package (the grad modes, the
    ``'jiio'`` DEQ core, the higher adapter's DEQ calls).

    Args:
        vjp: ``w -> (∂f/∂z)ᵀ w`` on ``(B, n)``.
        v: the incoming gradient ``(B, n)``.
        start: the initial ``w``.
        solver: :class:`~jiio_ext.krylov.GMRES` or a fixed-point solver.
        max_iter: budget of products per sample.
        rtol: relative tolerance.
        atol: absolute tolerance (RMS units).
        scale: GMRES only: the per-unknown damping of the map's rows; GMRES then solves for
            ``scale ⊙ w`` (right preconditioning), whose system does not depend on it.

    Returns:
        The solve's :class:`~jiio_ext.solvers.FixedPointResult` (``state`` is ``w``).

    Example:
        >>> import torch
        >>> result = solve_adjoint(lambda w: 0.5 * w, torch.ones(2, 1), torch.zeros(2, 1),
        ...                        solver=Anderson(), max_iter=50, rtol=1e-10, atol=0.0)
        >>> result.state.flatten().tolist(), result.status.tolist()
        ([2.0, 2.0], [0, 0])
    """
    if isinstance(solver, GMRES):
        unscale = torch.ones_like(v) if scale is None else scale.reciprocal()
        result = gmres(
            lambda y: unscale * y - vjp(unscale * y),
            v,
            start / unscale,
            max_iter=max_iter,
            rtol=rtol,
            atol=atol,
            restart=solver.restart,
        )
        result.state = unscale * result.state
        return result

    def linear_map(w: torch.Tensor, index: torch.Tensor, k: int):
        return vjp(w) + v, {}

    return fixed_point(
        linear_map,
        start,
        solver=solver,
        max_iter=max_iter,
        rtol=rtol,
        atol=atol,
        subset=False,
        balance=False,
    )


def attach_implicit(
    state: Sequence[torch.Tensor],
    image: Sequence[torch.Tensor],
    solve: AdjointSolver,
    *,
    lead: int = 1,
) -> tuple[torch.Tensor, ...]:
    """``image = f(state)`` at a fixed point, with an implicit (IFT) backward per sample.

    The one implicit-backward mechanism of the package (the envelope mode, the torchdeq
    ``'jiio'`` core and the higher adapter's DEQ calls all use it). The backward of the
    returned tensors receives the incoming gradient ``v`` (flattened to ``(samples, n)``)
    and returns ``w`` solving ``w = (∂f/∂state)ᵀ w + v``, computed by ``solve(vjp, v)``
    where ``vjp(w)`` is one vector-Jacobian product through ``f`` at the fixed point; it
    then flows on into ``f``'s parameters. ``solve`` returning ``None`` passes ``v`` on
    unchanged (a switched-off hook).

    Args:
        state: the fixed point's parts, leaves requiring grad that ``image`` was computed from.
        image: ``f(state)``, part by part.
        solve: the adjoint solver ``(vjp, v) -> w`` (or ``None``).
        lead: how many leading dimensions index the samples (2 under ``vmap``).

    Returns:
        ``image``'s parts, carrying the implicit backward (unchanged when none requires grad).

    Example:
        >>> import torch
        >>> z = torch.zeros(1, 2, requires_grad=True)
        >>> theta = torch.ones(1, 2, requires_grad=True)
        >>> def neumann(vjp, v):  # w = vjp(w) + v by plain iteration
        ...     w = v
        ...     for _ in range(60):
        ...         w = vjp(w) + v
        ...     return w
        >>> (out,) = attach_implicit((z,), (0.5 * z + theta,), neumann)  # z* = 2 θ
        >>> out.sum().backward()
        >>> theta.grad  # dz*/dθ = 2
        tensor([[2., 2.]])
    """
    state, image = tuple(state), tuple(image)
    samples = math.prod(image[0].shape[:lead])
    flat = torch.cat([p.reshape(samples, -1) for p in image], dim=1)
    if not flat.requires_grad:
        return image
    sizes = [math.prod(p.shape[lead:]) for p in image]

    def vjp(w: torch.Tensor) -> torch.Tensor:
        grad_outputs = [g.reshape(p.shape) for g, p in zip(torch.split(w, sizes, dim=1), image)]
        with torch.enable_grad():
            grads = torch.autograd.grad(
                image, state, grad_outputs, retain_graph=True, allow_unused=True
            )
        grads = [torch.zeros_like(s) if g is None else g for g, s in zip(grads, state)]
        return torch.cat([g.reshape(samples, -1) for g in grads], dim=1)

    def hook(v: torch.Tensor) -> torch.Tensor | None:
        return solve(vjp, v)

    attached = flat.view_as(flat)
    attached.register_hook(hook)
    return tuple(a.view_as(p) for a, p in zip(torch.split(attached, sizes, dim=1), image))


class GradMode:
    """Base class of the differentiation strategies passed as ``grad=...``.

    Args:
        solver: solver of the backward system: :class:`~jiio_ext.krylov.GMRES` (the default
            of :class:`ImplicitGrad`) or a fixed-point solver (:class:`~jiio_ext.solvers.
            Anderson`, the default of :class:`EnvelopeGrad`, or ``DampedIteration``).
        max_iter: its budget of vector-Jacobian products per sample; ``None`` (default)
            scales it to the problem: ``max(200, min(2 n, 2000))`` for ``n`` unknowns per
            sample (GMRES is exact after ``n`` products).
        rtol: its relative tolerance (GMRES: residual RMS against the incoming gradient's).
        atol: its absolute tolerance (RMS units).

    Attributes:
        last_backward: the :class:`~jiio_ext.solvers.FixedPointResult` of the latest backward.

    Example:
        >>> import torch
        >>> mode = EnvelopeGrad(max_iter=50)  # a concrete GradMode, as grad="envelope" builds
        >>> isinstance(mode, GradMode), mode.last_backward is None
        (True, True)
        >>> W = torch.nn.Parameter(torch.tensor([[0.5]]))
        >>> mode.attach_fixed_point(lambda z: z @ W + 1.0, torch.tensor([[2.0]])).sum().backward()
        >>> mode.last_backward.status.tolist()  # the backward fixed point converged
        [0]
    """

    name = "base"

    def __init__(
        self,
        solver: BackwardSolver | None = None,
        max_iter: int | None = None,
        rtol: float = 1e-6,
        atol: float = 1e-10,
    ) -> None:
        self.solver = solver if solver is not None else self._default_solver()
        self.max_iter = max_iter
        self.rtol = rtol
        self.atol = atol
        self.last_backward: FixedPointResult | None = None

    def _default_solver(self) -> BackwardSolver:
        return Anderson(memory=5, kind="II")

    def budget(self, n: int) -> int:
        """The backward's budget for ``n`` unknowns per sample (see ``max_iter``).

        Example:
            >>> ImplicitGrad().budget(50), ImplicitGrad().budget(600), ImplicitGrad().budget(10**6)
            (200, 1200, 2000)
            >>> ImplicitGrad(max_iter=30).budget(600)
            30
        """
        if self.max_iter is not None:
            return self.max_iter
        return max(200, min(2 * n, 2000))

    def check_step_rule(self, step_rule: object) -> None:
        """Reject step rules this mode cannot differentiate (see subclasses)."""

    def attach(self, aug, solution: JointSolution, *, throw: bool = False) -> None:
        """Replace the solution's tensors by differentiable ones (in place).

        Args:
            aug: the solve's augmented map.
            solution: the solution to make differentiable; its ``info`` receives the
                backward's ``backward_status``, ``backward_nstep`` and ``backward_residual``.
            throw: raise :class:`~jiio_ext.solution.JointSolveError` from the backward when a
                sample's backward did not converge (else warn).
        """
        raise NotImplementedError

    def _solve_adjoint(
        self,
        vjp,
        v: torch.Tensor,
        start: torch.Tensor,
        solution: JointSolution | None = None,
        throw: bool = False,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Solve ``w = vjp(w) + v`` per sample (whole batch each call) and report it.

        ``scale`` (GMRES only) is the per-unknown damping of the map's rows: GMRES then solves
        for ``scale ⊙ w`` (right preconditioning), whose system does not depend on it.
        """
        budget = self.budget(v.shape[1])
        result = solve_adjoint(
            vjp,
            v,
            start,
            solver=self.solver,
            max_iter=budget,
            rtol=self.rtol,
            atol=self.atol,
            scale=scale,
        )
        self.last_backward = result
        if solution is not None:
            solution.info["backward_status"] = result.status
            solution.info["backward_nstep"] = result.nstep
            solution.info["backward_residual"] = result.residuals.amax(dim=1)
        failed = result.status != Status.CONVERGED
        if bool(failed.any()):
            message = (
                f"{self.name} backward: the adjoint system did not converge for "
                f"{int(failed.sum())} sample(s) in {budget} products "
                f"(worst residual {float(result.residuals.nan_to_num(float('inf')).amax()):.2e}); "
                "raise max_iter or loosen rtol"
            )
            if throw:
                raise JointSolveError(message, solution)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        return result.state


class EnvelopeGrad(GradMode):
    """``x*`` held constant; implicit backward through ``f`` warm-started from ``μ*``.

    Example:
        >>> EnvelopeGrad(max_iter=50).name
        'envelope'
    """

    name = "envelope"

    def attach(self, aug, solution: JointSolution, *, throw: bool = False) -> None:
        """Make ``solution.z`` differentiable (``x`` and ``mu`` stay detached)."""
        self.attach_layer(aug.layer, aug.z_layout, solution, throw=throw)

    def attach_layer(
        self,
        layer: Callable,
        layout: Layout,
        solution: JointSolution,
        *,
        throw: bool = False,
    ) -> None:
        """Make ``solution.z`` differentiable through ``layer(z, x*)`` (``x*`` held constant).

        Args:
            layer: ``layer(z, x) -> z``, the DEQ layer without auxiliary output.
            layout: the layout of ``z``.
            solution: the solution (its ``mu`` is the warm start of the backward).
            throw: raise instead of warning when the backward does not converge.
        """
        x_star = solution.x.detach()

        def f_flat(z_flat: torch.Tensor) -> torch.Tensor:
            return layout.flatten(layer(layout.unflatten(z_flat), x_star))

        attached = self.attach_fixed_point(
            f_flat,
            layout.flatten(solution.z),
            warm_start=layout.flatten(solution.mu),
            solution=solution,
            throw=throw,
        )
        solution.z = layout.unflatten(attached)

    def attach_fixed_point(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        z_star: torch.Tensor,
        *,
        warm_start: torch.Tensor | None = None,
        solution: JointSolution | None = None,
        throw: bool = False,
    ) -> torch.Tensor:
        """``fn(z*)`` with a graph to ``fn``'s parameters and an implicit backward.

        The backward solves ``w = (∂fn/∂z)ᵀ w + v`` per sample. A ``warm_start`` adjoint
        ``μ`` (solving ``μ = Jᵀ μ + a`` for some ``a``) is rescaled per sample to the incoming
        gradient first, which makes it exact when ``v ∝ a``.

        Args:
            fn: the layer as a function of the state alone, ``(B, ...) -> (B, ...)``.
            z_star: the fixed point (detached inside).
            warm_start: optional adjoint of the same shape.
            solution: a solution whose ``info`` receives the backward's status (see
                :meth:`GradMode.attach`).
            throw: raise instead of warning when the backward does not converge.

        Returns:
            ``fn(z*)``, differentiable with respect to ``fn``'s parameters.

        Example:
            >>> import torch
            >>> W = torch.nn.Parameter(torch.tensor([[0.5]]))
            >>> z = EnvelopeGrad().attach_fixed_point(lambda z: z @ W + 1.0, torch.tensor([[2.0]]))
            >>> z.sum().backward()  # dz*/dW = z* / (1 - W) = 4
            >>> round(float(W.grad), 6)
            4.0
        """
        z_req = z_star.detach().requires_grad_()
        with torch.enable_grad():
            out = fn(z_req)
        batch = out.shape[0]
        mu = None if warm_start is None else warm_start.detach().reshape(batch, -1)

        def solve(vjp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor) -> torch.Tensor:
            start = v
            if mu is not None and mu.shape == v.shape:
                a = mu - vjp(mu)
                scale = (v * a).sum(1) / (a * a).sum(1).clamp_min(torch.finfo(v.dtype).tiny)
                start = scale.unsqueeze(1) * mu
            return self._solve_adjoint(vjp, v, start, solution, throw)

        return attach_implicit((z_req,), (out,), solve)[0]


class ImplicitGrad(GradMode):
    """Exact hypergradient through the augmented fixed point ``(z, x, μ)``.

    Example:
        >>> ImplicitGrad().name
        'implicit'
    """

    name = "implicit"

    def check_step_rule(self, step_rule: object) -> None:
        """Only the raw step rule has a differentiable fixed point in ``x``."""
        if step_rule not in ("raw",) and getattr(step_rule, "__name__", "") != "raw_step":
            raise ValueError(
                "grad: 'implicit' needs step_rule='raw' (sign and normalised steps have no "
                "differentiable fixed point); use grad='envelope' for attacks"
            )

    def _default_solver(self) -> BackwardSolver:
        return GMRES()

    def attach(self, aug, solution: JointSolution, *, throw: bool = False) -> None:
        """Make ``solution.z``, ``solution.x`` and ``solution.mu`` differentiable."""
        flat = aug.join(solution.z, solution.x, solution.mu).detach().requires_grad_()
        with torch.enable_grad():
            mapped, _ = aug.apply(flat, None, aug.max_iter - 1, create_graph=True)

        def vjp(w: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                (g,) = torch.autograd.grad(mapped, flat, w, retain_graph=True, allow_unused=True)
            return torch.zeros_like(w) if g is None else g

        # each block of I − ∂F/∂s is damped row-wise (α_z, the input update's gain, α_μ):
        # GMRES solves the undamped system, whose spectrum does not depend on the step sizes
        nz, nx, _ = aug.blocks
        tiny = torch.finfo(flat.dtype).tiny
        gain = torch.as_tensor(aug.update.gain(None), dtype=flat.dtype, device=flat.device)
        scale = torch.cat(
            [
                flat.new_full((flat.shape[0], nz), aug.alpha_z),
                gain.expand(flat.shape[0], nx).clamp_min(tiny),
                flat.new_full((flat.shape[0], nz), aug.alpha_mu),
            ],
            dim=1,
        )

        def hook(v: torch.Tensor) -> torch.Tensor:
            start = torch.zeros_like(v) if isinstance(self.solver, GMRES) else v
            return self._solve_adjoint(vjp, v, start, solution, throw, scale)

        attached = mapped.view_as(mapped)
        if attached.requires_grad:
            attached.register_hook(hook)
        solution.z, solution.x, solution.mu = aug.split(attached)


def get_grad_mode(grad: str | GradMode | None) -> GradMode | None:
    """A gradient mode from its name or pass an instance through.

    Args:
        grad: ``None``, ``"envelope"``, ``"implicit"`` or a :class:`GradMode`.

    Returns:
        The mode, or ``None``.

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> get_grad_mode("implicit").name
        'implicit'
    """
    if grad is None or isinstance(grad, GradMode):
        return grad
    if grad == "envelope":
        return EnvelopeGrad()
    if grad == "implicit":
        return ImplicitGrad()
    raise ValueError(f"grad: unknown mode {grad!r}; expected None, 'envelope' or 'implicit'")
