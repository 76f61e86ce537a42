"""``jiio train meta``: meta-learning a FiLM-conditioned DEQ with JIIO or a baseline inner loop.

Tasks (see :mod:`jiio_ext.apps.tasks.meta_data`): ``sinusoid`` regression, ``digits`` N-way K-shot
(scikit-learn's bundled digits × rotations, held-out digits 7–9) and ``omniglot`` (torchvision,
from ``data_dir``, held-out alphabets). Methods (see :mod:`jiio_ext.apps.tasks.meta_methods`):
``jiio``, ``maml`` (higher, unrolled through the DEQ), ``fomaml`` and ``imaml`` (nested solve +
conjugate-gradient meta-gradient).

Every run shows a tqdm bar with the live query loss and metric, writes ``checkpoint.pt`` each
epoch (``resume=True`` continues from it), ``log.json``, ``curves.png`` and, for the sinusoid,
``sinusoid_fits.png`` into its output folder.

Example:
    >>> from jiio_ext.apps.tasks.meta import TASKS, train_meta
    >>> TASKS
    ('sinusoid', 'digits', 'omniglot')
    >>> log = train_meta("digits", "jiio", epochs=2, out="runs/meta")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from jiio_ext.apps import train_options
from jiio_ext.apps.distributed import DistContext, init_from_env
from jiio_ext.apps.runlog import log_header, write_json
from jiio_ext.apps.tasks.meta_data import (
    ClassPool,
    TaskBatch,
    digits_pool,
    omniglot_pool,
    sample_sinusoid,
)
from jiio_ext.apps.tasks.meta_methods import (
    METHODS,
    MetaConfig,
    adapt_and_predict,
    meta_step,
    task_losses,
)
from jiio_ext.apps.tasks.meta_models import FiLMDEQNet
from jiio_ext.apps.tasks.training import LOG, open_run, save_epoch
from jiio_ext.validate import check_positive

__all__ = [
    "TASKS",
    "TUNED_SETTINGS",
    "evaluate_meta",
    "make_meta_problem",
    "run_meta_cli",
    "train_meta",
]

# task families of ``jiio train meta`` (defined with the CLI's options)
TASKS = train_options.META_TASKS
# default inner settings of each task family (``jiio train meta`` and ``jiio bench meta``):
# digits and sinusoid tuned on validation splits (make_meta_problem(validation=True), scored
# with evaluate_meta(seed=4321); docs/meta.md; the meta-test tasks were never used), omniglot
# untuned
TUNED_SETTINGS = {
    "sinusoid": MetaConfig(regression=True, inner_lr=1.0, maml_lr=4.0, prox=0.3, jiio_steps=10),
    "digits": MetaConfig(
        inner_lr=0.5, maml_lr=8.0, prox=0.01, head_prox=3e-5, jiio_steps=40, backward_max_iter=100
    ),
    "omniglot": MetaConfig(inner_lr=0.5, prox=0.1),
}


class _Sampler:
    """Draws task batches of one task family (meta-training or held-out)."""

    def __init__(
        self, task: str, pool: ClassPool | None, n_way: int, k_shot: int, k_query: int, device
    ) -> None:
        self.task, self.pool = task, pool
        self.n_way, self.k_shot, self.k_query = n_way, k_shot, k_query
        self.device = device

    def __call__(self, tasks: int, train: bool, generator: torch.Generator) -> TaskBatch:
        if self.task == "sinusoid":
            return sample_sinusoid(tasks, self.k_shot, self.k_query, generator, self.device)
        return self.pool.sample(self.n_way, self.k_shot, self.k_query, tasks, train, generator)


def make_meta_problem(
    task: str,
    n_way: int = 5,
    k_shot: int = 1,
    k_query: int = 5,
    data_dir: str | None = None,
    device: torch.device | str = "cpu",
    hidden: int = 32,
    context_dim: int = 16,
    *,
    seed: int = 0,
    validation: bool = False,
):
    """The model and the task sampler of a task family.

    ``seed`` initialises the model. ``validation=True`` samples the digits from the validation
    split (meta-train digits 0–4, held-out digits 5–6; the meta-test digits 7–9 unused); the
    sinusoid has no class split (validate on another task seed of :func:`evaluate_meta`).

    Returns:
        ``(model, sampler)`` where ``sampler(tasks, train, generator) -> TaskBatch``.

    Example:
        >>> import torch
        >>> model, sampler = make_meta_problem("digits", hidden=8)
        >>> sampler(2, True, torch.Generator().manual_seed(0)).x_spt.shape
        torch.Size([2, 5, 64])
    """
    device = torch.device(device)
    if task not in TASKS:
        raise ValueError(f"task: unknown meta-learning task {task!r}; expected one of {TASKS}")
    if task == "sinusoid":
        pool, in_dim, out_dim = None, 1, 1
    else:
        if task == "omniglot" and validation:
            raise ValueError("validation: only the digits tasks have a validation split")
        if task == "digits":
            pool = digits_pool(device, validation=validation)
        else:
            pool = omniglot_pool(data_dir, device)
        in_dim, out_dim = pool.dim, n_way
    # sinusoid: context only (CAVIA-style); classification: context and head
    model = FiLMDEQNet(
        in_dim,
        out_dim,
        hidden=hidden,
        context_dim=context_dim,
        seed=seed,
        adapt_head=task != "sinusoid",
    ).to(device)
    return model, _Sampler(task, pool, n_way, k_shot, k_query, device)


def evaluate_meta(
    model: torch.nn.Module,
    method: str,
    sampler,
    cfg: MetaConfig,
    tasks: int,
    batch: int = 8,
    seed: int = 1234,
) -> dict[str, float]:
    """Meta-test: adapt to ``tasks`` held-out tasks with the method's own inner loop.

    Example:
        >>> model, sampler = make_meta_problem("sinusoid", hidden=8)
        >>> cfg = MetaConfig(regression=True)
        >>> sorted(evaluate_meta(model, "fomaml", sampler, cfg, tasks=1))
        ['loss', 'metric']

    Returns:
        ``{"loss": mean query loss, "metric": accuracy or MSE}`` over the tasks (a fixed set:
        the same seed gives the same tasks to every method).
    """
    generator = torch.Generator().manual_seed(seed)
    losses, metrics, done = [], [], 0
    while done < tasks:
        size = min(batch, tasks - done)
        data = sampler(size, False, generator)
        out = adapt_and_predict(model, method, data, cfg)
        losses.append(task_losses(out, data.y_qry, cfg.regression))
        if cfg.regression:
            metrics.append(task_losses(out, data.y_qry, True))
        else:
            metrics.append((out.argmax(-1) == data.y_qry).float().mean(1))
        done += size
    return {"loss": float(torch.cat(losses).mean()), "metric": float(torch.cat(metrics).mean())}


def _plot(folder: Path, log: dict, model, method, sampler, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jiio_ext.apps.figures import training_curves

    # regression's metric is its loss (MSE): one panel; classification: loss and accuracy
    names = [("loss", "query loss (MSE)" if cfg.regression else "query loss (cross-entropy)")]
    if not cfg.regression:
        names.append(("metric", "query accuracy"))
    panels = [
        (
            label,
            [
                ("steps", f"meta_train_{key}", "meta-train, per meta-step"),
                ("epochs", f"meta_train_{key}", "meta-train, epoch mean"),
                ("epochs", f"meta_test_{key}", "meta-test, end of epoch"),
            ],
            False,
        )
        for key, label in names
    ]
    title = f"{log['config']['task']} / {method}"
    training_curves(log, folder / "curves.png", panels, title, step_name="meta-step")
    if log["config"]["task"] != "sinusoid":
        return
    generator = torch.Generator().manual_seed(99)
    data = sampler(3, False, generator)
    grid = torch.linspace(-5, 5, 100).view(1, 100, 1).expand(3, 100, 1)
    dense = TaskBatch(data.x_spt, data.y_spt, grid.contiguous(), torch.zeros(3, 100, 1))
    pred = adapt_and_predict(model, method, dense, cfg)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for t, axis in enumerate(axes):
        truth = torch.cat([data.x_qry[t], data.x_spt[t]]), torch.cat([data.y_qry[t], data.y_spt[t]])
        order = truth[0][:, 0].argsort()
        axis.plot(truth[0][order, 0], truth[1][order, 0], "k:", label="task (query+support)")
        axis.plot(grid[t, :, 0], pred[t, :, 0], label=f"adapted ({method})")
        axis.scatter(data.x_spt[t, :, 0], data.y_spt[t, :, 0], c="r", s=12, label="support")
        axis.set_xlabel("x")
        axis.set_ylabel("y")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "sinusoid_fits.png", dpi=100)
    plt.close(fig)


def train_meta(
    task: str = "sinusoid",
    method: str = "jiio",
    *,
    epochs: int = 5,
    steps_per_epoch: int = 50,
    tasks_per_batch: int = 4,
    n_way: int = 5,
    k_shot: int | None = None,
    k_query: int | None = None,
    inner_lr: float | None = None,
    inner_steps: int | None = None,
    prox: float | None = None,
    head_prox: float | None = None,
    meta_lr: float = 1e-3,
    hidden: int = 32,
    context_dim: int = 16,
    eval_tasks: int = 64,
    data_dir: str | None = None,
    out: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Meta-train a FiLM DEQ on a task family and meta-test it on held-out tasks.

    Args:
        task: ``"sinusoid"``, ``"digits"`` or ``"omniglot"``.
        method: ``"jiio"``, ``"maml"``, ``"fomaml"`` or ``"imaml"``.
        epochs: number of epochs (each ends with a meta-test and a checkpoint).
        steps_per_epoch: meta-steps per epoch.
        tasks_per_batch: tasks per meta-step.
        n_way: classes per task (classification).
        k_shot: support examples per class (default 1; sinusoid: 10 points).
        k_query: query examples per class (default 5; sinusoid: 10 points).
        inner_lr: inner step size of every method (default: the task's tuned values in
            ``TUNED_SETTINGS``, e.g. digits: MAML 8.0, JIIO and iMAML 0.5).
        inner_steps: inner budget of every method: joint iterations (jiio), SGD steps (maml,
            fomaml) or steps to convergence (imaml) (default: ``TUNED_SETTINGS``, e.g.
            digits: 40 / 5 / 5 / 20).
        prox: proximal weight (jiio, imaml; default: ``TUNED_SETTINGS``).
        head_prox: proximal weight of the adapted head (jiio, imaml; default:
            ``TUNED_SETTINGS``; ``None`` there means ``prox``).
        meta_lr: Adam learning rate of the meta-parameters.
        hidden: DEQ width.
        context_dim: task-context size.
        eval_tasks: held-out tasks of each meta-test.
        data_dir: Omniglot folder (torchvision layout, no download).
        out: output folder (default ``jiio-runs/<time>-meta-<task>-<method>``).
        resume: continue from ``out/checkpoint.pt`` (written with the same settings but
            ``epochs``, ``eval_tasks``, ``device``).
        overwrite: let a new run replace the run already in ``out`` (else refused).
        device: torch device.
        seed: seed of the model and the task stream.
        progress: show a tqdm bar.

    Returns:
        The log (also written to ``out/log.json``): config, per-epoch records (meta-train and
        meta-test loss/metric, time per meta-step) and the final meta-test.

    Raises:
        ValueError: unknown task or method, a bad inner setting, or unreadable data.

    Example:
        >>> import tempfile
        >>> log = train_meta("sinusoid", "fomaml", epochs=1, steps_per_epoch=1, hidden=8,
        ...                  tasks_per_batch=1, eval_tasks=1, out=tempfile.mkdtemp(),
        ...                  progress=False)  # doctest: +SKIP
        >>> sorted(log["epochs"][0])[:3]  # doctest: +SKIP
        ['epoch', 'epoch_time_s', 'meta_step_time_s']
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown method {method!r}; expected one of {list(METHODS)}")
    if task not in TASKS:
        raise ValueError(f"task: unknown meta-learning task {task!r}; expected one of {TASKS}")
    for name, value in (
        ("epochs", epochs),
        ("steps_per_epoch", steps_per_epoch),
        ("tasks_per_batch", tasks_per_batch),
        ("n_way", n_way),
        ("eval_tasks", eval_tasks),
        ("k_shot", 1 if k_shot is None else k_shot),
        ("k_query", 1 if k_query is None else k_query),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    cfg = _inner_settings(task, inner_lr, inner_steps, prox, head_prox)
    ctx = init_from_env(device)
    try:
        ctx.check_batch_size(tasks_per_batch)
        return _train_meta(ctx, **{k: v for k, v in locals().items() if k != "ctx"})
    finally:
        ctx.close()


def _inner_settings(
    task: str,
    inner_lr: float | None,
    inner_steps: int | None,
    prox: float | None,
    head_prox: float | None,
) -> MetaConfig:
    """The task's tuned inner settings with the arguments the user gave in their place."""
    if inner_lr is not None:
        check_positive(inner_lr, "inner_lr")
    for name, value in (("prox", prox), ("head_prox", head_prox)):
        if value is not None:
            check_positive(value, name, allow_zero=True)
    if inner_steps is not None and (
        isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1
    ):
        raise ValueError(f"inner_steps: expected an integer >= 1, got {inner_steps!r}")
    changes: dict[str, Any] = {}
    if inner_lr is not None:
        changes.update(inner_lr=inner_lr, maml_lr=inner_lr)
    if inner_steps is not None:
        changes.update(jiio_steps=inner_steps, maml_steps=inner_steps, imaml_steps=inner_steps)
    if prox is not None:
        changes["prox"] = prox
    if head_prox is not None:
        changes["head_prox"] = head_prox
    return dataclasses.replace(TUNED_SETTINGS[task], **changes)


def _train_meta(ctx: DistContext, **settings: Any) -> dict[str, Any]:
    """The meta-training loop of :func:`train_meta`; each rank meta-steps its share of tasks."""
    task, method = settings["task"], settings["method"]
    epochs, steps_per_epoch = settings["epochs"], settings["steps_per_epoch"]
    tasks_per_batch, n_way = settings["tasks_per_batch"], settings["n_way"]
    k_shot, k_query = settings["k_shot"], settings["k_query"]
    meta_lr, hidden, context_dim = settings["meta_lr"], settings["hidden"], settings["context_dim"]
    eval_tasks, data_dir, out = settings["eval_tasks"], settings["data_dir"], settings["out"]
    resume, device, seed = settings["resume"], settings["device"], settings["seed"]
    progress = settings["progress"] and ctx.is_main
    regression = task == "sinusoid"
    k_shot = k_shot or (10 if regression else 1)
    k_query = k_query or (10 if regression else 5)
    dev = ctx.device
    folder = Path(
        out or Path("jiio-runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-meta-{task}-{method}"
    )
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    cfg = settings["cfg"]
    torch.manual_seed(seed)
    model, sampler = make_meta_problem(
        task, n_way, k_shot, k_query, data_dir, dev, hidden, context_dim
    )
    meta_opt = torch.optim.Adam(model.parameters(), lr=meta_lr)
    generator = torch.Generator().manual_seed(seed)
    config = {
        "task": task,
        "method": method,
        "n_way": n_way,
        "k_shot": k_shot,
        "k_query": k_query,
        "tasks_per_batch": tasks_per_batch,
        "inner_lr": (cfg.maml_lr or cfg.inner_lr) if method in ("maml", "fomaml") else cfg.inner_lr,
        "inner_steps": {
            "jiio": cfg.jiio_steps,
            "maml": cfg.maml_steps,
            "fomaml": cfg.maml_steps,
            "imaml": cfg.imaml_steps,
        }[method],
        "prox": cfg.prox,
        "head_prox": cfg.head_prox,
        "meta_lr": meta_lr,
        "hidden": hidden,
        "context_dim": context_dim,
        "device": device,
        "threads": torch.get_num_threads(),
    }
    logged = {
        k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        for k, v in settings.items()
        if k not in ("cfg", "progress")
    }
    logged.update(cfg=dataclasses.asdict(cfg), threads=torch.get_num_threads())
    log: dict[str, Any] = {**log_header("meta", logged), "config": config, "epochs": []}
    start_epoch = 0
    fixed = {k: v for k, v in config.items() if k not in ("device", "threads")}
    fixed.update(steps_per_epoch=steps_per_epoch, seed=seed, data_dir=data_dir)
    state = open_run(ctx, folder, fixed, resume=resume, overwrite=settings["overwrite"])
    if state is not None:
        model.load_state_dict(state["model"])
        meta_opt.load_state_dict(state["meta_opt"])
        generator.set_state(state["generator"])
        log = state["log"]
        start_epoch = state["epoch"] + 1
    for epoch in range(start_epoch, epochs):
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=steps_per_epoch, desc=f"{task}/{method} epoch {epoch + 1}", leave=False
            )
        losses, metrics, step_times = [], [], []
        began = time.perf_counter()
        for _ in range(steps_per_epoch):
            batch = sampler(tasks_per_batch, True, generator)  # the same on every rank
            rows = ctx.shard(tasks_per_batch).to(batch.x_spt.device)
            mine = TaskBatch(*(t.index_select(0, rows) for t in dataclasses.astuple(batch)))
            tick = time.perf_counter()
            meta_opt.zero_grad()
            result = meta_step(model, method, mine, cfg)
            # meta-gradients are written into .grad by implicit / CG solves, outside autograd's
            # accumulation that DDP's hooks watch: average them over the ranks directly
            ctx.average_gradients(model.parameters())
            meta_opt.step()
            result = ctx.all_reduce_mean({"loss": result["loss"], "metric": result["metric"]})
            step_times.append(time.perf_counter() - tick)
            losses.append(result["loss"])
            metrics.append(result["metric"])
            log.setdefault("training_steps", []).append(
                {
                    "step": len(log["training_steps"]) + 1,
                    "epoch": epoch + 1,
                    "meta_train_loss": result["loss"],
                    "meta_train_metric": result["metric"],
                }
            )
            if bar is not None:
                bar.set_postfix(loss=f"{result['loss']:.3f}", metric=f"{result['metric']:.3f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        test = evaluate_meta(model, method, sampler, cfg, eval_tasks)
        log["epochs"].append(
            {
                "epoch": epoch + 1,  # counted from 1, as the other trainers count
                "epoch_time_s": round(time.perf_counter() - began, 3),
                "meta_step_time_s": round(sum(step_times) / len(step_times), 4),
                "meta_train_loss": sum(losses) / len(losses),
                "meta_train_metric": sum(metrics) / len(metrics),
                "meta_test_loss": test["loss"],
                "meta_test_metric": test["metric"],
            }
        )
        save_epoch(
            ctx,
            folder,
            {
                "model": model.state_dict(),
                "meta_opt": meta_opt.state_dict(),
                "generator": generator.get_state(),
                "log": log,
                "epoch": epoch,
                "settings": fixed,
            },
            log,
        )
    log["final"] = log["epochs"][-1] if log["epochs"] else {}
    if ctx.is_main:
        write_json(folder / LOG, log)
        _plot(folder, log, model, method, sampler, cfg)
    return log


def run_meta_cli(args: argparse.Namespace) -> int:
    """Run ``jiio train meta`` from parsed arguments; print a summary; return the exit code.

    Example:
        >>> import argparse
        >>> from jiio_ext.apps.train_options import add_meta_arguments
        >>> args = add_meta_arguments(argparse.ArgumentParser()).parse_args([])
        >>> run_meta_cli(args)  # doctest: +SKIP
        0
    """
    try:
        log = train_meta(
            args.task,
            args.method,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            tasks_per_batch=args.tasks_per_batch,
            n_way=args.n_way,
            k_shot=args.k_shot,
            k_query=args.k_query,
            inner_lr=args.inner_lr,
            inner_steps=args.inner_steps,
            prox=args.prox,
            head_prox=args.head_prox,
            meta_lr=args.meta_lr,
            eval_tasks=args.eval_tasks,
            data_dir=args.data_dir,
            out=args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            device=args.device,
            seed=args.seed,
        )
    except ValueError as err:
        raise SystemExit(f"jiio train meta: {err}") from None
    metric = "MSE" if args.task == "sinusoid" else "accuracy"
    for entry in log["epochs"]:
        print(
            f"epoch {entry['epoch']}: {entry['meta_step_time_s']:.3f} s/meta-step, meta-test "
            f"loss {entry['meta_test_loss']:.4f}, {metric} {entry['meta_test_metric']:.4f}"
        )
    return 0
