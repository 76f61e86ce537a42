"""The ``'jiio'`` DEQ core: torchdeq's sliced core with a warm-startable implicit backward.

Internal to :mod:`jiio_ext.adapters.torchdeq`, which registers it with torchdeq
(``get_deq(core='jiio', ...)``) and exports the class as ``JIIODEQ``. Its implicit backward
is the core's one IFT mechanism (:meth:`jiio_ext.grad.EnvelopeGrad.attach_fixed_point`).

Example:
    >>> from torchdeq.core import DEQSliced
    >>> issubclass(JIIODEQ, DEQSliced)
    True
"""

from __future__ import annotations

from typing import Any

import torch

from jiio_ext.grad import EnvelopeGrad

__all__ = ["JIIODEQ", "make_jiio_core"]


def make_jiio_core() -> type:
    """Build the ``JIIODEQ`` class on top of torchdeq's ``DEQSliced`` (torchdeq imported here)."""
    from torchdeq import core
    from torchdeq.utils.layer_utils import deq_decorator

    class JIIODEQ(core.DEQSliced):
        """torchdeq's sliced DEQ core with a warm-started IFT backward and differentiable eval.

        Registered in torchdeq as ``'jiio'`` (``get_deq(core='jiio', ...)``). In ordinary
        training forwards without ``ift``, or with several states (``n_states`` /
        ``indexing``), it is torchdeq's ``DEQSliced``. With ``ift=True`` its implicit
        backward starts from zero, or from the adjoint passed as
        ``deq(func, z0, adjoint_warm_start=mu)`` (``(B, n)``, for instance a joint input
        solve's adjoint: see :func:`~jiio_ext.adapters.torchdeq.adjoint_warm_start`), rescaled
        to the incoming gradient; no warm start is kept between calls. In eval mode with
        gradients enabled (``differentiable_eval=True``, the default)
        it returns the fixed point with an implicit backward, so attacks and input gradients
        work on a model in ``eval()``; torchdeq's own eval returns a fixed point with no graph.

        Example:
            >>> import torch
            >>> import jiio_ext.adapters.torchdeq  # registers 'jiio' with torchdeq
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
            adjoint_warm_start: torch.Tensor | None = None,
            **kwargs,
        ):
            """Like ``DEQSliced.forward``; see the class docstring for the differences.

            ``adjoint_warm_start``: an adjoint ``(B, n)`` (``n`` the state's size per
            sample) that starts the implicit backward; ignored when its size differs.
            """
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
            warm = adjoint_warm_start
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


JIIODEQ = make_jiio_core()
