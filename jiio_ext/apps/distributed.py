"""Data-parallel training on ``torch.distributed``: one small context object per process.

Every ``jiio train TASK`` runs unchanged as one process or under ``torchrun`` (one process per
device, on one or several nodes). :func:`init_from_env` reads torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), joins the process
group (NCCL on CUDA, gloo otherwise) and returns a :class:`DistContext`; without that
environment (or with ``WORLD_SIZE=1``) the context is a single-process no-op, so trainers need
no separate code path.

The data-parallel recipe this module supports:

* every rank builds the same model (same seed) and iterates over the same *global* batches
  (a shuffling ``torch.Generator`` seeded identically everywhere);
* each rank keeps its own part of every global batch (:meth:`DistContext.shard`) and runs the
  per-sample work (attacks, joint solves) on it alone: nothing per-sample crosses ranks;
* the training forward goes through :meth:`DistContext.wrap` (``DistributedDataParallel``),
  whose backward averages the gradients over the ranks; the loss of each rank is
  :meth:`DistContext.global_mean` of its per-sample losses, so the averaged gradient is
  exactly the gradient of the mean over the global batch, as in one process;
* metrics are summed over the ranks (:meth:`DistContext.all_reduce_sum`); only the main rank
  writes files (:attr:`DistContext.is_main`, :meth:`DistContext.save_checkpoint`), and a
  checkpoint is read by the main rank and broadcast (:meth:`DistContext.load_checkpoint`), so
  nodes need no shared file system.

Example:
    >>> import torch
    >>> from jiio_ext.apps.distributed import init_from_env
    >>> with init_from_env("cpu") as ctx:  # no torchrun environment: one process
    ...     model = ctx.wrap(torch.nn.Linear(3, 1))
    ...     rows = ctx.shard(8)  # this rank's rows of a global batch of 8
    ...     x = torch.ones(8, 3)
    ...     loss = ctx.global_mean(model(x[rows]).squeeze(1), global_count=8)
    ...     metrics = ctx.all_reduce_sum({"loss_sum": float(loss.detach()) * 8, "count": 8.0})
    >>> ctx.world_size, ctx.is_main, rows.tolist(), metrics["count"]
    (1, True, [0, 1, 2, 3, 4, 5, 6, 7], 8.0)
"""

from __future__ import annotations

import gc
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from jiio_ext.apps.checkpoints import (
    CheckpointError,
    load_checkpoint_bytes,
    load_checkpoint_file,
    save_checkpoint_file,
)

__all__ = ["DistContext", "init_from_env"]

Reducible = TypeVar("Reducible", torch.Tensor, float, dict)


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise RuntimeError(
                f"{name}: not set, but WORLD_SIZE > 1; launch with torchrun (it sets RANK, "
                "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)"
            )
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(
            f"{name}: expected an integer environment variable, got {raw!r}"
        ) from None


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run (see :func:`init_from_env`).

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this node (picks the CUDA device).
        device: the device this process computes on.
        backend: ``'nccl'`` or ``'gloo'``; ``None`` for a single process.
        owns_group: whether :meth:`close` destroys the process group (it was created here).

    Example:
        >>> import torch
        >>> ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        >>> ctx.is_main, ctx.is_distributed
        (True, False)
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process takes part (collectives really communicate).

        Example:
            >>> init_from_env("cpu").is_distributed
            False
        """
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only rank that writes checkpoints, logs and plots.

        Example:
            >>> init_from_env("cpu").is_main
            True
        """
        return self.rank == 0

    def check_batch_size(self, batch_size: int) -> int:
        """The per-rank batch size; raises unless ``batch_size`` splits evenly over the ranks.

        Args:
            batch_size: the global batch size (the one a single process would use).

        Returns:
            ``batch_size // world_size``.

        Raises:
            ValueError: ``batch_size`` is not a positive multiple of ``world_size``.

        Example:
            >>> init_from_env("cpu").check_batch_size(64)
            64
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size: the global batch size {batch_size} must be a multiple of the "
                f"number of processes ({self.world_size}) so that every rank gets an equal part"
            )
        return batch_size // self.world_size

    def shard(self, n: int) -> torch.Tensor:
        """Indices of this rank's contiguous part of a global batch of ``n`` rows.

        The parts of ranks ``0, 1, ...`` are consecutive and their sizes differ by at most one
        (when ``n`` is a multiple of ``world_size`` they are equal), so the ranks together cover
        every row exactly once, in order.

        Args:
            n: number of rows of the global batch.

        Returns:
            A ``long`` tensor of row indices on :attr:`device` (possibly empty when
            ``n < world_size``).

        Example:
            >>> import torch
            >>> ctx = DistContext(rank=1, world_size=3, local_rank=1, device=torch.device("cpu"))
            >>> ctx.shard(8).tolist()
            [2, 3, 4]
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n: expected an integer >= 0, got {n!r}")
        start = self.rank * n // self.world_size
        stop = (self.rank + 1) * n // self.world_size
        return torch.arange(start, stop, device=self.device)

    def global_mean(self, per_sample: torch.Tensor, global_count: int) -> torch.Tensor:
        """This rank's loss such that DDP's gradient average is the global-batch mean's gradient.

        Returns ``per_sample.sum() * world_size / global_count``: DDP averages the ranks'
        gradients, so the result is the gradient of ``sum(all per-sample losses) /
        global_count``, whatever the (even or uneven) split. Its value is the global mean only
        once summed over ranks and divided by ``world_size``.

        Args:
            per_sample: this rank's per-sample losses ``(b,)``.
            global_count: number of samples in the global batch.

        Returns:
            A scalar tensor (the local mean when not distributed and ``b == global_count``).

        Example:
            >>> import torch
            >>> float(init_from_env("cpu").global_mean(torch.tensor([1.0, 3.0]), 2))
            2.0
        """
        if isinstance(global_count, bool) or not isinstance(global_count, int) or global_count < 1:
            raise ValueError(f"global_count: expected an integer >= 1, got {global_count!r}")
        return per_sample.sum() * (self.world_size / global_count)

    def average_gradients(self, parameters: Any) -> None:
        """Average the ``.grad`` of ``parameters`` over the ranks (one all-reduce).

        For gradients that are assembled outside autograd's accumulation — implicit
        meta-gradients written into ``.grad``, conjugate-gradient solves — which DDP's reducer
        hooks cannot see; everything else should go through :meth:`wrap`. Every rank must
        hold gradients for the same parameters. A no-op in a single process.

        Args:
            parameters: an iterable of parameters (those without ``.grad`` are skipped).

        Example:
            >>> import torch
            >>> layer = torch.nn.Linear(2, 1)
            >>> layer(torch.ones(1, 2)).sum().backward()
            >>> init_from_env("cpu").average_gradients(layer.parameters())
            >>> layer.bias.grad.tolist()
            [1.0]
        """
        if not self.is_distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self._comm_device)
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            count = grad.numel()
            grad.copy_(flat[offset : offset + count].view_as(grad))
            offset += count

    def wrap(self, module: nn.Module, **ddp_options: Any) -> nn.Module:
        """``DistributedDataParallel(module)`` when distributed, else ``module`` itself.

        Only forward calls made through the returned wrapper arm the gradient all-reduce of
        the following backward; per-sample work that must stay local (attacks, joint solves)
        should call the unwrapped module (``wrapper.module``). Every parameter that requires
        a gradient must receive one in every backward (else pass
        ``find_unused_parameters=True``). Construction broadcasts rank 0's parameters and
        buffers to all ranks.

        Args:
            module: the module on :attr:`device`.
            **ddp_options: further ``DistributedDataParallel`` options.

        Returns:
            The wrapped (or the same) module.

        Example:
            >>> import torch
            >>> layer = torch.nn.Linear(2, 2)
            >>> init_from_env("cpu").wrap(layer) is layer
            True
        """
        if not self.is_distributed:
            return module
        if self.device.type == "cuda":
            ddp_options.setdefault("device_ids", [self.device.index])
            ddp_options.setdefault("output_device", self.device.index)
        return nn.parallel.DistributedDataParallel(module, **ddp_options)

    def all_reduce_sum(self, value: Reducible) -> Reducible:
        """Sum a tensor, a float or a dict of floats over all ranks (one collective).

        Every rank must call it with the same structure (same dict keys, same tensor shape).

        Args:
            value: a tensor (reduced out of place), a number, or a ``dict`` of numbers.

        Returns:
            The sum over ranks, of the same kind as ``value`` (a dict's values as floats).

        Example:
            >>> init_from_env("cpu").all_reduce_sum({"correct": 3, "count": 4})
            {'correct': 3.0, 'count': 4.0}
        """
        return self._reduce(value, mean=False)

    def all_reduce_mean(self, value: Reducible) -> Reducible:
        """Average a tensor, a float or a dict of floats over all ranks (one collective).

        Args:
            value: as for :meth:`all_reduce_sum`.

        Returns:
            The mean over ranks (unweighted: for sample-weighted means, sum counts and
            totals with :meth:`all_reduce_sum` instead).

        Example:
            >>> init_from_env("cpu").all_reduce_mean(0.5)
            0.5
        """
        return self._reduce(value, mean=True)

    def _reduce(self, value: Any, *, mean: bool) -> Any:
        if isinstance(value, torch.Tensor):
            out = value.detach().to(self._comm_device, copy=True)
            if self.is_distributed:
                dist.all_reduce(out, op=dist.ReduceOp.SUM)
            out = out.to(value.device)
            return out / self.world_size if mean else out
        if isinstance(value, dict):
            keys = sorted(value)
            for key in keys:
                self._check_number(value[key], f"value[{key!r}]")
            packed = torch.tensor([float(value[k]) for k in keys], dtype=torch.float64)
            reduced = self._reduce(packed, mean=mean).cpu().tolist()
            return {key: reduced[keys.index(key)] for key in value}
        self._check_number(value, "value")
        return float(self._reduce(torch.tensor([float(value)], dtype=torch.float64), mean=mean))

    @staticmethod
    def _check_number(value: Any, name: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"{name}: expected a tensor, a number or a dict of numbers, "
                f"got {type(value).__name__}"
            )

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (any picklable object) on every rank.

        Example:
            >>> init_from_env("cpu").broadcast_object({"epoch": 3})
            {'epoch': 3}
        """
        if not self.is_distributed:
            return obj
        holder = [obj if self.rank == src else None]
        dist.broadcast_object_list(holder, src=src, device=self._comm_device)
        return holder[0]

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op for a single process).

        Example:
            >>> init_from_env("cpu").barrier()
        """
        if self.is_distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def manual_seed(self, seed: int) -> None:
        """Seed torch's global generators for randomness that should differ between ranks.

        Rank ``r`` gets its own stream (``seed`` combined with ``r``), e.g. for attack random
        starts or data augmentation of its own samples. Randomness that must agree on every
        rank (initialisation, shuffling) should use a ``torch.Generator`` seeded with the
        same number everywhere instead.

        Args:
            seed: a non-negative integer.

        Example:
            >>> import torch
            >>> ctx = init_from_env("cpu")
            >>> ctx.manual_seed(7); a = torch.rand(2)
            >>> ctx.manual_seed(7); bool((a == torch.rand(2)).all())
            True
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
        torch.manual_seed((seed * 1_000_003 + self.rank) % 2**63)

    def save_checkpoint(self, state: Any, path: str | os.PathLike) -> None:
        """``torch.save(state, path)`` on the main rank only, atomically.

        The file is written next to ``path`` and renamed over it, so a process killed while
        saving leaves the previous checkpoint intact. Other ranks return at once. ``state``
        may hold only tensors and plain containers (a ``TypeError`` names anything else), so
        that :meth:`load_checkpoint` can read it with ``weights_only=True``.

        Example:
            >>> import tempfile, pathlib
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "ckpt.pt"
            >>> ctx = init_from_env("cpu")
            >>> ctx.save_checkpoint({"epoch": 1}, path)
            >>> ctx.load_checkpoint(path)
            {'epoch': 1}
        """
        if not self.is_main:
            return
        save_checkpoint_file(state, path)

    def load_checkpoint(self, path: str | os.PathLike) -> Any | None:
        """The checkpoint at ``path`` as read by the main rank, on every rank (or ``None``).

        The main rank reads the file (tensors mapped to the CPU) and broadcasts it, so the
        other ranks and nodes need not see the file. Returns ``None`` on every rank when the
        main rank has no such file. The file is read with ``torch.load(weights_only=True)``:
        a damaged file, or one holding other objects than tensors and plain containers (a
        planted pickle), raises :class:`~jiio_ext.apps.checkpoints.CheckpointError` naming it.

        Example:
            >>> import tempfile, pathlib
            >>> init_from_env("cpu").load_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "none")
        """
        if not self.is_distributed:
            return load_checkpoint_file(path) if Path(path).exists() else None
        payload: bytes | None = None
        error: str | None = None
        if self.is_main and Path(path).exists():
            try:  # broadcast the serialised bytes (tensors travel inside them)
                buffer = io.BytesIO()
                torch.save(load_checkpoint_file(path), buffer)
                payload = buffer.getvalue()
            except CheckpointError as err:  # every rank raises it, none waits
                error = str(err)
        payload, error = self.broadcast_object((payload, error))
        if error is not None:
            raise CheckpointError(error)
        return None if payload is None else load_checkpoint_bytes(payload, str(path))

    def close(self) -> None:
        """Leave the process group if this context created it (safe to call twice).

        Example:
            >>> init_from_env("cpu").close()
        """
        if self.is_distributed and dist.is_initialized():
            # release DDP wrappers (their reducers hold the group) while the group is alive,
            # and let every rank finish its collectives before anyone tears down
            gc.collect()
            dist.barrier()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def init_from_env(device: str | torch.device = "cpu", *, backend: str | None = None) -> DistContext:
    """Join torchrun's process group if the environment describes one; else one process.

    With ``WORLD_SIZE > 1`` in the environment (torchrun sets it, with ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), the process group is initialised
    (unless the caller already did, in which case it is reused and left open by
    :meth:`DistContext.close`). A CUDA ``device`` becomes ``cuda:LOCAL_RANK`` (one GPU per
    process) and is made current. Without that environment, nothing is initialised and the
    context is rank 0 of 1 on ``device``.

    Args:
        device: ``'cpu'``, ``'cuda'``, ``'cuda:N'``, ... (any index is replaced by
            ``LOCAL_RANK`` when distributed).
        backend: process-group backend; default ``'nccl'`` for CUDA, ``'gloo'`` otherwise.

    Returns:
        The :class:`DistContext`; use it as a context manager (or call ``close``).

    Raises:
        RuntimeError: the environment is incomplete or inconsistent.
        ValueError: ``device`` is not a device.

    Example:
        >>> ctx = init_from_env("cpu")
        >>> ctx.rank, ctx.world_size, str(ctx.device), ctx.backend
        (0, 1, 'cpu', None)
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device: expected a torch device such as 'cpu' or 'cuda', {err}"
        ) from None
    if dev.type == "meta":
        raise ValueError("device: 'meta' tensors hold no data; train on 'cpu' or 'cuda'")
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        owns_group, backend = False, dist.get_backend()
    else:
        world_size = _env_int("WORLD_SIZE", 1)
        if world_size <= 1:
            return DistContext(rank=0, world_size=1, local_rank=0, device=dev)
        rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
        if not 0 <= rank < world_size:
            raise RuntimeError(f"RANK: expected 0 <= RANK < WORLD_SIZE={world_size}, got {rank}")
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        owns_group = True
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if owns_group:
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=dev,
        backend=str(backend),
        owns_group=owns_group,
    )
