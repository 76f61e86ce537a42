"""Benchmark tasks of ``jiio bench``: JIIO and its baseline side by side in one process.

* ``overhead``: time of one joint iteration against one plain ``f`` evaluation plus one VJP
  (the work an iteration cannot avoid), on the latent-inversion decoder.
* ``latent``: latent inversion of images a convolutional DEQ decoder produced. The baseline
  is the nested method a user would write: Adam on the latent (tuned step size), each step a
  forward and an adjoint fixed-point solve with torchdeq's Anderson solver (or this package's
  when torchdeq is missing), both warm-started. The comparison is at equal objective: JIIO's
  time is the time at which its iterate first reaches the baseline's final objective.

Objectives are always measured at the true fixed point ``z*(x)`` (a tight, untimed forward
solve), never at a solver's intermediate ``z``.

Example:
    >>> from jiio_ext.apps.bench.tasks import run_task
    >>> report = run_task("overhead", device="cpu", quick=True, repeats=2)
    >>> sorted(report)
    ['baseline', 'batch', 'device', 'dtype', 'jiio', 'overhead', 'task']
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from jiio_ext.apps.bench.models import ConvDEQDecoder
from jiio_ext.schedules import StepSwitch
from jiio_ext.solve import solve_joint, solve_nested
from jiio_ext.solvers import Anderson, fixed_point

__all__ = [
    "TASKS",
    "IterateRecorder",
    "default_options_side",
    "bench_autocast",
    "LatentProblem",
    "first_reaching",
    "make_latent_problem",
    "run_task",
]


class PeakMemory:
    """Peak memory of a code block: CUDA allocator peak, or sampled resident-set growth on CPU.

    On CPU, the resident set size is sampled every 5 ms by a background thread and the peak
    growth over the value at entry is reported (allocator caching makes it approximate).
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
        import os

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class LatentProblem:
    """A latent-inversion problem: decoder, targets and the per-sample objective.

    Example:
        >>> import torch
        >>> problem = make_latent_problem(2, torch.device("cpu"))
        >>> problem.x0.shape, problem.z0().shape
        (torch.Size([2, 32]), torch.Size([2, 32, 16, 16]))
        >>> problem.objective(problem.z0(), problem.x0).shape  # one loss per sample
        torch.Size([2])
        >>> problem.true_objective(problem.x0) > 0  # the zero latent misses the targets
        True
    """

    decoder: ConvDEQDecoder
    targets: torch.Tensor
    x0: torch.Tensor

    def objective(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample mean squared error of the decoded image."""
        return (self.decoder(z) - self.targets).pow(2).flatten(1).mean(1)

    def z0(self) -> torch.Tensor:
        """Zero initial state."""
        return self.decoder.initial_state(self.x0)

    def fixed_point(self, x: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
        """Tight forward solve ``z*(x)`` (used to measure objectives, never timed)."""
        shape = (x.shape[0], self.decoder.channels, self.decoder.size, self.decoder.size)
        with torch.no_grad():
            result = fixed_point(
                lambda s, i, k: (self.decoder.f(s.view(-1, *shape[1:]), x[i]).flatten(1), {}),
                self.decoder.initial_state(x).flatten(1),
                rtol=rtol,
                atol=0.0,
                max_iter=300,
            )
        return result.state.view(shape)

    def true_objective(self, x: torch.Tensor) -> float:
        """Mean objective at the exact fixed point of ``x``."""
        with torch.no_grad():
            return float(self.objective(self.fixed_point(x), x).mean())


def make_latent_problem(
    batch: int, device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0
) -> LatentProblem:
    """Random decoder and targets it produced from Gaussian latents.

    Example:
        >>> import torch
        >>> problem = make_latent_problem(2, torch.device("cpu"))
        >>> problem.targets.shape
        torch.Size([2, 1, 16, 16])
    """
    torch.manual_seed(seed)
    decoder = ConvDEQDecoder().to(device=device, dtype=dtype)
    decoder.requires_grad_(False)
    latents = torch.randn(batch, decoder.latent_dim, device=device, dtype=dtype)
    problem = LatentProblem(decoder, torch.empty(0), torch.zeros_like(latents))
    with torch.no_grad():
        problem.targets = decoder(problem.fixed_point(latents))
    return problem


def _inner_solvers(quick: bool) -> list[tuple[str, object]]:
    """Inner solvers of the nested baseline: this package's Anderson and torchdeq's."""
    solvers: list[tuple[str, object]] = [("jiio_ext Anderson", Anderson(memory=6, kind="II"))]
    if not quick:
        try:
            from torchdeq.solver import get_solver
        except ImportError:
            return solvers
        solvers.append(("torchdeq anderson", get_solver("anderson")))
    return solvers


def _side(name: str, time_s: float, f_evals: int, objective: float | None, mem: PeakMemory) -> dict:
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
        _sync(self.device)
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
        ...     lambda cb: solve_joint(f, objective, torch.zeros(2, 3), torch.zeros(2, 3),
        ...                            callback=cb),
        ...     lambda x: float(objective(2 * x, x).mean()), torch.zeros(2, 3),
        ...     torch.device("cpu"), base_objective=1e-2, base_time=1.0)
        >>> side["reached_baseline"]
        True
    """
    record = IterateRecorder(x0, device)
    _sync(device)
    start = time.perf_counter()
    record.start()
    solution = solve(record)
    _sync(device)
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


def bench_latent(device: torch.device, *, quick: bool = False, dtype=torch.float32) -> dict:
    """JIIO vs nested Adam on latent inversion, compared at equal final objective."""
    batch = 16 if quick else 64
    steps = 30 if quick else 80
    problem = make_latent_problem(batch, device, dtype)
    lr = 0.1  # best of {0.03, 0.1, 0.3, 1.0} for 40 and 80 steps (see docs/results.md)

    # The nested baseline with each inner solver; the faster one is the baseline.
    candidates = []
    for solver_name, inner in _inner_solvers(quick):
        _sync(device)
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            run = solve_nested(
                problem.decoder.f,
                problem.objective,
                problem.x0,
                problem.z0(),
                optimizer="adam",
                lr=lr,
                steps=steps,
                inner_solver=inner,
                inner_rtol=1e-3,
                inner_max_iter=50,
            )
            _sync(device)
            elapsed = time.perf_counter() - start
        side = _side(
            f"nested Adam lr={lr}, {steps} steps, inner {solver_name} tol 1e-3",
            elapsed,
            run.f_evals,
            problem.true_objective(run.x),
            mem,
        )
        candidates.append({**side, "vjps": int(run.vjps)})
    candidates.sort(key=lambda side: side["time_s"])
    baseline = candidates[0]
    base_time, base_objective = baseline["time_s"], baseline["objective"]

    max_iter = 100 if quick else 200
    record = IterateRecorder(problem.x0, device)
    _sync(device)
    with PeakMemory(device) as mem_jiio:
        start = time.perf_counter()
        record.start()
        joint = solve_joint(
            problem.decoder.f,
            problem.objective,
            problem.x0,
            problem.z0(),
            step_size=StepSwitch(3.0, 1.0),
            solver=Anderson(memory=5, kind="I"),  # tuned for this task (docs/results.md)
            max_iter=max_iter,
            rtol=1e-5,
            atol=0.0,
            callback=record,
        )
        _sync(device)
        jiio_total = time.perf_counter() - start
    reach = first_reaching(problem.true_objective, record.snapshots, base_objective)
    reach_time = record.stamps[reach] if reach is not None else jiio_total
    jiio_objective = problem.true_objective(joint.x)
    reached_objective = (
        problem.true_objective(record.snapshots[reach]) if reach is not None else jiio_objective
    )
    evals_to_reach = (reach + 1) if reach is not None else joint.f_evals
    return {
        "task": "latent",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": batch,
        "baseline": baseline,
        "other_baselines": candidates[1:],
        "jiio": {
            **_side(
                "solve_joint, Anderson type I, StepSwitch(3.0, 1.0)",
                reach_time,
                evals_to_reach,
                reached_objective,
                mem_jiio,
            ),
            "iterations_to_reach": reach + 1 if reach is not None else None,
            "reached_baseline": reach is not None,
            "full_run": {
                "time_s": round(jiio_total, 4),
                "iterations": joint.f_evals,
                "objective": jiio_objective,
            },
        },
        "speedup_time": round(base_time / reach_time, 2),
        "speedup_evals": round((baseline["f_evals"] + baseline["vjps"]) / (2 * evals_to_reach), 2),
        "jiio_default": default_options_side(
            lambda callback: solve_joint(
                problem.decoder.f,
                problem.objective,
                problem.x0,
                problem.z0(),
                max_iter=max_iter,
                callback=callback,
            ),
            problem.true_objective,
            problem.x0,
            device,
            base_objective,
            base_time,
        ),
    }


def bench_overhead(
    device: torch.device, *, quick: bool = False, repeats: int = 20, dtype=torch.float32
) -> dict:
    """Per-iteration time of the joint solve over one plain ``f`` + one VJP."""
    batch = 16 if quick else 64
    problem = make_latent_problem(batch, device, dtype)
    f, objective = problem.decoder.f, problem.objective
    z = problem.fixed_point(problem.x0 + 0.1)
    x = problem.x0 + 0.1
    mu = torch.randn_like(z)

    def plain() -> None:
        z_req, x_req = z.detach().requires_grad_(), x.detach().requires_grad_()
        with torch.enable_grad():
            out = f(z_req, x_req)
            loss = objective(z_req, x_req)
            torch.autograd.grad([loss, out], [z_req, x_req], [torch.ones_like(loss), mu])

    def joint(iterations: int) -> None:
        solve_joint(
            f, objective, x, z, mu0=mu, step_size=1.0, max_iter=iterations, rtol=0.0, atol=0.0
        )

    def timed(fn: Callable[[], None]) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    for _ in range(3):
        plain()
    joint(5)
    plain_times, joint_times = [], []
    with PeakMemory(device) as mem_plain:
        for _ in range(3):
            plain_times.append(timed(lambda: [plain() for _ in range(repeats)]) / repeats)
    with PeakMemory(device) as mem_joint:
        for _ in range(3):
            # subtract a 1-iteration solve to remove set-up costs from the per-iteration time
            full = timed(lambda: joint(repeats + 1))
            one = timed(lambda: joint(1))
            joint_times.append((full - one) / repeats)
    per_plain, per_joint = min(plain_times), min(joint_times)
    return {
        "task": "overhead",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": batch,
        "baseline": {**_side("one f evaluation + one VJP", per_plain, 1, None, mem_plain)},
        "jiio": {**_side("one joint iteration (Anderson)", per_joint, 1, None, mem_joint)},
        "overhead": round(per_joint / per_plain, 3),
    }


def bench_autocast(
    device: torch.device, *, quick: bool = False, dtype=torch.float32, max_iter: int = 100
) -> dict:
    """The latent problem solved with ``f`` in float32 and under bf16 autocast, same budget.

    The solver state, Anderson and the objective stay in float32 in both runs; the objective
    of each result is measured at a tight float32 fixed point. On CPUs without native bf16
    kernels autocast is usually no faster; the comparison is meant for GPUs.

    Example:
        >>> import torch
        >>> report = bench_autocast(torch.device("cpu"), quick=True, max_iter=3)
        >>> report["jiio"]["name"].startswith("bf16")
        True
    """
    batch = 16 if quick else 64
    problem = make_latent_problem(batch, device, dtype=dtype)
    sides = []
    for name, autocast in (("float32 f", None), ("bf16 autocast f", torch.bfloat16)):
        _sync(device)
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            solution = solve_joint(
                problem.decoder.f,
                problem.objective,
                problem.x0,
                problem.z0(),
                step_size=StepSwitch(3.0, 1.0),
                solver=Anderson(memory=5, kind="I"),
                max_iter=max_iter,
                rtol=0.0,
                atol=0.0,
                autocast=autocast,
            )
            _sync(device)
            elapsed = time.perf_counter() - start
        objective = problem.true_objective(solution.x)
        sides.append(
            _side(f"{name}, {max_iter} joint iterations", elapsed, max_iter, objective, mem)
        )
    return {
        "task": "autocast",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": batch,
        "baseline": sides[0],
        "jiio": sides[1],
        "speedup_time": round(sides[0]["time_s"] / sides[1]["time_s"], 2),
    }


def _bench_torchdeq(device: torch.device, **options) -> dict:
    from jiio_ext.apps.bench.torchdeq_task import bench_torchdeq

    return bench_torchdeq(device, **options)


def _bench_adversarial(device: torch.device, **options) -> dict:
    from jiio_ext.apps.bench.adversarial import bench_adversarial

    return bench_adversarial(device, **options)


def _bench_inverse(device: torch.device, **options) -> dict:
    from jiio_ext.apps.bench.inverse import bench_inverse

    return bench_inverse(device, **options)


def _bench_meta(device: torch.device, **options) -> dict:
    from jiio_ext.apps.bench.meta import bench_meta

    return bench_meta(device, **options)


# Benchmark tasks by name: each maps (device, **options) to a JSON-ready report.
TASKS: dict[str, Callable[..., dict]] = {
    "adversarial": _bench_adversarial,
    "autocast": bench_autocast,
    "inverse": _bench_inverse,
    "latent": bench_latent,
    "meta": _bench_meta,
    "overhead": bench_overhead,
    "torchdeq": _bench_torchdeq,
}


def run_task(name: str, device: str = "cpu", **options) -> dict:
    """Run one benchmark task and return its JSON-ready report.

    Args:
        name: task name (see :data:`TASKS`).
        device: torch device string.
        **options: task options (``quick``, ``repeats``, ...).

    Returns:
        The report dictionary.

    Raises:
        ValueError: unknown task or unavailable device.

    Example:
        >>> report = run_task("overhead", quick=True, repeats=1)
        >>> report["task"], report["baseline"]["f_evals"], report["jiio"]["f_evals"]
        ('overhead', 1, 1)
        >>> run_task("no-such-task")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: task: unknown benchmark 'no-such-task'; expected one of ['adversarial', ...]
    """
    if name not in TASKS:
        raise ValueError(f"task: unknown benchmark {name!r}; expected one of {sorted(TASKS)}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return TASKS[name](dev, **options)
