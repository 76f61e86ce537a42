"""Meta-gradient methods of ``jiio train meta``: JIIO and three baselines, on a batch of tasks.

Every method adapts the context and head of a :class:`~jiio_ext.apps.tasks.meta_models.FiLMDEQNet`
(so each inner step moves the DEQ's fixed point) and leaves the meta-gradient of the mean
query loss in the model's ``.grad``.

* ``jiio``: :func:`jiio_ext.adapters.higher.innerloop_ctx`, all tasks as one batched joint
  fixed point of ``jiio_steps`` iterations; exact implicit meta-gradient.
* ``maml``: higher's ``innerloop_ctx`` (unrolled, second order) through the DEQ, ``maml_steps``
  SGD steps per task, each a full torchdeq Anderson solve warm-started from the previous one.
* ``fomaml``: first-order MAML (the same inner steps, query gradient at the adapted
  parameters applied to the initial ones).
* ``imaml``: nested iMAML: gradient descent on ``support + prox/2 ||φ − φ₀||²`` to convergence
  (``imaml_steps``, warm-started DEQ solves), then the implicit meta-gradient by conjugate
  gradients on ``(H + λI) w = ∇_φ L_query`` with finite-difference Hessian-vector products
  (each two DEQ solves with IFT gradients), including the mixed term for the DEQ weights.

Example:
    >>> import torch
    >>> from jiio_ext.apps.tasks.meta_data import sample_sinusoid
    >>> from jiio_ext.apps.tasks.meta_models import FiLMDEQNet
    >>> net = FiLMDEQNet(1, 1, hidden=8, context_dim=4)
    >>> batch = sample_sinusoid(2, 5, 5, torch.Generator().manual_seed(0))
    >>> cfg = MetaConfig(regression=True, jiio_steps=5)
    >>> sorted(meta_step(net, "jiio", batch, cfg))
    ['loss', 'metric']
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from jiio_ext.apps import train_options
from jiio_ext.apps.tasks.graph_cycles import boxed_saved_tensors, release_ift_closures
from jiio_ext.apps.tasks.meta_data import TaskBatch
from jiio_ext.apps.tasks.meta_models import adapted_parameters

__all__ = ["METHODS", "MetaConfig", "adapt_and_predict", "meta_step", "task_losses"]

# meta-gradient methods: JIIO and the three baselines (defined with the CLI's options)
METHODS = train_options.META_METHODS


@dataclass
class MetaConfig:
    """Inner-loop settings shared by the methods.

    Attributes:
        regression: mean squared error (sinusoid) instead of cross-entropy.
        inner_lr: step size of the adapted quantity (JIIO, iMAML; MAML too unless ``maml_lr``).
        maml_lr: step size of MAML / FOMAML (``None``: ``inner_lr``).
        maml_steps: SGD steps of MAML / FOMAML.
        jiio_steps: joint iterations of JIIO (``diffopt.step`` calls).
        imaml_steps: inner gradient steps of nested iMAML (run to convergence).
        cg_steps: conjugate-gradient iterations of iMAML's meta-gradient.
        prox: proximal weight ``λ`` (JIIO and iMAML).
        head_prox: proximal weight of the head's parameters when the head is adapted (JIIO
            and iMAML; ``None``: ``prox``). The context and the head then have their own
            pull toward the meta-parameters.
        backward_rtol: tolerance of JIIO's backward fixed points.
        backward_max_iter: iteration budget of JIIO's backward fixed points.

    Example:
        >>> MetaConfig(regression=True).jiio_steps
        20
    """

    regression: bool = False
    inner_lr: float = 0.5
    maml_lr: float | None = None
    maml_steps: int = 5
    jiio_steps: int = 20
    imaml_steps: int = 20
    cg_steps: int = 5
    prox: float = 1.0
    head_prox: float | None = None
    backward_rtol: float = 1e-4
    backward_max_iter: int = 50


def task_losses(out: torch.Tensor, y: torch.Tensor, regression: bool) -> torch.Tensor:
    """Per-task mean loss ``(T,)`` from outputs ``(T, N, C)`` and targets.

    Example:
        >>> import torch
        >>> task_losses(torch.zeros(2, 3, 1), torch.ones(2, 3, 1), regression=True)
        tensor([1., 1.])
    """
    if regression:
        return (out - y).pow(2).flatten(1).mean(1)
    per = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
    return per.view(out.shape[0], -1).mean(1)


def _metric(out: torch.Tensor, y: torch.Tensor, regression: bool) -> float:
    if regression:
        return float(task_losses(out, y, True).mean())
    return float((out.argmax(-1) == y).float().mean())


def _prox_weights(model: nn.Module, cfg: MetaConfig) -> dict[str, float]:
    """Proximal weight of each adapted parameter: ``head_prox`` for the head, else ``prox``."""
    head = cfg.prox if cfg.head_prox is None else cfg.head_prox
    return {n: head if n.startswith("head.") else cfg.prox for n in model.adapted}


def _jiio(model: nn.Module, batch: TaskBatch, cfg: MetaConfig, train: bool) -> torch.Tensor:
    from jiio_ext.adapters.higher import innerloop_ctx

    # one param group per proximal weight, so the adapter gives each its own pull
    weights = _prox_weights(model, cfg)
    by_weight: dict[float, list[nn.Parameter]] = {}
    for name, param in zip(model.adapted, adapted_parameters(model)):
        by_weight.setdefault(weights[name], []).append(param)
    opt = torch.optim.SGD([{"params": group} for group in by_weight.values()], lr=cfg.inner_lr)
    with innerloop_ctx(
        model,
        opt,
        copy_initial_weights=False,
        track_higher_grads=train,
        tasks=batch.x_spt.shape[0],
        meta_gradient="implicit",
        prox=list(by_weight),
        backward_rtol=cfg.backward_rtol,
        backward_max_iter=cfg.backward_max_iter,
    ) as (fnet, diffopt):
        for _ in range(cfg.jiio_steps):
            diffopt.step(task_losses(fnet(batch.x_spt), batch.y_spt, cfg.regression))
        with warnings.catch_warnings():
            # the tuned digits budget stops before convergence on purpose (docs/meta.md gives
            # the measured convergence counts); one warning per meta-step would drown the bar
            warnings.filterwarnings("ignore", "meta-gradient: the inner state is not converged")
            out = fnet(batch.x_qry)
        if train:
            task_losses(out, batch.y_qry, cfg.regression).mean().backward()
    return out.detach()


def _maml(model: nn.Module, batch: TaskBatch, cfg: MetaConfig, train: bool) -> torch.Tensor:
    import higher

    opt = torch.optim.SGD(adapted_parameters(model), lr=_maml_lr(cfg))
    tasks = batch.x_spt.shape[0]
    outs = []
    for t in range(tasks):
        boxes: list[list[torch.Tensor]] = []
        with (
            boxed_saved_tensors(boxes),
            higher.innerloop_ctx(
                model, opt, copy_initial_weights=False, track_higher_grads=train
            ) as (fnet, diffopt),
        ):
            z = None
            for _ in range(cfg.maml_steps):
                out = fnet(batch.x_spt[t], z0=z)
                z = fnet.last_z
                diffopt.step(task_losses(out[None], batch.y_spt[t : t + 1], cfg.regression).sum())
            out = fnet(batch.x_qry[t])
            if train:
                loss = task_losses(out[None], batch.y_qry[t : t + 1], cfg.regression).sum()
                (loss / tasks).backward()
            release_ift_closures([out, *fnet.parameters()])
        for box in boxes:  # the task's backward is done: drop what its graph saved
            box.clear()
        outs.append(out.detach())
    return torch.stack(outs)


# The two helpers below break reference cycles that run through PyTorch's C++ autograd graph,
# which Python's garbage collector cannot see: without them every MAML task's unrolled graph
# (~47 MB per digits meta-step) stayed alive until exit. Neither changes what is computed.


def _maml_lr(cfg: MetaConfig) -> float:
    return cfg.inner_lr if cfg.maml_lr is None else cfg.maml_lr


def _sgd_inner(model, params, x, y, cfg: MetaConfig, steps: int, prox: dict | None, lr: float):
    """Inner gradient descent on the adapted parameters (first-order, DEQ warm-started).

    ``prox`` maps each adapted parameter to its proximal weight (``None``: no proximal term).
    """
    anchor = {n: params[n].detach() for n in model.adapted}
    fast = {n: anchor[n].clone().requires_grad_() for n in model.adapted}
    frozen = {n: p.detach() for n, p in params.items()}
    z = None
    for _ in range(steps):
        out = functional_call(model, {**frozen, **fast}, (x,), {"z0": z})
        z = model.last_z
        loss = task_losses(out[None], y[None], cfg.regression).sum()
        if prox:
            loss = loss + sum(
                0.5 * prox[n] * (fast[n] - anchor[n]).pow(2).sum() for n in model.adapted
            )
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {n: (fast[n] - lr * g).detach().requires_grad_() for n, g in zip(fast, grads)}
    return fast, z


def _fomaml(model: nn.Module, batch: TaskBatch, cfg: MetaConfig, train: bool) -> torch.Tensor:
    params = dict(model.named_parameters())
    tasks = batch.x_spt.shape[0]
    outs = []
    for t in range(tasks):
        fast, _ = _sgd_inner(
            model, params, batch.x_spt[t], batch.y_spt[t], cfg, cfg.maml_steps, None, _maml_lr(cfg)
        )
        out = functional_call(model, {**params, **fast}, (batch.x_qry[t],))
        if train:
            loss = task_losses(out[None], batch.y_qry[t : t + 1], cfg.regression).sum() / tasks
            loss.backward()
            for n in model.adapted:
                params[n].grad = (
                    fast[n].grad if params[n].grad is None else params[n].grad + fast[n].grad
                )
        outs.append(out.detach())
    return torch.stack(outs)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _support_grads(model, params, vec, x, y, z, cfg: MetaConfig, wrt_theta: bool):
    """Support-loss gradient at adapted values ``vec``: wrt φ, or wrt the other weights."""
    shapes = [params[n].shape for n in model.adapted]
    pieces = torch.split(vec, [s.numel() for s in shapes])
    leaves = {n: p.view(s).requires_grad_() for n, p, s in zip(model.adapted, pieces, shapes)}
    base = {n: (p if wrt_theta else p.detach()) for n, p in params.items()}
    out = functional_call(model, {**base, **leaves}, (x,), {"z0": z})
    loss = task_losses(out[None], y[None], cfg.regression).sum()
    inputs = (
        [p for n, p in params.items() if n not in model.adapted]
        if wrt_theta
        else list(leaves.values())
    )
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _conjugate_gradients(apply, b: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` CG iterations on ``apply(w) = b`` from zero; stops at non-positive curvature."""
    w, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), b.dot(b)
    for _ in range(steps):
        if float(rr) == 0.0:
            break
        ap = apply(p)
        curvature = p.dot(ap)
        if not float(curvature) > 0:  # the proximal objective is not convex here: stop
            break
        alpha = rr / curvature
        w, r = w + alpha * p, r - alpha * ap
        rr_new = r.dot(r)
        p, rr = r + (rr_new / rr.clamp_min(1e-30)) * p, rr_new
    return w


def _imaml_task_gradient(model, params, fast, x, y, z, cfg: MetaConfig, weights: dict) -> None:
    """Add one task's implicit meta-gradient, given ``fast[n].grad`` = query gradient at φ*.

    ``weights`` maps each adapted parameter to its proximal weight (:func:`_prox_weights`).
    """
    g_query = _flat(fast[n].grad for n in model.adapted)
    phi = _flat(fast[n].detach() for n in model.adapted)
    lam = _flat(torch.full_like(fast[n], weights[n]) for n in model.adapted).detach()

    def hvp(v: torch.Tensor) -> torch.Tensor:  # (H + Λ) v, H by central differences
        eps = 1e-2 / float(v.norm().clamp_min(1e-12))
        plus = _flat(_support_grads(model, params, phi + eps * v, x, y, z, cfg, False))
        minus = _flat(_support_grads(model, params, phi - eps * v, x, y, z, cfg, False))
        return (plus - minus) / (2 * eps) + lam * v

    w = _conjugate_gradients(hvp, g_query, cfg.cg_steps)
    # θ_φ gets Λ w; the other weights the mixed term −∂²L/∂θ∂φ · w
    offset = 0
    for n in model.adapted:
        size = params[n].numel()
        piece = weights[n] * w[offset : offset + size].view_as(params[n])
        params[n].grad = piece if params[n].grad is None else params[n].grad + piece
        offset += size
    if float(w.norm()) == 0.0:
        return
    eps = 1e-2 / float(w.norm())
    plus = _support_grads(model, params, phi + eps * w, x, y, z, cfg, True)
    minus = _support_grads(model, params, phi - eps * w, x, y, z, cfg, True)
    others = [n for n in params if n not in model.adapted]
    for n, a, b in zip(others, plus, minus):
        if a is not None and b is not None:
            params[n].grad = params[n].grad - (a - b) / (2 * eps)


def _imaml(model: nn.Module, batch: TaskBatch, cfg: MetaConfig, train: bool) -> torch.Tensor:
    params = dict(model.named_parameters())
    tasks = batch.x_spt.shape[0]
    outs = []
    weights = _prox_weights(model, cfg)
    prox = weights if any(weights.values()) else None
    for t in range(tasks):
        x, y = batch.x_spt[t], batch.y_spt[t]
        fast, z = _sgd_inner(model, params, x, y, cfg, cfg.imaml_steps, prox, cfg.inner_lr)
        out = functional_call(model, {**params, **fast}, (batch.x_qry[t],))
        outs.append(out.detach())
        if train:
            loss = task_losses(out[None], batch.y_qry[t : t + 1], cfg.regression).sum() / tasks
            loss.backward()
            _imaml_task_gradient(model, params, fast, x, y, z, cfg, weights)
    return torch.stack(outs)


_IMPLEMENTATIONS = {"jiio": _jiio, "maml": _maml, "fomaml": _fomaml, "imaml": _imaml}


def _check_method(method: str) -> None:
    if method not in _IMPLEMENTATIONS:
        raise ValueError(f"method: unknown method {method!r}; expected one of {list(METHODS)}")


def meta_step(model: nn.Module, method: str, batch: TaskBatch, cfg: MetaConfig) -> dict:
    """Meta-gradient of the mean query loss into ``model``'s ``.grad`` (not zeroed here).

    Returns:
        ``{"loss": mean query loss, "metric": accuracy (classification) or MSE}``.

    Example:
        >>> import torch
        >>> from jiio_ext.apps.tasks.meta_data import sample_sinusoid
        >>> from jiio_ext.apps.tasks.meta_models import FiLMDEQNet
        >>> net = FiLMDEQNet(1, 1, hidden=4, context_dim=2, adapt_head=False)
        >>> batch = sample_sinusoid(1, 4, 4, torch.Generator().manual_seed(0))
        >>> sorted(meta_step(net, "fomaml", batch, MetaConfig(regression=True, maml_steps=1)))
        ['loss', 'metric']
    """
    _check_method(method)
    model.train()
    out = _IMPLEMENTATIONS[method](model, batch, cfg, True)
    loss = float(task_losses(out, batch.y_qry, cfg.regression).mean())
    return {"loss": loss, "metric": _metric(out, batch.y_qry, cfg.regression)}


def adapt_and_predict(model: nn.Module, method: str, batch: TaskBatch, cfg: MetaConfig):
    """Adapt to each task with the method's inner loop and return query outputs (detached).

    Example:
        >>> import torch
        >>> from jiio_ext.apps.tasks.meta_data import sample_sinusoid
        >>> from jiio_ext.apps.tasks.meta_models import FiLMDEQNet
        >>> net = FiLMDEQNet(1, 1, hidden=8, context_dim=4)
        >>> batch = sample_sinusoid(2, 5, 3, torch.Generator().manual_seed(0))
        >>> adapt_and_predict(net, "fomaml", batch, MetaConfig(regression=True)).shape
        torch.Size([2, 3, 1])
    """
    _check_method(method)
    model.train()  # torchdeq's training-mode solver settings, as during meta-training
    return _IMPLEMENTATIONS[method](model, batch, cfg, False)
