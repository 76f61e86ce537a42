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

import warnings
from collections.abc import Callable

import torch

from jiio_ext.krylov import GMRES, gmres
from jiio_ext.layout import Layout
from jiio_ext.solution import JointSolution, JointSolveError, Status
from jiio_ext.solvers import Anderson, DampedIteration, FixedPointResult, fixed_point

BackwardSolver = Anderson | DampedIteration | GMRES

__all__ = ["EnvelopeGrad", "GradMode", "ImplicitGrad", "get_grad_mode"]


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
        if isinstance(self.solver, GMRES):
            unscale = torch.ones_like(v) if scale is None else scale.reciprocal()
            result = gmres(
                lambda y: unscale * y - vjp(unscale * y),
                v,
                start / unscale,
                max_iter=budget,
                rtol=self.rtol,
                atol=self.atol,
                restart=self.solver.restart,
            )
            result.state = unscale * result.state
        else:

            def linear_map(w: torch.Tensor, index: torch.Tensor, k: int):
                return vjp(w) + v, {}

            result = fixed_point(
                linear_map,
                start,
                solver=self.solver,
                max_iter=budget,
                rtol=self.rtol,
                atol=self.atol,
                subset=False,
                balance=False,
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
        layout: Layout = aug.z_layout
        x_star = solution.x.detach()

        def f_flat(z_flat: torch.Tensor) -> torch.Tensor:
            return layout.flatten(aug.f(layout.unflatten(z_flat), x_star))

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
        shape = out.shape
        batch = shape[0]

        def vjp(w: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                (g,) = torch.autograd.grad(out, z_req, w.view(shape), retain_graph=True)
            return g.reshape(batch, -1)

        mu = None if warm_start is None else warm_start.detach().reshape(batch, -1)

        def hook(v: torch.Tensor) -> torch.Tensor:
            v_flat = v.reshape(batch, -1)
            start = v_flat
            if mu is not None and mu.shape == v_flat.shape:
                a = mu - vjp(mu)
                scale = (v_flat * a).sum(1) / (a * a).sum(1).clamp_min(torch.finfo(v.dtype).tiny)
                start = scale.unsqueeze(1) * mu
            return self._solve_adjoint(vjp, v_flat, start, solution, throw).view(shape)

        attached = out.view_as(out)
        if attached.requires_grad:
            attached.register_hook(hook)
        return attached


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
