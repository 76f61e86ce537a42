"""State of one ``innerloop_ctx`` block: the joint iteration and its implicit meta-gradient.

Internal to :mod:`jiio_ext.adapters.higher`. The joint state is one ``(T, n)`` tensor, a row
``[z; φ; μ]`` per task (DEQ states of the support forward, adapted values, DEQ adjoint).

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> loop = InnerLoop(net, torch.optim.SGD(net.parameters(), lr=0.1), copy_initial_weights=False,
    ...                  override=None, track_higher_grads=True, first_order=False, context=None,
    ...                  context_arg="context", prox=1.0, tasks=None, alpha_z=None,
    ...                  alpha_mu=None, memory=5, rtol=1e-4, atol=1e-6,
    ...                  backward=AdjointSolve(50, 1e-6, 1e-10), vectorize=True)
    >>> [s.name for s in loop.slots], loop.unrolled
    (['weight', 'bias'], True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from jiio_ext.adapters._higher_backward import AdjointSolve, Gate, ModelBackward, attach_ift
from jiio_ext.adapters._higher_forward import joint_forward, solve_forward
from jiio_ext.adapters._higher_slots import make_slots
from jiio_ext.adapters._higher_tap import Forward, Tap, find_deqs
from torch import nn
from torch.func import functional_call

from jiio_ext.augmented import damped_step, joint_vjp
from jiio_ext.layout import Layout
from jiio_ext.schedules import Schedule, as_schedule
from jiio_ext.solution import Status
from jiio_ext.solvers import Anderson, EngineState, FixedPointEngine, Termination

__all__ = ["META_GRADIENTS", "InnerLoop"]

# "unrolled": the meta-gradient of the computed steps (plain damped steps, graph kept);
# "implicit": the implicit gradient of the inner fixed point (Anderson steps, one step's graph)
META_GRADIENTS = ("unrolled", "implicit")


class InnerLoop:
    """State of one ``innerloop_ctx`` block (see :func:`jiio_ext.adapters.higher.innerloop_ctx`).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> loop = InnerLoop(net, torch.optim.SGD([net.bias], lr=0.1), copy_initial_weights=True,
        ...                  override=None, track_higher_grads=True, first_order=False,
        ...                  context=None, context_arg="context", prox=1.0, tasks=2, alpha_z=None,
        ...                  alpha_mu=None, memory=5, rtol=1e-4, atol=1e-6,
        ...                  backward=AdjointSolve(50, 1e-6, 1e-10), vectorize=True)
        >>> loop.rows, loop.n_steps
        (2, 0)
    """

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
        prox: float | Sequence[float],
        tasks: int | None,
        alpha_z: float | None,
        alpha_mu: float | None,
        memory: int,
        rtol: float,
        atol: float,
        backward: AdjointSolve,
        vectorize: bool,
        meta_gradient: str = "unrolled",
        lr_scale: float | Schedule = 1.0,
        max_iter: int | None = None,
        jac_reg: float = 0.0,
        jac_probes: int = 2,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if tasks is not None and (
            isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1
        ):
            raise ValueError(f"tasks: expected None or an integer >= 1, got {tasks!r}")
        self.model = model
        self.tasks = tasks
        self.rows = tasks or 1
        self.vectorize = bool(vectorize)
        deqs = find_deqs(model)
        for name, value in (("alpha_z", alpha_z), ("alpha_mu", alpha_mu)):
            if value is not None and not deqs:
                raise TypeError(
                    f"{name}: {type(model).__name__} contains no torchdeq DEQ module (DEQBase); "
                    f"{name} applies only to DEQ models"
                )
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name}: expected a damping in (0, 1], got {value!r}")
        self.alpha_z = 0.8 if alpha_z is None else float(alpha_z)
        self.alpha_mu = 0.6 if alpha_mu is None else float(alpha_mu)
        if meta_gradient not in META_GRADIENTS:
            raise ValueError(
                f"meta_gradient: expected one of {META_GRADIENTS}, got {meta_gradient!r}"
            )
        self.unrolled = meta_gradient == "unrolled"
        self.lr_scale = as_schedule(lr_scale, "lr_scale")
        if max_iter is not None and (
            isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1
        ):
            raise ValueError(f"max_iter: expected None or an integer >= 1, got {max_iter!r}")
        self.max_iter = max_iter
        if isinstance(jac_reg, bool) or not (
            isinstance(jac_reg, (int, float)) and math.isfinite(jac_reg) and jac_reg >= 0
        ):
            raise ValueError(f"jac_reg: expected a finite number >= 0, got {jac_reg!r}")
        if isinstance(jac_probes, bool) or not isinstance(jac_probes, int) or jac_probes < 1:
            raise ValueError(f"jac_probes: expected an integer >= 1, got {jac_probes!r}")
        self.jac_reg, self.jac_probes = float(jac_reg), jac_probes
        self.exact = track_higher_grads and not first_order
        # unrolled and exact: every step keeps its graph (the meta-gradient of the computed steps)
        self.keep_graph = self.unrolled and self.exact
        self.track = track_higher_grads
        self.first_order = first_order
        self.rtol, self.atol = rtol, atol
        if backward.method not in ("anderson", "neumann"):
            raise ValueError(
                f"backward_solver: expected 'anderson' or 'neumann', got {backward.method!r}"
            )
        self.backward = AdjointSolve(**vars(backward))
        self.solver = Anderson(memory=memory, kind="II")
        self.tap = Tap(deqs, self.backward)

        named = dict(model.named_parameters())
        if copy_initial_weights:
            self.initial = {
                n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in named.items()
            }
        else:
            self.initial = named
        # what functional_call must swap in besides the adapted values (nothing: the model's own)
        self.overrides = self.initial if copy_initial_weights else {}
        self.slots = make_slots(model, opt, override, context, context_arg, self.initial)
        self.slot_layout = Layout(tuple(tuple(s.anchor.shape) for s in self.slots), True)
        ref = self.slots[0].anchor
        self.lr_vec = torch.cat(
            [torch.full((s.anchor.numel(),), s.lr, dtype=ref.dtype) for s in self.slots]
        ).to(ref.device)
        decay = [
            torch.full((s.anchor.numel(),), s.weight_decay, dtype=ref.dtype) for s in self.slots
        ]
        self.wd_vec = (
            torch.cat(decay).to(ref.device) if any(s.weight_decay for s in self.slots) else None
        )
        weights = _prox_per_group(
            prox, 1 if context is not None else len(opt.param_groups), meta_gradient
        )
        if not self.unrolled and self.exact and context is None and not all(weights):
            group = weights.index(0.0)
            raise ValueError(
                f"prox: 0 for param group {group} of opt with meta_gradient='implicit': the inner "
                "solution then does not depend on those meta-parameters, so they would get no "
                "meta-gradient; give prox > 0 (e.g. 1/(lr*K) for K steps at rate lr) or use "
                "meta_gradient='unrolled' (the gradient of the K steps, plain MAML)"
            )
        self.prox_vec = (
            torch.cat(
                [
                    torch.full((s.anchor.numel(),), weights[s.group], dtype=ref.dtype)
                    for s in self.slots
                ]
            ).to(ref.device)
            if any(weights)
            else None
        )
        self.n_steps = 0
        self.support: tuple[torch.Tensor, torch.Tensor] | None = None  # (as passed, detached)
        self.state: torch.Tensor | None = None  # (T, n) joint state [z; φ; μ]
        self.nz = 0
        self.z_shapes: list[tuple[int, ...]] = []
        # the core engine over the joint state: its step (Anderson or plain) and Termination
        self.engine: FixedPointEngine | None = None
        self.run: EngineState | None = None
        self._evaluation: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        # the unrolled mode's steps not yet observed by the engine (see _observe)
        self._unobserved: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self.last: Forward | None = None
        self.step_record: tuple[Forward, torch.Tensor, torch.Tensor] | None = None
        self.final: tuple[int, list[torch.Tensor]] | None = None

    # ----- the adapted quantity -----
    def current_params(self) -> dict[str, torch.Tensor]:
        """Fast parameters now: model parameters with the adapted ones replaced (per task)."""
        adapted = self.adapted_now()
        values = dict(self.initial)
        for slot, value in zip(self.slots, adapted):
            if not slot.is_context:
                values[slot.name] = value if self.tasks else value[0]
        return values

    def adapted_now(self) -> list[torch.Tensor]:
        """Per slot ``(T, ...)`` adapted tensors, differentiable as the mode asks."""
        if self.n_steps == 0:
            return [s.anchor.unsqueeze(0).expand(self.rows, *s.anchor.shape) for s in self.slots]
        if self.final is None or self.final[0] != self.n_steps:
            self.final = (self.n_steps, self._finalise())
        return self.final[1]

    def _finalise(self) -> list[torch.Tensor]:
        record, state_e, mapped_e = self.step_record
        if self.keep_graph:
            return self.split_phi(self.split_state(mapped_e)[1])
        parts = self.split_phi(self.split_state(mapped_e)[1].detach())
        if not self.track:
            return parts
        if self.exact:
            self._warn_unconverged()
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
            return torch.cat([record.flat(grads[:-1], w), grads[-1]], dim=1)

        def hook(v: torch.Tensor) -> torch.Tensor:
            return backward.solve(vjp, v, "meta-gradient backward")

        attached = mapped.view_as(mapped)
        attached.register_hook(hook)
        return self.split_phi(self.split_state(attached)[1])

    def split_phi(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per slot ``(T, ...)`` views of the ``φ`` block."""
        return list(self.slot_layout.unflatten(flat))

    # ----- forward -----
    def _is_support(self, args: tuple) -> bool:
        """Whether a call's first argument is the support input (same tensor or equal values)."""
        x = args[0] if args else None
        if self.n_steps == 0 or not isinstance(x, torch.Tensor) or self.support is None:
            return False
        passed, ref = self.support
        if x is passed:
            return True
        same = x.shape == ref.shape and x.dtype == ref.dtype and x.device == ref.device
        return same and bool(torch.equal(x.detach(), ref))

    def forward(self, args: tuple, kwargs: dict, params: Sequence[torch.Tensor] | None):
        """One ``fnet`` call: a joint evaluation on the support input, else a DEQ solve."""
        if params is not None:
            values = list(params)
            if len(values) != len(self.initial):
                raise ValueError(
                    f"params: expected {len(self.initial)} tensors (model.parameters() order), "
                    f"got {len(values)}"
                )
            with self.tap.active("solve", [], Gate()):
                return functional_call(self.model, dict(zip(self.initial, values)), args, kwargs)
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        support = None if first is None else (first, first.detach())
        if self._is_support(args):
            out = joint_forward(self, args, kwargs, support)
        else:
            out = solve_forward(self, args, kwargs, support)
        return out

    # ----- the joint state -----
    def split_state(self, state: torch.Tensor):
        """``(z, φ, μ)`` column blocks of a ``(T, n)`` joint state."""
        nz, n = self.nz, state.shape[1]
        return state[:, :nz], state[:, nz : n - nz], state[:, n - nz :]

    def _init_state(self, record: Forward) -> None:
        like = self.slots[0].anchor
        self.z_shapes = record.z_shapes()
        z = record.flat([t.detach() for t in record.z], like)
        phi = record.flat([p.detach() for p in record.phi], like)
        self.state = torch.cat([z, phi, torch.zeros_like(z)], dim=1)
        self.nz = z.shape[1]
        blocks = [
            (name, size, scale)
            for name, size, scale in (
                ("z", z.shape[1], self.alpha_z),
                ("x", phi.shape[1], 1.0),
                ("mu", z.shape[1], self.alpha_mu),
            )
            if size
        ]
        # the unrolled meta-gradient differentiates plain steps; the implicit one, Anderson's
        # (the unrolled steps set the engine's proposal themselves: see step)
        self.engine = FixedPointEngine(
            self._evaluated,
            solver=self.solver,
            termination=Termination(
                rtol=self.rtol,
                atol=self.atol,
                blocks=tuple(b[1] for b in blocks),
                block_scale=tuple(b[2] for b in blocks),
            ),
            block_names=tuple(b[0] for b in blocks),
            subset=False,
            traces=False,
        )
        self.run = self.engine.init(self.state)

    def _evaluated(self, state: torch.Tensor, rows: torch.Tensor, k: int):
        """The engine's map: the step's evaluation, made from the user's support forward."""
        return self._evaluation

    def _objective(self, record: Forward, loss: torch.Tensor) -> torch.Tensor:
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
        if self.prox_vec is None and self.wd_vec is None:
            return loss
        phi = record.flat(record.phi, loss)
        total = loss
        if self.prox_vec is not None:
            anchor = torch.cat([s.anchor.reshape(-1) for s in self.slots])
            anchor = anchor if self.exact else anchor.detach()
            total = total + 0.5 * (self.prox_vec * (phi - anchor).pow(2)).sum(dim=1)
        if self.wd_vec is not None:
            total = total + 0.5 * (self.wd_vec * phi.pow(2)).sum(dim=1)
        return total

    def _grads(self, record: Forward, total: torch.Tensor, mu: torch.Tensor, create_graph: bool):
        """One VJP of ``[total, f(z)]`` with ``[1, μ]``: ``(g_z, g_φ, f(z))`` as rows."""
        mu_parts = record.split(mu, self.z_shapes)
        with torch.enable_grad(), record.gate.off():  # the core map's VJP
            grads = joint_vjp(
                total.sum(),
                record.images,
                mu_parts,
                [*record.z, *record.phi],
                create_graph=create_graph,
                retain_graph=self.exact or create_graph or self.jac_reg > 0,
            )
        nz = len(record.z)
        return (
            record.flat(grads[:nz], mu),
            record.flat(grads[nz:], mu),
            record.flat(record.images, mu),
        )

    def _apply(self, z, phi, mu, image, g_z, g_phi, lr: torch.Tensor, graph: bool) -> torch.Tensor:
        """The augmented map's damped step (the core's), with ``φ⁺ = φ − lr · g_φ``."""
        alphas = (self.alpha_z, self.alpha_mu)
        return damped_step(z, image, phi - lr * g_phi, mu, g_z, *alphas, differentiable=graph)

    def _lr(self, k: int) -> torch.Tensor:
        """The φ-step of step ``k``: ``opt``'s lr per group times the ``lr_scale`` schedule."""
        scale = self.lr_scale(k, self.max_iter or k + 1)
        return self.lr_vec if scale == 1.0 else self.lr_vec * scale

    def _map_with_graph(self, record: Forward, state_e: torch.Tensor):
        """``F`` at the last evaluated state with a graph to the state and the meta-parameters."""
        mu = self.split_state(state_e)[2].detach().requires_grad_()
        with torch.enable_grad():
            g_z, g_phi, image = self._grads(record, record.total, mu, create_graph=True)
            z, phi = record.flat(record.z, mu), record.flat(record.phi, mu)
            mapped = self._apply(z, phi, mu, image, g_z, g_phi, self._lr(self.n_steps - 1), True)
        return mapped, record.leaves(mu)

    def _unrolled_step(self, record: Forward, total: torch.Tensor) -> torch.Tensor:
        """One damped step with its graph to the previous state and to the meta-parameters.

        At the first step the DEQ states are the leaves ``z*`` of the first forward's solve;
        :class:`_Reconnect` sends their cotangent through the DEQ's implicit backward
        (``dz*/dθ``), so the chain of steps is differentiable end to end.
        """
        first = self.n_steps == 0
        like = total
        with torch.enable_grad():
            z = record.flat(record.z, like) if record.z_rows is None else record.z_rows
            if first:
                phi = record.flat(record.values, like)
            else:
                phi = record.flat(record.phi, like) if record.phi_rows is None else record.phi_rows
            mu = self.split_state(self.state)[2]
            g_z, g_phi, image = self._grads(record, total, mu, create_graph=True)
            mapped = self._apply(z, phi, mu, image, g_z, g_phi, self._lr(self.n_steps), True)
            if first and record.z:
                fixed = _attach_per_task(record, self.backward)
                # every dependence on z* now goes through the leaves and _Reconnect: the first
                # forward's own implicit backward would count the output's share twice
                record.gate.active = False
                mapped = _Reconnect.apply(mapped, record.flat(fixed, like), record)
        return mapped

    def step(self, loss: torch.Tensor) -> list[torch.Tensor]:
        """One joint iteration from the latest support forward; the adapted values after it."""
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
        if self.keep_graph:
            mapped = self._unrolled_step(record, total)
        else:
            z, phi, mu = self.split_state(state)  # the values of the record's leaves
            with torch.no_grad():
                g_z, g_phi, image = self._grads(record, total, mu, create_graph=False)
                lr = self._lr(self.n_steps)
                mapped = self._apply(z, phi, mu, image, g_z, g_phi, lr, False)
        # one step of the core engine: residuals, Termination's references, the solver's step
        evaluation = (mapped.detach(), {"objective": total.detach()})
        if self.unrolled:  # the plain step itself (with its graph when the graph is kept)
            # the engine only reports on plain steps: it observes them when the status is read
            self._unobserved.append(evaluation)
            nxt = mapped
        else:
            self._evaluation = evaluation
            with torch.no_grad():
                self.run = self.engine.step(self.run)
            self._evaluation = None
            nxt = self.run.proposal
        self.step_record = (record, state, mapped)
        self.state = nxt
        self.n_steps += 1
        return [p.detach() for p in self.split_phi(self.split_state(mapped)[1])]

    def jacobian_penalty(self) -> torch.Tensor:
        """``jac_reg ×`` a Hutchinson estimate of ``||∂f/∂z||_F² / dim(z)`` at the latest step.

        Taken at the DEQ states of the latest joint step (a point of the inner trajectory, the
        reference's trajectory regularisation), averaged over tasks and ``jac_probes`` Gaussian
        probes; differentiable in the meta-parameters. ``0`` when ``jac_reg`` is 0.
        """
        if self.step_record is None:
            raise RuntimeError("jacobian_penalty: take a diffopt.step first")
        record = self.step_record[0]
        ref = self.slots[0].anchor
        if self.jac_reg == 0 or not record.z or not self.track:
            return ref.new_zeros(())
        dim = sum(t[0].numel() for t in record.z) if record.batched else self.nz
        total = ref.new_zeros(())
        with torch.enable_grad(), record.gate.off():
            for _ in range(self.jac_probes):
                probes = [torch.randn_like(t) for t in record.images]
                grads = torch.autograd.grad(
                    record.images, record.z, probes, create_graph=True, allow_unused=True
                )
                total = total + sum(g.pow(2).sum() for g in grads if g is not None)
        return self.jac_reg * total / (self.jac_probes * self.rows * dim)

    def _warn_unconverged(self) -> None:
        """The implicit meta-gradient assumes a fixed point: say when the state is not one."""
        status = self.status
        failed = int((status != int(Status.CONVERGED)).sum())
        if not failed:
            return
        worst = ", ".join(f"{k} {float(v.max()):.2e}" for k, v in self.residuals.items())
        warnings.warn(
            f"meta-gradient: the inner state is not converged at the query for {failed} of "
            f"{status.numel()} task(s) after {self.n_steps} steps (largest RMS residuals: "
            f"{worst}; rtol {self.rtol:g}, atol {self.atol:g}); meta_gradient='implicit' "
            "assumes a fixed point, so the meta-gradient is approximate: take more steps, or "
            "use meta_gradient='unrolled' (see diffopt.status and diffopt.residuals)",
            RuntimeWarning,
            stacklevel=7,  # the user's fnet(x_qry) call
        )

    # ----- status (computed when read, by the engine's Termination) -----
    def _observe(self) -> None:
        """Let the engine observe the plain steps taken since the status was last read.

        The unrolled steps are the map's own steps (the engine proposes nothing), so the
        engine's residuals and Termination references only serve the status: they are
        computed when it is read, step by step as if observed at each step.
        """
        with torch.no_grad():
            for evaluation in self._unobserved:
                self._evaluation = evaluation
                self.run = self.engine.evaluate(self.run)
                self.run.proposal = evaluation[0]
        self._evaluation = None
        self._unobserved.clear()

    @property
    def status(self) -> torch.Tensor:
        """Per-task status codes after the latest step ``(T,)`` (on the CPU)."""
        self._observe()
        if self.run is None or self.run.res is None:
            return torch.full((self.rows,), int(Status.MAX_ITER), dtype=torch.long)
        return self.engine.terminate(self.run)[1].cpu()

    @property
    def residuals(self) -> dict[str, torch.Tensor]:
        """Per-task RMS residuals of the ``z``, ``x`` and ``mu`` blocks after the latest step."""
        self._observe()
        if self.run is None or self.run.res is None:
            return {}
        return {name: self.run.res[:, i] for i, name in enumerate(self.engine.block_names)}


def _prox_per_group(
    prox: float | Sequence[float] | None, groups: int, meta_gradient: str
) -> list[float]:
    """The proximal weight of each param group: one number for all, or one per group.

    ``None``: no proximal term for the unrolled meta-gradient (the user's loop as written);
    the implicit one needs an explicit weight.
    """
    if prox is None:
        if meta_gradient == "implicit":
            raise ValueError(
                "prox: meta_gradient='implicit' differentiates the solution of the proximal "
                "problem min L(φ) + prox/2 ||φ - φ₀||², so it needs an explicit prox > 0; "
                "K SGD steps at rate lr act like prox ≈ 1/(lr*K)"
            )
        prox = 0.0
    values = list(prox) if isinstance(prox, (list, tuple)) else [prox] * groups
    if len(values) != groups:
        raise ValueError(
            f"prox: expected one number or one per param group of opt ({groups}), got {len(values)}"
        )
    for value in values:
        if isinstance(value, bool) or not (
            isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
        ):
            raise ValueError(f"prox: expected finite numbers >= 0, got {prox!r}")
    return [float(v) for v in values]


def _attach_per_task(record: Forward, backward: AdjointSolve) -> list[torch.Tensor]:
    """The first forward's ``f(z*)`` with the DEQ's implicit backward, one row per task.

    The adjoint is solved as the model's own backward would solve it (its DEQs' settings,
    :class:`~jiio_ext.adapters._higher_backward.ModelBackward`), no tighter than its forward.
    """
    model = ModelBackward.tightest(record.limits)
    if record.batched:
        return list(attach_ift(tuple(record.z), tuple(record.images), Gate(), backward, 1, model))
    per = len(record.z) // record.rows
    fixed: list[torch.Tensor] = []
    for r in range(record.rows):
        part = slice(r * per, (r + 1) * per)
        state, image = tuple(record.z[part]), tuple(record.images[part])
        fixed.extend(attach_ift(state, image, Gate(), backward, 0, model))
    return fixed


class _Reconnect(torch.autograd.Function):
    """Identity on the first step's output, whose backward also reaches the DEQ solve.

    The cotangent of the first step's leaves ``z*`` is sent to ``fixed`` (``f(z*)`` with the
    DEQ's implicit backward attached), i.e. through ``dz*/dθ``.
    """

    @staticmethod
    def forward(ctx: Any, mapped: torch.Tensor, fixed: torch.Tensor, record: Forward):
        ctx.mapped, ctx.record = mapped, record
        return mapped.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        record = ctx.record
        with torch.enable_grad():
            grads = torch.autograd.grad(
                ctx.mapped, record.z, grad, retain_graph=True, allow_unused=True
            )
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, record.z)]
        return grad, record.flat(grads, grad), None
