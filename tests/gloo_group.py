"""Shared set-up of the 2-process gloo tests: a free port and joining the group in a worker."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

__all__ = ["free_port", "join_gloo_group"]


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_gloo_group(rank: int, world_size: int, port: int) -> None:
    """Set torchrun's variables for this worker, one thread, and create the gloo group."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
