"""The DEQ of the meta-learning tasks: a FiLM-conditioned torchdeq network with a task context.

``z = tanh(W z + u)`` with the injection ``u = (1 + γ(c)) ⊙ (U x) + β(c)`` modulated by a
task-context vector ``c`` (FiLM, as in the paper's Omniglot model), output ``head(z)``. The
context is a parameter (meta-learned initial value) or a ``context=`` keyword; the inner loops
adapt the context and the head, so every inner step moves the DEQ's fixed point.

Example:
    >>> import torch
    >>> net = FiLMDEQNet(in_dim=4, out_dim=3)
    >>> net(torch.randn(5, 4)).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FiLMDEQNet", "adapted_parameters"]


class FiLMDEQNet(nn.Module):
    """FiLM-conditioned DEQ with a learnable task context.

    Args:
        in_dim: input size.
        out_dim: output size (classes, or 1 for regression).
        hidden: DEQ state size.
        context_dim: task-context size.
        contraction: initial spectral norm of the cell weight.
        f_max_iter: forward solver budget (torchdeq Anderson).
        f_tol: forward solver tolerance (relative).
        seed: initialisation seed.
        adapt_head: whether the inner loops adapt the head as well as the context.

    Example:
        >>> FiLMDEQNet(in_dim=2, out_dim=1, adapt_head=False).adapted
        ('context',)

    Attributes:
        adapted: names of the parameters the inner loops adapt.
        last_z: the latest fixed point (detached), for warm starts (``forward(z0=...)``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 32,
        context_dim: int = 16,
        contraction: float = 0.6,
        f_max_iter: int = 30,
        f_tol: float = 1e-4,
        seed: int = 0,
        adapt_head: bool = True,
    ) -> None:
        super().__init__()
        from torchdeq import get_deq

        from jiio_ext.apps.models import scale_spectral_norm_

        torch.manual_seed(seed)
        self.hidden = hidden
        self.inject = nn.Linear(in_dim, hidden)
        self.cell = nn.Linear(hidden, hidden)
        self.film = nn.Linear(context_dim, 2 * hidden)
        self.head = nn.Linear(hidden, out_dim)
        self.context = nn.Parameter(torch.zeros(context_dim))
        with torch.no_grad():
            self.film.weight.mul_(0.1)
            self.film.bias.zero_()
        scale_spectral_norm_(self.cell.weight, contraction)
        self.deq = get_deq(
            f_solver="anderson",
            f_max_iter=f_max_iter,
            f_tol=f_tol,
            f_stop_mode="rel",
            ift=True,
            b_solver="anderson",
            b_max_iter=f_max_iter,
            b_tol=f_tol,
            b_stop_mode="rel",
        )
        self.last_z: torch.Tensor | None = None
        self.adapted = ("context", "head.weight", "head.bias") if adapt_head else ("context",)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        z0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Inputs ``(N, in_dim)`` → outputs ``(N, out_dim)``; ``z0`` warm-starts the solver."""
        c = self.context if context is None else context
        gamma, beta = self.film(c).chunk(2, dim=-1)
        u = (1 + gamma) * self.inject(x) + beta
        start = torch.zeros(x.shape[0], self.hidden, dtype=x.dtype, device=x.device)
        if z0 is not None and z0.shape == start.shape:
            start = z0
        z = self.deq(lambda z: torch.tanh(self.cell(z) + u), start)[0][-1]
        self.last_z = z.detach()
        return self.head(z)


def adapted_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the inner loops adapt (``model.adapted``), in a fixed order.

    Example:
        >>> [p.shape for p in adapted_parameters(FiLMDEQNet(2, 1, hidden=4, context_dim=3))]
        [torch.Size([3]), torch.Size([1, 4]), torch.Size([1])]
    """
    named = dict(model.named_parameters())
    return [named[name] for name in model.adapted]
