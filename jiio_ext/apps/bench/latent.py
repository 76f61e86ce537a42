"""The latent-inversion benches of ``jiio bench``: ``latent``, ``overhead`` and ``autocast``.

* ``overhead``: time of one joint iteration against one plain ``f`` evaluation plus one VJP
  (the work an iteration cannot avoid), on the latent-inversion decoder.
* ``latent``: latent inversion of images a convolutional DEQ decoder produced. The baseline
  is the nested method a user would write: Adam on the latent (tuned step size), each step a
  forward and an adjoint fixed-point solve with torchdeq's Anderson solver (or this package's
  when torchdeq is missing), both warm-started. The comparison is at equal objective: JIIO's
  time is the time at which its iterate first reaches the baseline's final objective.

Objectives are always measured at the true fixed point ``z*(x)`` (a tight, untimed forward
solve), never at a solver's intermediate ``z``.

* ``autocast``: the latent problem with ``f`` in float32 against bf16 autocast, same budget.

Example:
    >>> import torch
    >>> from jiio_ext.apps.bench.latent import bench_overhead
    >>> report = bench_overhead(torch.device("cpu"), quick=True, repeats=2)
    >>> sorted(report)
    ['baseline', 'batch', 'device', 'dtype', 'jiio', 'overhead', 'task']
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from jiio_ext.apps.bench.measure import (
    IterateRecorder,
    PeakMemory,
    default_options_side,
    first_reaching,
    side_report,
    synchronize,
)
from jiio_ext.apps.models import ConvDEQDecoder
from jiio_ext.nested import solve_nested
from jiio_ext.schedules import StepSwitch
from jiio_ext.solve import solve_joint
from jiio_ext.solvers import Anderson, fixed_point

__all__ = [
    "LatentProblem",
    "bench_autocast",
    "bench_latent",
    "bench_overhead",
    "make_latent_problem",
]


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


def bench_latent(device: torch.device, *, quick: bool = False, dtype=torch.float32) -> dict:
    """JIIO vs nested Adam on latent inversion, compared at equal final objective.

    Example:
        >>> import inspect
        >>> # a run takes seconds even with quick=True, e.g.
        >>> # bench_latent(torch.device("cpu"), quick=True)["speedup_time"]
        >>> list(inspect.signature(bench_latent).parameters)
        ['device', 'quick', 'dtype']
    """
    batch = 16 if quick else 64
    steps = 30 if quick else 80
    problem = make_latent_problem(batch, device, dtype)
    lr = 0.1  # best of {0.03, 0.1, 0.3, 1.0} for 40 and 80 steps (see docs/results.md)

    # The nested baseline with each inner solver; the faster one is the baseline.
    candidates = []
    for solver_name, inner in _inner_solvers(quick):
        synchronize(device)
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            run = solve_nested(
                problem.decoder.f,
                problem.objective,
                problem.x0,
                z0=problem.z0(),
                optimizer="adam",
                step_size=lr,
                max_iter=steps,
                inner_solver=inner,
                inner_rtol=1e-3,
                inner_max_iter=50,
            )
            synchronize(device)
            elapsed = time.perf_counter() - start
        side = side_report(
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
    synchronize(device)
    with PeakMemory(device) as mem_jiio:
        start = time.perf_counter()
        record.start()
        joint = solve_joint(
            problem.decoder.f,
            problem.objective,
            problem.x0,
            z0=problem.z0(),
            step_size=StepSwitch(3.0, 1.0),
            solver=Anderson(memory=5, kind="I"),  # tuned for this task (docs/results.md)
            max_iter=max_iter,
            rtol=1e-5,
            atol=0.0,
            callback=record,
        )
        synchronize(device)
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
            **side_report(
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
                z0=problem.z0(),
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
    """Per-iteration time of the joint solve over one plain ``f`` + one VJP.

    Example:
        >>> import torch
        >>> report = bench_overhead(torch.device("cpu"), quick=True, repeats=1)
        >>> report["task"], report["baseline"]["f_evals"], report["jiio"]["f_evals"]
        ('overhead', 1, 1)
    """
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
            f, objective, x, z0=z, mu0=mu, step_size=1.0, max_iter=iterations, rtol=0.0, atol=0.0
        )

    def timed(fn: Callable[[], None]) -> float:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - start

    for _ in range(3):
        plain()
    joint(5)
    plain_times, full_times, one_times = [], [], []
    with PeakMemory(device) as mem_plain:
        for _ in range(3):
            plain_times.append(timed(lambda: [plain() for _ in range(repeats)]) / repeats)
    with PeakMemory(device) as mem_joint:
        for _ in range(3):
            full_times.append(timed(lambda: joint(repeats + 1)))
            one_times.append(timed(lambda: joint(1)))
    # a 1-iteration solve's time is subtracted to remove set-up costs from the per-iteration
    # time; the minimum of each (not of their differences, which a loaded machine can make
    # negative) is the least disturbed measurement
    per_plain = min(plain_times)
    per_joint = (min(full_times) - min(one_times)) / repeats
    return {
        "task": "overhead",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": batch,
        "baseline": {**side_report("one f evaluation + one VJP", per_plain, 1, None, mem_plain)},
        "jiio": {**side_report("one joint iteration (Anderson)", per_joint, 1, None, mem_joint)},
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
        synchronize(device)
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            solution = solve_joint(
                problem.decoder.f,
                problem.objective,
                problem.x0,
                z0=problem.z0(),
                step_size=StepSwitch(3.0, 1.0),
                solver=Anderson(memory=5, kind="I"),
                max_iter=max_iter,
                rtol=0.0,
                atol=0.0,
                autocast=autocast,
            )
            synchronize(device)
            elapsed = time.perf_counter() - start
        objective = problem.true_objective(solution.x)
        sides.append(
            side_report(f"{name}, {max_iter} joint iterations", elapsed, max_iter, objective, mem)
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
