"""``jiio bench meta-example``: the loop of higher's MAML Omniglot example, stock higher vs ours.

The loop has the structure of higher's ``examples/maml-omniglot.py``: meta-batches of
``tasks`` N-way tasks with ``k_spt`` support and ``k_qry`` query images per class, every
parameter of the network adapted by ``torch.optim.SGD(net.parameters(), lr=0.1)`` for
``n_inner = 5`` steps inside ``innerloop_ctx(net, inner_opt, copy_initial_weights=False)``,
the query loss of each task backpropagated, then one Adam step (lr 1e-3) on the
meta-parameters. The test phase adapts with ``track_higher_grads=False`` and scores the query
images. Only the module that provides ``innerloop_ctx`` differs between the two runs: ``higher``
or :mod:`jiio_ext.adapters.higher` with its defaults.

The network is a small torchdeq convolutional DEQ (:class:`ConvDEQ`: Anderson forward, IFT
backward). The data are images in the on-disk layout that the example's loader reads
(``root/processed/images_background/<alphabet>/<character>/*.png`` and
``images_evaluation``, 20 drawings per character, classes in that order, the first
1200/1623 of them for meta-training): a real Omniglot folder when ``data_dir`` has one, else
synthetic stroke characters that :func:`write_omniglot_like` draws into that layout.

Both methods run in the same process, their meta-steps interleaved, so that a shared CPU slows
both alike. Reported per method and seed: the train query-loss curve, the mean query loss of
the last meta-steps, test accuracy, median time per meta-step (wall clock, and process CPU
time: the less disturbed by other jobs), peak resident-set growth over two meta-steps
(coarse: the allocator reuses memory), the largest autograd graph of one task (MB of the
storages saved for backward during it) and a plot of the loss curves.

Example:
    >>> from jiio_ext.apps.bench.meta_example import bench_meta_example
    >>> report = bench_meta_example(meta_steps=2, test_tasks=2, seeds=(0,))  # doctest: +SKIP
    >>> sorted(report["methods"])  # doctest: +SKIP
    ['higher', 'jiio']
"""

from __future__ import annotations

import gc
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from jiio_ext.apps.bench.measure import PeakMemory

__all__ = [
    "ConvDEQ",
    "NShot",
    "bench_meta_example",
    "format_meta_example",
    "load_omniglot_folder",
    "run_cli",
    "write_omniglot_like",
]

# the loader's split: the first 1200 of Omniglot's 1623 classes are meta-training classes
TRAIN_FRACTION = 1200 / 1623
DRAWINGS = 20


def write_omniglot_like(
    root: str | Path,
    *,
    alphabets: int = 10,
    characters: int = 12,
    size: int = 105,
    seed: int = 0,
) -> Path:
    """Draw synthetic characters into the folder layout of the example's Omniglot loader.

    Each character is 2-4 random pen strokes; its 20 drawings jitter the stroke points and
    shift the whole character by a few pixels (black ink on white, ``size × size`` PNGs, as
    Omniglot's). The last ``1 − 1200/1623`` of the alphabets go to ``images_evaluation``.

    Args:
        root: folder to write ``processed/images_background`` and ``images_evaluation`` into.
        alphabets: number of alphabets.
        characters: characters per alphabet.
        size: image side in pixels.
        seed: seed of the strokes and drawings.

    Returns:
        ``root`` as a path.

    Example:
        >>> import tempfile
        >>> root = write_omniglot_like(tempfile.mkdtemp(), alphabets=2, characters=2, size=28)
        >>> len(list(root.glob("processed/*/*/*/*.png")))
        80
    """
    from PIL import Image, ImageDraw

    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    n_background = max(1, round(TRAIN_FRACTION * alphabets))
    width = max(2, size // 16)
    for a in range(alphabets):
        split = "images_background" if a < n_background else "images_evaluation"
        for c in range(characters):
            folder = root / "processed" / split / f"Alphabet_{a:02d}" / f"character{c + 1:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            strokes = int(torch.randint(2, 5, (1,), generator=gen))
            points = 0.15 + 0.7 * torch.rand(strokes, 3, 2, generator=gen)  # 3 points a stroke
            for d in range(DRAWINGS):
                jitter = 0.03 * torch.randn(points.shape, generator=gen)
                shift = 0.05 * torch.randn(1, 1, 2, generator=gen)
                drawn = ((points + jitter + shift).clamp(0.02, 0.98) * (size - 1)).tolist()
                image = Image.new("L", (size, size), 255)
                pen = ImageDraw.Draw(image)
                for stroke in drawn:
                    pen.line([tuple(p) for p in stroke], fill=0, width=width)
                image.save(folder / f"{a * 100 + c:04d}_{d + 1:02d}.png")
    return root


def load_omniglot_folder(root: str | Path, image_size: int = 28) -> torch.Tensor:
    """Read the loader's layout into a ``(classes, 20, 1, image_size, image_size)`` tensor.

    Classes are ``<alphabet>/<character>`` folders of ``images_background`` then
    ``images_evaluation`` (sorted), pixels in ``[0, 1]`` (ink 0), resized as the loader does.

    Args:
        root: folder holding ``processed/images_background`` and ``images_evaluation``.
        image_size: side of the resized images.

    Returns:
        The images, one row of 20 drawings per class.

    Raises:
        FileNotFoundError: no class folder with 20 PNG drawings under ``root/processed``.

    Example:
        >>> import tempfile
        >>> root = write_omniglot_like(tempfile.mkdtemp(), alphabets=2, characters=2, size=28)
        >>> tuple(load_omniglot_folder(root).shape)
        (4, 20, 1, 28, 28)
    """
    import numpy as np
    from PIL import Image

    base = Path(root) / "processed"
    classes = []
    for split in ("images_background", "images_evaluation"):
        for folder in sorted(p for p in (base / split).glob("*/*") if p.is_dir()):
            files = sorted(folder.glob("*.png"))[:DRAWINGS]
            if len(files) < DRAWINGS:
                continue
            images = [
                np.asarray(
                    Image.open(f).convert("L").resize((image_size, image_size)), dtype=np.float32
                )
                / 255.0
                for f in files
            ]
            classes.append(torch.from_numpy(np.stack(images)).unsqueeze(1))
    if not classes:
        raise FileNotFoundError(
            f"data_dir: no character folders with {DRAWINGS} PNG drawings under {base} "
            "(expected processed/images_background/<alphabet>/<character>/*.png)"
        )
    return torch.stack(classes)


class NShot:
    """N-way few-shot task batches from class-major images, split as the example's loader.

    Args:
        images: ``(classes, 20, C, H, W)``.
        n_way: classes per task.
        k_spt: support drawings per class.
        k_qry: query drawings per class.
        tasks: tasks per meta-batch.
        seed: seed of the task stream.

    Example:
        >>> stream = NShot(torch.rand(10, 20, 1, 8, 8), n_way=3, k_spt=1, k_qry=2, tasks=2)
        >>> [tuple(t.shape) for t in stream.next("train")]
        [(2, 3, 1, 8, 8), (2, 3), (2, 6, 1, 8, 8), (2, 6)]
    """

    def __init__(
        self, images: torch.Tensor, n_way: int, k_spt: int, k_qry: int, tasks: int, seed: int = 0
    ) -> None:
        if k_spt + k_qry > images.shape[1]:
            raise ValueError(f"k_spt + k_qry: at most {images.shape[1]}, got {k_spt + k_qry}")
        n_train = max(n_way, math.floor(TRAIN_FRACTION * images.shape[0]))
        self.splits = {"train": images[:n_train], "test": images[n_train:]}
        for name, part in self.splits.items():
            if part.shape[0] < n_way:
                raise ValueError(f"images: {part.shape[0]} {name} classes, fewer than n_way")
        self.n_way, self.k_spt, self.k_qry, self.tasks = n_way, k_spt, k_qry, tasks
        self.gen = torch.Generator().manual_seed(seed)

    def next(self, mode: str = "train") -> tuple[torch.Tensor, ...]:
        """``(x_spt, y_spt, x_qry, y_qry)``, each with a leading task dimension."""
        data, gen = self.splits[mode], self.gen
        batch: list[list[torch.Tensor]] = [[], [], [], []]
        for _ in range(self.tasks):
            chosen = torch.randperm(data.shape[0], generator=gen)[: self.n_way]
            xs, xq = [], []
            for cls in chosen:
                pick = torch.randperm(data.shape[1], generator=gen)[: self.k_spt + self.k_qry]
                xs.append(data[cls, pick[: self.k_spt]])
                xq.append(data[cls, pick[self.k_spt :]])
            labels = torch.arange(self.n_way)
            for x, k, slot in ((xs, self.k_spt, 0), (xq, self.k_qry, 2)):
                perm = torch.randperm(self.n_way * k, generator=gen)
                batch[slot].append(torch.cat(x)[perm])
                batch[slot + 1].append(labels.repeat_interleave(k)[perm])
        return tuple(torch.stack(part) for part in batch)


class ConvDEQ(nn.Module):
    """A small convolutional DEQ classifier: ``z = tanh(conv(z) + GN(stem(x)))``, torchdeq.

    Args:
        n_way: number of classes.
        channels: channels of the DEQ state (at half the input resolution).
        solver_iters: torchdeq Anderson budget of the forward and of the IFT backward.
        tol: their tolerance.

    Example:
        >>> net = ConvDEQ(n_way=5)
        >>> tuple(net(torch.rand(3, 1, 28, 28)).shape)
        (3, 5)
    """

    def __init__(
        self, n_way: int, channels: int = 16, solver_iters: int = 20, tol: float = 1e-3
    ) -> None:
        super().__init__()
        from torchdeq import get_deq

        self.stem = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(4, channels)
        self.cell = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():  # a contraction at initialisation (Jacobian norm about 0.5)
            self.cell.weight.mul_(0.5 / _conv_norm(self.cell.weight))
        self.head = nn.Linear(channels * 9, n_way)
        self.deq = get_deq(
            f_solver="anderson",
            f_max_iter=solver_iters,
            f_tol=tol,
            ift=True,
            b_solver="anderson",
            b_max_iter=solver_iters,
            b_tol=tol,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_way)`` of ``(B, 1, 28, 28)`` images."""
        u = self.norm(self.stem(x))
        z = self.deq(lambda z: torch.tanh(self.cell(z) + u), torch.zeros_like(u))
        return self.head(F.adaptive_avg_pool2d(z[0][-1], 3).flatten(1))


def _conv_norm(weight: torch.Tensor, size: int = 14, iters: int = 30) -> float:
    """Spectral norm of a stride-1 'same' convolution on ``size × size`` maps (power method)."""
    v = torch.randn(1, weight.shape[1], size, size, generator=torch.Generator().manual_seed(0))
    for _ in range(iters):
        w = F.conv_transpose2d(F.conv2d(v, weight, padding=1), weight, padding=1)
        v = w / w.norm()
    return float(F.conv2d(v, weight, padding=1).norm())


def _modules() -> dict[str, ModuleType]:
    import higher

    import jiio_ext.adapters.higher as ours

    return {"higher": higher, "jiio": ours}


def _meta_step(module, net, meta_opt, batch, n_inner: int, lr: float) -> tuple[float, float]:
    """One meta-step of the example's training loop.

    Returns:
        The mean query loss of its tasks, and the largest autograd graph of one task: MB of
        the distinct storages saved for backward while the task ran (forward and inner steps).
    """
    from jiio_ext.apps.tasks.graph_cycles import boxed_saved_tensors, release_ift_closures

    x_spt, y_spt, x_qry, y_qry = batch
    inner_opt = torch.optim.SGD(net.parameters(), lr=lr)
    meta_opt.zero_grad()
    losses, graph_mb = [], 0.0
    for i in range(x_spt.shape[0]):
        boxes: list[list[torch.Tensor]] = []
        with (
            boxed_saved_tensors(boxes),
            module.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt),
        ):
            for _ in range(n_inner):
                diffopt.step(F.cross_entropy(fnet(x_spt[i]), y_spt[i]))
            logits = fnet(x_qry[i])
            loss = F.cross_entropy(logits, y_qry[i])
            loss.backward()
            losses.append(float(loss.detach()))
            # higher through torchdeq keeps each task's graph alive in C++ reference cycles
            # (jiio_ext.apps.tasks.meta_methods); breaking them changes no number
            release_ift_closures([logits, *fnet.parameters()])
        storages = {b[0].untyped_storage().data_ptr(): b[0].untyped_storage().nbytes()
                    for b in boxes if isinstance(b[0], torch.Tensor)}  # fmt: skip
        graph_mb = max(graph_mb, sum(storages.values()) / 2**20)
        for box in boxes:
            box.clear()
    meta_opt.step()
    return sum(losses) / len(losses), graph_mb


def _test_accuracy(module, net, stream: NShot, batches: int, n_inner: int, lr: float) -> float:
    """The example's test phase: adapt without meta-gradient, score the query images."""
    inner_opt = torch.optim.SGD(net.parameters(), lr=lr)
    correct = total = 0
    for _ in range(batches):
        x_spt, y_spt, x_qry, y_qry = stream.next("test")
        for i in range(x_spt.shape[0]):
            with module.innerloop_ctx(net, inner_opt, track_higher_grads=False) as (fnet, diffopt):
                for _ in range(n_inner):
                    diffopt.step(F.cross_entropy(fnet(x_spt[i]), y_spt[i]))
                logits = fnet(x_qry[i]).detach()
            correct += int((logits.argmax(1) == y_qry[i]).sum())
            total += y_qry[i].numel()
    return 100.0 * correct / total


def _one_seed(images, seed, names, *, n_way, k_spt, k_qry, tasks, meta_steps, test_tasks,
              n_inner, lr, deq) -> dict[str, dict[str, Any]]:  # fmt: skip
    modules = _modules()
    torch.manual_seed(seed)
    init = ConvDEQ(n_way).state_dict()
    nets, opts, streams, runs = {}, {}, {}, {}
    for name in names:
        nets[name] = ConvDEQ(n_way, solver_iters=deq[0], tol=deq[1])
        nets[name].load_state_dict(init)
        opts[name] = torch.optim.Adam(nets[name].parameters(), lr=1e-3)
        streams[name] = NShot(images, n_way, k_spt, k_qry, tasks, seed=seed)
        runs[name] = {"loss_curve": [], "times_s": [], "cpu_times_s": []}
    for step in range(meta_steps):
        order = names if step % 2 == 0 else names[::-1]  # interleaved, alternating order
        for name in order:
            batch = streams[name].next("train")
            start, cpu = time.perf_counter(), time.process_time()
            loss, graph = _meta_step(modules[name], nets[name], opts[name], batch, n_inner, lr)
            runs[name]["times_s"].append(time.perf_counter() - start)
            runs[name]["cpu_times_s"].append(time.process_time() - cpu)
            runs[name]["loss_curve"].append(loss)
            runs[name]["graph_mb"] = max(runs[name].get("graph_mb", 0.0), graph)
    for name in names:
        batches = max(1, math.ceil(test_tasks / tasks))
        test = NShot(images, n_way, k_spt, k_qry, tasks, seed=10_000 + seed)
        runs[name]["test_accuracy"] = _test_accuracy(
            modules[name], nets[name], test, batches, n_inner, lr
        )
    for name in names if seed % 2 == 0 else names[::-1]:
        gc.collect()
        with PeakMemory(torch.device("cpu")) as peak:
            for _ in range(2):
                batch = streams[name].next("train")
                _meta_step(modules[name], nets[name], opts[name], batch, n_inner, lr)
        runs[name]["peak_memory_mb"] = peak.peak_mb
    return runs


def _plot(seeds_runs: dict[int, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {"higher": "tab:blue", "jiio": "tab:orange"}
    styles = ("-", "--", ":", "-.")
    for i, (seed, runs) in enumerate(seeds_runs.items()):
        for name, run in runs.items():
            label = f"{name}, seed {seed}"
            style = styles[i % len(styles)]
            ax.plot(run["loss_curve"], style, color=colors.get(name), alpha=0.8, label=label)
    ax.set_xlabel("meta-step")
    ax.set_ylabel("train query loss (mean over the meta-batch)")
    ax.set_title("higher's MAML example loop on a torchdeq conv DEQ")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench_meta_example(
    *,
    data_dir: str | Path | None = None,
    seeds: Sequence[int] = (0, 1),
    meta_steps: int = 12,
    tasks: int = 4,
    n_way: int = 5,
    k_spt: int = 1,
    k_qry: int = 5,
    n_inner: int = 5,
    lr: float = 0.1,
    test_tasks: int = 20,
    deq_tol: float = 1e-3,
    deq_iters: int = 20,
    out: str | Path | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Run the example's loop with stock higher and with ours; a JSON-ready report.

    Args:
        data_dir: a folder in the loader's layout (a real Omniglot ``processed`` folder);
            ``None``: synthetic characters are generated into a temporary folder.
        seeds: model initialisation and task-stream seeds (one run per method and seed).
        meta_steps: meta-steps per run.
        tasks: tasks per meta-batch (the example's ``task_num``).
        n_way: classes per task.
        k_spt: support images per class.
        k_qry: query images per class.
        n_inner: inner SGD steps (5 in the example).
        lr: inner SGD learning rate (0.1 in the example).
        test_tasks: test tasks scored after meta-training.
        deq_tol: tolerance of the network's torchdeq solves (forward and IFT backward).
        deq_iters: their iteration budget.
        out: folder for ``meta_example_losses.png`` (default: the current folder).
        threads: torch intra-op threads during the run (``None``: unchanged).

    Returns:
        ``{"settings", "methods": {name: {per-seed results, means}}, "speedup",
        "speedup_cpu", "plot"}``: the speed-ups are medians of the wall-clock and of the
        process CPU time per meta-step (the run uses one thread, so CPU time is the less
        disturbed by other jobs on a shared machine).

    Example:
        >>> report = bench_meta_example(meta_steps=1, test_tasks=1, seeds=(0,))  # doctest: +SKIP
        >>> report["speedup"] > 0  # doctest: +SKIP
        True
    """
    settings = {
        "seeds": list(seeds),
        "meta_steps": meta_steps,
        "tasks": tasks,
        "n_way": n_way,
        "k_spt": k_spt,
        "k_qry": k_qry,
        "n_inner": n_inner,
        "lr": lr,
        "test_tasks": test_tasks,
        "deq_tol": deq_tol,
        "deq_iters": deq_iters,
    }
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(data_dir) if data_dir is not None else write_omniglot_like(tmp)
            images = load_omniglot_folder(root)
        settings["data"] = str(data_dir) if data_dir is not None else "synthetic"
        settings["classes"] = int(images.shape[0])
        names = ["higher", "jiio"]
        per_seed = {
            seed: _one_seed(
                images,
                seed,
                names,
                n_way=n_way,
                k_spt=k_spt,
                k_qry=k_qry,
                tasks=tasks,
                meta_steps=meta_steps,
                test_tasks=test_tasks,
                n_inner=n_inner,
                lr=lr,
                deq=(deq_iters, deq_tol),
            )
            for seed in seeds
        }
    finally:
        torch.set_num_threads(previous)
    methods: dict[str, Any] = {}
    tail = max(1, meta_steps // 4)
    for name in names:
        runs = [per_seed[s][name] for s in seeds]
        methods[name] = {
            "test_accuracy": statistics.mean(r["test_accuracy"] for r in runs),
            "final_query_loss": statistics.mean(
                statistics.mean(r["loss_curve"][-tail:]) for r in runs
            ),
            "time_per_meta_step_s": statistics.median(t for r in runs for t in r["times_s"]),
            "cpu_time_per_meta_step_s": statistics.median(
                t for r in runs for t in r["cpu_times_s"]
            ),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
            "graph_mb_per_task": max(r["graph_mb"] for r in runs),
            "per_seed": {
                str(s): {
                    k: v
                    for k, v in per_seed[s][name].items()
                    if k not in ("times_s", "cpu_times_s")
                }
                | {"time_per_meta_step_s": statistics.median(per_seed[s][name]["times_s"])}
                for s in seeds
            },
        }
    plot = Path(out or ".") / "meta_example_losses.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    _plot(per_seed, plot)
    higher, ours = methods["higher"], methods["jiio"]
    speedup = higher["time_per_meta_step_s"] / ours["time_per_meta_step_s"]
    speedup_cpu = higher["cpu_time_per_meta_step_s"] / ours["cpu_time_per_meta_step_s"]
    return {
        "settings": settings,
        "methods": methods,
        "speedup": speedup,
        "speedup_cpu": speedup_cpu,
        "plot": str(plot),
    }


def format_meta_example(report: dict[str, Any]) -> str:
    """A text table of a :func:`bench_meta_example` report.

    Example:
        >>> one = {"test_accuracy": 80.0, "final_query_loss": 0.5, "time_per_meta_step_s": 1.0,
        ...        "cpu_time_per_meta_step_s": 0.9, "peak_memory_mb": 3.0, "graph_mb_per_task": 2.0}
        >>> report = {"settings": {"seeds": [0], "meta_steps": 1, "data": "synthetic"},
        ...           "methods": {"higher": one, "jiio": one}, "speedup": 1.0,
        ...           "speedup_cpu": 1.0, "plot": "p.png"}
        >>> print(format_meta_example(report).splitlines()[2])
        higher     80.0 %       0.500      1.000 s    0.900 s         3 MB       2.0 MB
    """
    settings = report["settings"]
    lines = [
        f"jiio bench meta-example: {settings['data']} data, seeds {settings['seeds']}, "
        f"{settings['meta_steps']} meta-steps",
        "method   test acc.  query loss  s / meta-step  CPU s / step  peak memory  graph / task",
    ]
    for name, r in report["methods"].items():
        lines.append(
            f"{name:<8}{r['test_accuracy']:>7.1f} %{r['final_query_loss']:>12.3f}"
            f"{r['time_per_meta_step_s']:>11.3f} s{r['cpu_time_per_meta_step_s']:>9.3f} s"
            f"{r['peak_memory_mb']:>10.0f} MB"
            f"{r.get('graph_mb_per_task', 0.0):>10.1f} MB"
        )
    lines.append(
        f"speed-up per meta-step: {report['speedup']:.2f}x (CPU time: "
        f"{report['speedup_cpu']:.2f}x); plot: {report['plot']}"
    )
    return "\n".join(lines)


def run_cli(args: Any) -> int:
    """``jiio bench meta-example``: run, print a table (or JSON with ``--json``).

    Example:
        >>> from jiio_ext.apps.cli import build_parser
        >>> args = build_parser().parse_args(["bench", "meta-example", "--quick"])
        >>> run_cli(args)  # doctest: +SKIP
        0
    """
    import json

    options: dict[str, Any] = {"seeds": tuple(args.seeds), "meta_steps": args.meta_steps}
    if args.quick:
        options.update(meta_steps=min(args.meta_steps, 3), tasks=2, test_tasks=6)
    report = bench_meta_example(data_dir=args.data_dir, out=args.out, **options)
    print(json.dumps(report) if args.json else format_meta_example(report), flush=True)
    return 0
