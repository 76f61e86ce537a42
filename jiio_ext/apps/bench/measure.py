"""Measurement helpers shared by the benches: timing, peak memory, iterate recording.

* :func:`synchronize` around every timed block (CUDA work is asynchronous);
* :class:`PeakMemory`: a block's peak memory (CUDA allocator, or sampled resident set on CPU);
* :func:`side_report`: one side (baseline or JIIO) of a report;
* :class:`IterateRecorder` and :func:`first_reaching`: JIIO timed until it first reaches the
  baseline's objective (measured untimed afterwards, at the true fixed point);
* :func:`default_options_side`: the row every bench reports for JIIO at default options.

Example:
    >>> import torch
    >>> from jiio_ext.apps.bench.measure import PeakMemory, side_report
    >>> with PeakMemory(torch.device("cpu")) as mem:
    ...     _ = torch.ones(8).sum()
    >>> side_report("one sum", 0.001, 1, None, mem)["name"]
    'one sum'
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import torch

__all__ = [
    "IterateRecorder",
    "PeakMemory",
    "default_options_side",
    "first_reaching",
    "side_report",
    "synchronize",
]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU. Call it around every timing.

    Example:
        >>> import torch
        >>> synchronize(torch.device("cpu"))
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a code block: CUDA allocator peak, or sampled resident-set growth on CPU.

    On CPU, the resident set size is sampled every 5 ms by a background thread and the peak
    growth over the value at entry is reported (allocator caching makes it approximate).

    Args:
        device: the device whose memory is measured.

    Example:
        >>> import torch
        >>> with PeakMemory(torch.device("cpu")) as mem:
        ...     block = torch.ones(2**20)  # 4 MiB
        >>> mem.peak_mb >= 0.0
        True
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _rss_mb() -> float:
        try:
            with open("/proc/self/statm") as handle:
                pages = int(handle.read().split()[1])
        except OSError:
            return 0.0
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self._start = self._rss_mb()
            self._peak = self._start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss_mb())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._start
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss_mb())
            self.peak_mb = self._peak - self._start


def side_report(
    name: str, time_s: float, f_evals: int, objective: float | None, mem: PeakMemory
) -> dict:
    """One side (baseline or JIIO) of a bench report, rounded for JSON.

    Args:
        name: what ran, with its settings.
        time_s: wall time in seconds.
        f_evals: evaluations of ``f`` (each joint iteration counts one, with one VJP).
        objective: the side's quality measure (``None`` where there is none).
        mem: the :class:`PeakMemory` block the side ran in.

    Returns:
        ``{"name", "time_s", "f_evals", "objective", "peak_mem_mb"}``.

    Example:
        >>> import torch
        >>> with PeakMemory(torch.device("cpu")) as mem:
        ...     pass
        >>> report = side_report("adam", 1.23456, 40, 0.5, mem)
        >>> report["time_s"], report["f_evals"], sorted(report)
        (1.2346, 40, ['f_evals', 'name', 'objective', 'peak_mem_mb', 'time_s'])
    """
    return {
        "name": name,
        "time_s": round(time_s, 4),
        "f_evals": int(f_evals),
        "objective": objective,
        "peak_mem_mb": round(mem.peak_mb, 1),
    }


class IterateRecorder:
    """Joint-solve callback keeping the wall time and the full batch's x at every iteration.

    The flat joint state is ``[z; x; μ]`` with ``z`` and ``μ`` of equal size, so the x-block
    is located from ``x0``'s size alone. Call :meth:`start` right before the timed solve.

    Example:
        >>> import torch
        >>> rec = IterateRecorder(torch.zeros(2, 3), torch.device("cpu"))
        >>> rec.start()
        >>> rec(0, {"index": torch.arange(2), "state": torch.ones(2, 3 + 2 * 4)})
        >>> rec.snapshots[0].shape, len(rec.stamps)
        (torch.Size([2, 3]), 1)
    """

    def __init__(self, x0: torch.Tensor, device: torch.device) -> None:
        self.device = device
        self.n_x = x0[0].numel()
        self.latest = x0.detach().flatten(1).clone()
        self.shape = x0.shape
        self.stamps: list[float] = []
        self.snapshots: list[torch.Tensor] = []
        self.began = time.perf_counter()

    def start(self) -> None:
        """Reset the clock."""
        self.began = time.perf_counter()

    def __call__(self, k: int, info: dict) -> None:
        """Record iteration ``k`` (the engine's callback signature)."""
        synchronize(self.device)
        self.stamps.append(time.perf_counter() - self.began)
        state = info["state"]
        n_z = (state.shape[1] - self.n_x) // 2
        self.latest.index_copy_(0, info["index"], state[:, n_z : n_z + self.n_x])
        self.snapshots.append(self.latest.clone().view(self.shape))


def first_reaching(
    measure: Callable[[torch.Tensor], float],
    snapshots: list[torch.Tensor],
    target: float,
    stride: int = 5,
) -> int | None:
    """First iteration whose iterate's true objective is ``<= target`` (untimed).

    The joint trajectory is not monotone, so this scans every ``stride``-th iterate and then
    looks back inside the stride for the first one that reaches the target. ``measure`` maps
    an iterate's input to its true objective.

    Example:
        >>> import torch
        >>> xs = [torch.tensor(v) for v in (5.0, 4.0, 2.0, 3.0, 1.0)]
        >>> first_reaching(float, xs, target=2.5, stride=2)
        2
    """
    for k in range(0, len(snapshots), stride):
        if measure(snapshots[k]) <= target:
            first = k
            for j in range(k - 1, max(k - stride, -1), -1):
                if measure(snapshots[j]) > target:
                    break
                first = j
            return first
    last = len(snapshots) - 1
    return last if measure(snapshots[last]) <= target else None


def default_options_side(
    solve: Callable[[Callable], object],
    measure: Callable[[torch.Tensor], float],
    x0: torch.Tensor,
    device: torch.device,
    base_objective: float,
    base_time: float,
) -> dict:
    """JIIO with default options, timed to the baseline's objective (every bench reports it).

    Args:
        solve: ``solve(callback) -> JointSolution``: the bench's solve with no option set
            but its budget, taking the iterate recorder as callback.
        measure: true objective of an input.
        x0: the initial input (for the recorder).
        device: torch device (synchronised around the timing).
        base_objective: the baseline's objective, the target.
        base_time: the baseline's time.

    Returns:
        ``{"objective", "time_s", "reached_baseline", "speedup_time", "f_evals",
        "full_run": {...}}`` (``f_evals`` of the whole run, each with one VJP).

    Example:
        >>> import torch
        >>> from jiio_ext import solve_joint
        >>> f = lambda z, x: 0.5 * z + x
        >>> objective = lambda z, x: (z - 1.0).pow(2).sum(1)
        >>> side = default_options_side(
        ...     lambda cb: solve_joint(f, objective, torch.zeros(2, 3), z0=torch.zeros(2, 3),
        ...                            callback=cb),
        ...     lambda x: float(objective(2 * x, x).mean()), torch.zeros(2, 3),
        ...     torch.device("cpu"), base_objective=1e-2, base_time=1.0)
        >>> side["reached_baseline"]
        True
    """
    record = IterateRecorder(x0, device)
    synchronize(device)
    start = time.perf_counter()
    record.start()
    solution = solve(record)
    synchronize(device)
    total = time.perf_counter() - start
    reach = first_reaching(measure, record.snapshots, base_objective)
    reach_time = record.stamps[reach] if reach is not None else total
    return {
        "name": "JIIO with default options (no step size, no solver setting)",
        "objective": measure(record.snapshots[reach]) if reach is not None else measure(solution.x),
        "time_s": round(reach_time, 4),
        "reached_baseline": reach is not None,
        "speedup_time": round(base_time / reach_time, 2) if reach is not None else None,
        "f_evals": solution.f_evals,
        "full_run": {"time_s": round(total, 4), "objective": measure(solution.x)},
    }
