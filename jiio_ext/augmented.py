"""The augmented map ``F(z, x, μ)`` of JIIO: one ``f`` evaluation and one VJP per application.

With ``z_out = f(z, x)`` and per-sample losses ``L = objective(z, x)``, a single
vector-Jacobian product of ``[L, z_out]`` with ``[1, μ]`` gives both
``g_z = ∂L/∂z + (∂f/∂z)ᵀ μ`` and ``g_x = ∂L/∂x + (∂f/∂x)ᵀ μ``; then (Jacobi order)

    z⁺ = z + α_z (z_out − z),   μ⁺ = μ + α_μ (g_z − μ),   x⁺ = Π_C(x − α_x · step(g_x)).

Example:
    >>> import torch
    >>> from jiio_ext.augmented import AugmentedMap
    >>> f = lambda z, x: 0.5 * z + x
    >>> objective = lambda z, x: (z - 1.0).pow(2).sum(dim=1)
    >>> aug = AugmentedMap(f, objective, torch.zeros(2, 3), torch.zeros(2, 3))
    >>> new_state, aux = aug(aug.join(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3)),
    ...                      torch.arange(2), 0)
    >>> new_state.shape, aux["objective"].tolist()
    (torch.Size([2, 9]), [3.0, 3.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

from jiio_ext.constraints import Constraint
from jiio_ext.layout import Layout, State, as_tuple
from jiio_ext.updates import Adaptive, InputUpdate

__all__ = [
    "AugmentedMap",
    "Objective",
    "call_objective",
    "check_f_output",
    "damped_step",
    "joint_vjp",
    "merge_rows",
]

# Per-sample objective: objective(z, x) or objective(z, x, targets) -> losses of shape (b,).
Objective = Callable[..., torch.Tensor]
Targets = torch.Tensor | tuple[torch.Tensor, ...] | None


def _select_rows(targets: Targets, index: torch.Tensor | None) -> Targets:
    if targets is None or index is None:
        return targets
    if isinstance(targets, torch.Tensor):
        return targets.index_select(0, index)
    return tuple(t.index_select(0, index) for t in targets)


def call_objective(
    objective: Objective,
    z: State,
    x: torch.Tensor,
    targets: Targets,
    index: torch.Tensor | None,
    *,
    aux: Any = None,
    has_aux: bool = False,
) -> torch.Tensor:
    """Evaluate the per-sample objective and check that it returned shape ``(b,)``.

    Args:
        objective: ``objective(z, x)`` or, with ``targets``, ``objective(z, x, targets)``;
            with ``has_aux``, ``objective(z, x, aux[, targets])``.
        z: state of the active samples.
        x: inputs of the active samples.
        targets: per-sample data sliced along with the active samples, or ``None``.
        index: batch positions of the active samples (``None``: the whole batch).
        aux: the auxiliary output of ``f`` for these samples (with ``has_aux``).
        has_aux: pass ``aux`` to the objective after ``x``.

    Returns:
        The per-sample losses.

    Raises:
        ValueError: when the output is not a ``(b,)`` tensor.

    Example:
        >>> import torch
        >>> call_objective(lambda z, x: z.sum(1), torch.ones(2, 3), torch.ones(2, 1), None, None)
        tensor([3., 3.])
    """
    extra = (aux,) if has_aux else ()
    if targets is None:
        loss = objective(z, x, *extra)
    else:
        loss = objective(z, x, *extra, _select_rows(targets, index))
    batch = x.shape[0]
    if not isinstance(loss, torch.Tensor) or tuple(loss.shape) != (batch,):
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"objective: expected per-sample losses of shape ({batch},), got {got}")
    if not torch.is_floating_point(loss):
        raise TypeError(f"objective: expected floating-point losses, got dtype {loss.dtype}")
    return loss


def merge_rows(full: Any, part: Any, index: torch.Tensor) -> Any:
    """``full`` with the rows ``index`` replaced by ``part``, leaf by leaf over a pytree.

    Tensor leaves of ``full`` with the batch as leading dimension take ``part``'s rows at
    ``index``; any other leaf (a scalar, a non-tensor) is ``part``'s own.

    Args:
        full: a pytree of the whole batch (from an earlier evaluation).
        part: the same pytree for the samples at ``index``.
        index: batch positions of ``part``'s rows.

    Returns:
        The merged pytree (differentiable with respect to ``part``).

    Raises:
        ValueError: when the two pytrees differ in structure.

    Example:
        >>> import torch
        >>> full = {"y": torch.zeros(3, 2), "n": torch.tensor(0.0)}
        >>> part = {"y": torch.ones(1, 2), "n": torch.tensor(5.0)}
        >>> merged = merge_rows(full, part, torch.tensor([1]))
        >>> merged["y"][:, 0].tolist(), float(merged["n"])
        ([0.0, 1.0, 0.0], 5.0)
    """
    full_leaves, spec = pytree.tree_flatten(full)
    part_leaves, part_spec = pytree.tree_flatten(part)
    if spec != part_spec:
        raise ValueError(f"f: the aux output changed structure ({spec} vs {part_spec})")
    rows = index.numel()

    def merge(whole: Any, piece: Any) -> Any:
        per_sample = (
            isinstance(whole, torch.Tensor)
            and isinstance(piece, torch.Tensor)
            and whole.dim() >= 1
            and piece.dim() >= 1
            and piece.shape[0] == rows
            and whole.shape[1:] == piece.shape[1:]
        )
        return whole.index_copy(0, index, piece) if per_sample else piece

    return pytree.tree_unflatten([merge(w, p) for w, p in zip(full_leaves, part_leaves)], spec)


def _detach_tree(tree: Any) -> Any:
    return pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


def check_f_output(
    z_out: State, layout: Layout, batch: int, *, like: torch.Tensor | None = None
) -> None:
    """Raise a ValueError when ``f`` returned a state of another structure or shape.

    Args:
        z_out: what ``f`` returned.
        layout: layout of ``z0``.
        batch: expected batch size.
        like: a tensor whose dtype and device every part must have (a ``TypeError`` for
            another dtype, a ``ValueError`` for another device).

    Example:
        >>> import torch
        >>> check_f_output(torch.zeros(2, 3), Layout.of(torch.zeros(2, 3)), 2)
    """
    parts = as_tuple(z_out) if isinstance(z_out, (torch.Tensor, tuple, list)) else None
    shapes = None if parts is None else tuple(tuple(p.shape) for p in parts)
    expected = tuple((batch, *s) for s in layout.shapes)
    if shapes != expected:
        raise ValueError(f"f: expected a state of shapes {expected} (like z0), got {shapes}")
    for part in parts if like is not None else ():
        if part.dtype != like.dtype:
            raise TypeError(f"f: returned dtype {part.dtype}; z0 and x0 are {like.dtype}")
        if part.device != like.device:
            raise ValueError(f"f: returned a tensor on {part.device}; z0, x0 are on {like.device}")


def joint_vjp(
    loss: torch.Tensor,
    outputs: Sequence[torch.Tensor],
    mu: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> list[torch.Tensor]:
    """The augmented map's one VJP: of ``[L, f(z)]`` with ``[1, μ]`` at ``inputs`` (``z``, ``x``).

    Gives ``∂L/∂z + (∂f/∂z)ᵀ μ`` and ``∂L/∂x + (∂f/∂x)ᵀ μ`` together (zeros for an input
    nothing depends on); shared by :class:`AugmentedMap` and the higher adapter's inner loop.

    Args:
        loss: the losses (any shape; every entry has cotangent 1).
        outputs: the parts of ``f(z, x)``.
        mu: their cotangents (the adjoint), part by part.
        inputs: the tensors to differentiate with respect to.
        create_graph: keep the graph of the result.
        retain_graph: keep the forward graph (default: ``create_graph``).

    Example:
        >>> import torch
        >>> z = torch.ones(1, 2, requires_grad=True)
        >>> out = 3.0 * z
        >>> [g.tolist() for g in joint_vjp(z.sum(1), [out], [torch.ones(1, 2)], [z])]
        [[[4.0, 4.0]]]
    """
    terms = [loss, *outputs]
    cotangents = [torch.ones_like(loss), *mu]
    keep = [i for i, o in enumerate(terms) if o.requires_grad]
    grads = (
        torch.autograd.grad(
            [terms[i] for i in keep],
            list(inputs),
            [cotangents[i] for i in keep],
            allow_unused=True,
            create_graph=create_graph,
            retain_graph=retain_graph,
        )
        if keep
        else [None] * len(inputs)
    )
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]


def damped_step(
    z: torch.Tensor,
    z_out: torch.Tensor,
    x_new: torch.Tensor,
    mu: torch.Tensor,
    g_z: torch.Tensor,
    alpha_z: float,
    alpha_mu: float,
    *,
    differentiable: bool = False,
) -> torch.Tensor:
    """The damped update of the augmented map on flat blocks: the next flat state ``(b, n)``.

    ``[z + α_z (z_out − z); x⁺; μ + α_μ (g_z − μ)]``, from the blocks ``(b, n_z)``, ``(b, n_x)``,
    ``(b, n_z)``; shared by :class:`AugmentedMap` and the higher adapter's inner loop.

    Args:
        z: the forward block of the state.
        z_out: ``f(z, x)``.
        x_new: the next input block (already stepped and projected).
        mu: the adjoint block.
        g_z: ``∂L/∂z + (∂f/∂z)ᵀ μ``.
        alpha_z: damping of the forward block.
        alpha_mu: damping of the adjoint block.
        differentiable: keep the graph (else the damping is written straight into the
            output's blocks, with no temporaries).

    Example:
        >>> import torch
        >>> one = torch.ones(1, 2)
        >>> damped_step(0 * one, one, 3 * one, 0 * one, 2 * one, 0.5, 0.25).tolist()
        [[0.5, 0.5, 3.0, 3.0, 0.5, 0.5]]
    """
    if differentiable:
        return torch.cat([z + alpha_z * (z_out - z), x_new, mu + alpha_mu * (g_z - mu)], dim=1)
    sizes = [z.shape[1], x_new.shape[1], mu.shape[1]]
    out = z.new_empty((z.shape[0], sum(sizes)))
    z_slot, x_slot, mu_slot = torch.split(out, sizes, dim=1)
    torch.lerp(z, z_out, alpha_z, out=z_slot)
    torch.lerp(mu, g_z, alpha_mu, out=mu_slot)
    x_slot.copy_(x_new)
    return out


class AugmentedMap:
    """The damped augmented map over flat per-sample states ``[z; x; μ]``.

    Args:
        f: ``f(z, x) -> z`` (tensor or tuple state, batch first); with ``has_aux``,
            ``f(z, x) -> (z, aux)``.
        objective: per-sample losses ``objective(z, x[, targets]) -> (B,)``; with
            ``has_aux``, ``objective(z, x, aux[, targets])``.
        z_like: a state with the structure of ``z`` (for the layout).
        x_like: a tensor with the shape of ``x``.
        constraint: set for ``x`` or ``None``.
        update: the input update (default :class:`~jiio_ext.updates.Adaptive`); the caller
            starts it (``update.start(x0, constraint)``) before the first application.
        max_iter: budget, passed to the update's schedule.
        alpha_z: damping of the forward block.
        alpha_mu: damping of the adjoint block.
        targets: per-sample data passed to the objective (sliced with the active samples).
        has_aux: ``f`` also returns an auxiliary output ``aux`` (a pytree of tensors with the
            batch as leading dimension, e.g. a model's output), which the objective receives.

    When only some samples are active and no ``targets`` are given, ``f`` runs on the active
    samples alone (the expensive part), while the objective sees a full batch in which the
    frozen samples keep their last state (and their last ``aux``, merged by
    :func:`merge_rows`); so an objective that closes over batch data (targets, labels, masks)
    works unchanged. With ``targets``, the objective runs on the active rows. :attr:`aux` is
    the whole batch's ``aux`` of the latest evaluation.

    Example:
        >>> import torch
        >>> f = lambda z, x: 0.5 * z + x
        >>> objective = lambda z, x: (z - 1.0).pow(2).sum(dim=1)
        >>> aug = AugmentedMap(f, objective, torch.zeros(2, 3), torch.zeros(2, 3), alpha_z=1.0)
        >>> aug.blocks  # sizes of the z, x and μ blocks of the flat state
        (3, 3, 3)
        >>> state = aug.join(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
        >>> new_state, losses = aug.apply(state, None, 0)
        >>> z, x, mu = aug.split(new_state)
        >>> z[0].tolist(), losses.tolist()  # z⁺ = f(0, 1) with α_z = 1; L at z = 0
        ([1.0, 1.0, 1.0], [3.0, 3.0])
    """

    def __init__(
        self,
        f: Callable[[State, torch.Tensor], State],
        objective: Objective,
        z_like: State,
        x_like: torch.Tensor,
        *,
        constraint: Constraint | None = None,
        update: InputUpdate | None = None,
        max_iter: int = 100,
        alpha_z: float = 0.8,
        alpha_mu: float = 0.6,
        targets: Targets = None,
        autocast: torch.dtype | None = None,
        has_aux: bool = False,
    ) -> None:
        self.f = f
        self.has_aux = has_aux
        self.autocast = autocast
        self.objective = objective
        self.z_layout = Layout.of(z_like)
        self.x_layout = Layout.of(x_like)
        self.constraint = constraint
        self.update = update if update is not None else Adaptive()
        self.update.start(x_like, constraint)
        self.max_iter = max_iter
        self.alpha_z = alpha_z
        self.alpha_mu = alpha_mu
        self.targets = targets
        self.f_evals = 0
        self.vjps = 0
        self._z_full: tuple[torch.Tensor, ...] | None = None
        self._x_full: torch.Tensor | None = None
        self._aux_full: Any = None

    @property
    def aux(self) -> Any:
        """The whole batch's ``aux`` at the latest evaluation (frozen rows: their last one)."""
        return self._aux_full

    def layer(self, z: State, x: torch.Tensor) -> State:
        """``f(z, x)`` without its auxiliary output: the next state alone."""
        out = self.f(z, x)
        return out[0] if self.has_aux else out

    def _objective(
        self, z: State, x: torch.Tensor, index: torch.Tensor | None, aux: Any = None
    ) -> torch.Tensor:
        """Per-sample losses of the given rows; see the class docstring for frozen rows."""
        full = index is None or self._x_full is None or index.numel() == self._x_full.shape[0]
        extra = {"has_aux": self.has_aux}
        aux_all = aux
        if self.has_aux:
            aux_all = aux if full else merge_rows(self._aux_full, aux, index)
            self._aux_full = _detach_tree(aux_all)
        if full or self.targets is not None:
            loss = call_objective(self.objective, z, x, self.targets, index, aux=aux, **extra)
        else:
            z_full = tuple(
                buf.index_copy(0, index, part) for buf, part in zip(self._z_full, as_tuple(z))
            )
            z_arg = z_full if self.z_layout.is_tuple else z_full[0]
            x_all = self._x_full.index_copy(0, index, x)
            loss = call_objective(
                self.objective, z_arg, x_all, None, None, aux=aux_all, **extra
            ).index_select(0, index)
        if index is None or full:
            self._z_full = tuple(part.detach() for part in as_tuple(z))
            self._x_full = x.detach()
        else:
            self._z_full = tuple(
                buf.index_copy(0, index, part.detach())
                for buf, part in zip(self._z_full, as_tuple(z))
            )
            self._x_full = self._x_full.index_copy(0, index, x.detach())
        return loss

    @property
    def blocks(self) -> tuple[int, int, int]:
        """Sizes of the z, x and μ blocks of the flat state."""
        nz = self.z_layout.numel
        return (nz, self.x_layout.numel, nz)

    def join(self, z: State, x: torch.Tensor, mu: State) -> torch.Tensor:
        """Flat ``(B, n)`` state from its three parts."""
        return torch.cat(
            [self.z_layout.flatten(z), self.x_layout.flatten(x), self.z_layout.flatten(mu)], dim=1
        )

    def split(self, flat: torch.Tensor) -> tuple[State, torch.Tensor, State]:
        """The three parts ``(z, x, μ)`` of a flat state, as contiguous tensors.

        Column blocks of ``(B, n)`` are strided views; layers such as convolutions run much
        slower on them (measured: +50 % for f and its VJP on the latent decoder), so the
        parts are copied into contiguous memory, which costs far less.
        """
        z, x, mu = self._split_flat(flat)
        return self.z_layout.unflatten(z), self.x_layout.unflatten(x), self.z_layout.unflatten(mu)

    def _split_flat(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three flat blocks of ``flat``, each contiguous."""
        z, x, mu = (part.contiguous() for part in torch.split(flat, list(self.blocks), dim=1))
        return z, x, mu

    def _call_f(self, z: State, x: torch.Tensor) -> tuple[State, Any]:
        """``(f(z, x), aux)``, under autocast when asked (the state cast back to its dtype).

        ``aux`` is ``None`` without ``has_aux``.
        """
        if self.autocast is None:
            return self._split_aux(self.f(z, x))
        with torch.autocast(device_type=x.device.type, dtype=self.autocast):
            out, aux = self._split_aux(self.f(z, x))
        parts = tuple(o.to(t.dtype) for o, t in zip(as_tuple(out), as_tuple(z)))
        return (parts if isinstance(out, tuple) else parts[0]), aux

    def _split_aux(self, out: Any) -> tuple[State, Any]:
        if not self.has_aux:
            return out, None
        if not isinstance(out, tuple) or len(out) != 2:
            got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
            raise ValueError(f"f: with has_aux=True, expected a pair (z_next, aux), got {got}")
        return out

    def evaluate(
        self,
        z: State,
        x: torch.Tensor,
        mu: State,
        index: torch.Tensor | None,
        *,
        create_graph: bool = False,
    ) -> tuple[State, torch.Tensor, State, torch.Tensor]:
        """One ``f`` evaluation and one VJP: ``(z_out, L, g_z, g_x)``.

        Args:
            z: states (leaves requiring grad are created from them unless ``create_graph``).
            x: inputs.
            mu: adjoint states.
            index: batch positions of these samples (for ``targets`` and the constraint).
            create_graph: keep the graph of ``g_z``, ``g_x`` (for differentiating ``F``).

        Returns:
            ``f(z, x)``, the per-sample losses, ``g_z`` and ``g_x``.
        """
        if not create_graph:
            z = tuple(t.detach().requires_grad_() for t in as_tuple(z))
            z = z if self.z_layout.is_tuple else z[0]
            x = x.detach().requires_grad_()
        z_parts = as_tuple(z)
        with torch.enable_grad():
            z_out, aux = self._call_f(z, x)
            check_f_output(z_out, self.z_layout, x.shape[0], like=x)
            loss = self._objective(z, x, index, aux)
            out_parts = as_tuple(z_out)
            grads = joint_vjp(
                loss, out_parts, as_tuple(mu), [*z_parts, x], create_graph=create_graph
            )
        self.f_evals += 1
        self.vjps += 1
        g_z = tuple(grads[:-1])
        g_z = g_z if self.z_layout.is_tuple else g_z[0]
        if not create_graph:
            z_out = tuple(t.detach() for t in out_parts)
            z_out = z_out if self.z_layout.is_tuple else z_out[0]
            loss = loss.detach()
        return z_out, loss, g_z, grads[-1]

    def project(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """Projection of ``x`` onto the constraint (identity without one)."""
        return x if self.constraint is None else self.constraint.project(x, index)

    def stationarity(
        self, x: torch.Tensor, g_x: torch.Tensor, index: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-sample RMS of the projected gradient ``(x − Π_C(x − D g)) / D`` (``x`` in the set).

        ``D`` is the update's last gain, so the measure has the gradient's units whatever the
        step size: without a constraint it is ``rms(g)``, and it vanishes exactly at projected
        stationarity.
        """
        if self.constraint is None:  # unconstrained: the projected gradient is the gradient
            return g_x.flatten(1).pow(2).mean(dim=1).sqrt()
        gain = self.update.gain(index)
        if isinstance(gain, torch.Tensor):
            gain = gain.view_as(x).clamp_min(torch.finfo(x.dtype).tiny)
        moved = x - self.project(x - gain * g_x, index)
        return (moved / gain).flatten(1).pow(2).mean(dim=1).sqrt()

    def apply(
        self, flat: torch.Tensor, index: torch.Tensor | None, k: int, *, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``F`` on flat states: the next flat state and the per-sample objective."""
        new_flat, aux = self.apply_aux(flat, index, k, create_graph=create_graph)
        return new_flat, aux["objective"]

    def apply_aux(
        self, flat: torch.Tensor, index: torch.Tensor | None, k: int, *, create_graph: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``F`` on flat states: the next flat state, the objective and the stationarity."""
        zf, xf, muf = self._split_flat(flat)
        z, x, mu = (
            self.z_layout.unflatten(zf),
            self.x_layout.unflatten(xf),
            self.z_layout.unflatten(muf),
        )
        if self.constraint is not None:  # an accelerated iterate may lie outside the set
            x = self.project(x, index)
        z_out, loss, g_z, g_x = self.evaluate(z, x, mu, index, create_graph=create_graph)
        step = self.update(g_x, index, k, self.max_iter, frozen=create_graph, objective=loss)
        x_new = self.x_layout.flatten(self.project(x - step, index))
        z_out, g_z = self.z_layout.flatten(z_out), self.z_layout.flatten(g_z)
        alphas = (self.alpha_z, self.alpha_mu)
        if create_graph:
            return damped_step(zf, z_out, x_new, muf, g_z, *alphas, differentiable=True), {
                "objective": loss
            }
        aux = {"objective": loss, "stationarity": self.stationarity(x, g_x, index)}
        return damped_step(zf, z_out, x_new, muf, g_z, *alphas), aux

    def __call__(
        self, flat: torch.Tensor, index: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The engine's map interface: ``(F(s), {"objective": L, "stationarity": G})``."""
        return self.apply_aux(flat, index, k)
