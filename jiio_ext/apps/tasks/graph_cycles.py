"""Reference cycles that higher's inner loops build through torchdeq graphs, and their breaking.

Meta-learning through a torchdeq DEQ with higher (``create_graph=True`` inner steps) builds
cycles that run through C++ autograd nodes, where Python's garbage collector cannot follow
them, so every task's unrolled graph would stay alive. :func:`boxed_saved_tensors` and
:func:`release_ift_closures` break them, leaving the gradients bit-identical; the MAML baseline
of ``jiio train meta`` and ``jiio bench meta-example`` use both (``tests/test_meta_leak.py``).

Example:
    >>> import torch
    >>> from jiio_ext.apps.tasks.graph_cycles import boxed_saved_tensors
    >>> boxes, x = [], torch.ones(2, requires_grad=True)
    >>> with boxed_saved_tensors(boxes):
    ...     y = x.exp().sum()
    >>> len(boxes), boxes.clear()
    (1, None)
"""

from __future__ import annotations

import torch

__all__ = ["boxed_saved_tensors", "release_ift_closures"]


def boxed_saved_tensors(boxes: list) -> torch.autograd.graph.saved_tensors_hooks:
    """Saved-tensor hooks that keep every tensor saved for backward in a box appended to ``boxes``.

    Under higher's ``create_graph=True`` inner steps, torchdeq's IFT backward runs its Anderson
    solver (``torchdeq/solver/anderson.py``) with grad mode on. The solver writes its history
    ``X``, ``F``, ``H`` in place after saving views of them (``linalg.solve(H[...])``,
    ``alpha @ F[...]``), so a node keeps a saved view → its base → the base's later
    ``grad_fn`` → … → that node: a C++-only cycle (the solver's result is ``.detach()``-ed, so
    that graph is garbage), which also keeps the forward graph it reaches alive. Packing through
    a box and emptying the boxes after the task's backward breaks every such cycle. The unpack
    hook returns the very tensor that was saved, so gradients are bit-identical.

    Args:
        boxes: the list the boxes are appended to; ``boxes.clear()`` after the backward.

    Returns:
        The context manager of the hooks.

    Example:
        >>> import torch
        >>> boxes, x = [], torch.tensor([1.0, 2.0], requires_grad=True)
        >>> with boxed_saved_tensors(boxes):
        ...     loss = (x * x).sum()  # saves x twice for the backward
        >>> len(boxes)
        2
        >>> loss.backward(); boxes.clear()
        >>> x.grad
        tensor([2., 4.])
    """

    def pack(tensor: torch.Tensor) -> list[torch.Tensor]:
        box = [tensor]
        boxes.append(box)
        return box

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box[0])


def release_ift_closures(tensors: list[torch.Tensor]) -> None:
    """Drop the DEQ closures that torchdeq's IFT nodes hold in the graph behind ``tensors``.

    torchdeq's ``IFTGrad`` autograd.Function stores ``ctx.func`` (the ``DEQWrapper`` of
    :class:`~jiio_ext.apps.tasks.meta_models.FiLMDEQNet`'s ``lambda z: tanh(self.cell(z) + u)``) on
    its graph node. Under higher, ``self`` in that closure is the patched ``fnet``, whose fast
    parameters (``fnet._fast_params``, built from the support losses with ``create_graph=True``)
    have graphs that lead back to those same nodes: node → ctx.func → fnet → fast parameter →
    grad_fn → … → node. The graph edges live in C++, where Python's garbage collector cannot
    follow them, so each task's whole unrolled graph (~47 MB per digits meta-step) stayed alive
    until exit. Called once the task's backward (if any) is done, this walks the graph and sets
    ``ctx.func = None``, which breaks the cycle; the computed gradients are unchanged.

    Args:
        tensors: the outputs (and fast parameters) whose graphs are walked.

    Example:
        >>> import torch
        >>> from torchdeq import get_deq
        >>> deq, x = get_deq(ift=True, f_max_iter=20), torch.rand(2, 3, requires_grad=True)
        >>> z = deq(lambda z: 0.5 * torch.tanh(z) + x, torch.zeros(2, 3))[0][-1]
        >>> def ift_funcs(tensor):  # the closures the IFT nodes behind ``tensor`` hold
        ...     stack, found = [tensor.grad_fn], []
        ...     while stack:
        ...         node = stack.pop()
        ...         if type(node).__name__ == "IFTGradBackward":
        ...             found.append(node.func)
        ...         stack.extend(n for n, _ in node.next_functions if n is not None)
        ...     return found
        >>> [func is not None for func in ift_funcs(z)]
        [True]
        >>> release_ift_closures([z])
        >>> ift_funcs(z)
        [None]
    """
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    seen = set()  # holds the node objects, so their ids stay unique during the walk
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "IFTGradBackward":  # torchdeq/grad.py IFTGrad
            node.func = None
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
