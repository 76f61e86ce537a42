"""The tasks of ``jiio demo``: what each compares, how its quality is judged, its budgets.

:data:`TASKS` holds the benchmarks of :data:`jiio_ext.apps.bench.TASKS` (latent inversion,
per-iteration overhead, a torchdeq model, adversarial attack, an inverse problem,
meta-learning, bf16 autocast) and two training comparisons (adversarial training: JIIOPGD vs
torchattacks' PGD in the loop; generative inpainting training: JIIO vs the nested inner loop),
each with its runner ``(budget, device, folder) -> report``. The demo sets no JIIO option
itself: where a bench also runs JIIO with the library's default options (``jiio_default``),
that is the row's JIIO side and the bench's tuned run is kept as ``jiio_tuned``; elsewhere the
row's method column names the settings. :func:`jiio_ext.apps.demo.run_demo` runs them.

* **Budgets** (:data:`BUDGETS`): ``"quick"`` (under 3 minutes on 2 CPU cores), ``"full"``
  (under 15 minutes) and ``"tiny"`` (tests); every task states its time budget in each.
* **No training before measuring.** The adversarial and inverse benches use small trained
  digits models shipped in ``jiio_ext/apps/weights/`` (see :func:`load_weights`; rebuilt by
  ``scripts/make_demo_weights.py``). Only the two training comparisons train, which is what
  they measure.
* **GPU-only options** (bf16 autocast) state no budget off the GPU (:meth:`DemoTask.budget_s`).

Example:
    >>> list(TASKS)[:3], TASKS["latent"].quality
    (['latent', 'overhead', 'torchdeq'], 'decoded MSE')
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BUDGETS", "TASKS", "DemoTask", "load_weights"]

# Demo budgets: "tiny" (tests), "quick" (under 3 minutes on 2 CPU cores), "full" (under 15).
BUDGETS = ("tiny", "quick", "full")
WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class DemoTask:
    """One task of the demo: what it compares, how quality is judged, its budgets and runner.

    Args:
        name: the task's name (``--tasks NAME``).
        what: what is compared, in words (the start of the report's sentence).
        quality: the quality measure's name; ``""`` for a task that compares time only.
        better: ``"higher"`` or ``"lower"``: which quality values are better.
        tolerance: quality differences up to this much count as equal (noise of the measure).
        budgets: the stated time budget in seconds, by budget name.
        run: ``(budget, device, folder) -> report`` in the bench report schema.
        gpu_only: an option that only pays off on a GPU: skipped on CPU, with a note.
        why_slower: why JIIO can lose on time in this task (shown when it does).
        short: the comparison in a few words (the report's first screen).

    Example:
        >>> task = TASKS["inverse"]
        >>> task.better, task.budgets["quick"] <= 60
        ('higher', True)
    """

    name: str
    what: str
    quality: str
    better: str
    tolerance: float
    budgets: dict[str, float]
    run: Callable[[str, str, Path], dict[str, Any]]
    gpu_only: bool = False
    why_slower: str = ""
    short: str = ""

    def budget_s(self, budget: str, device: str) -> float:
        """The stated budget in seconds on ``device`` (0 for a GPU option off the GPU).

        Example:
            >>> TASKS["autocast"].budget_s("quick", "cpu"), TASKS["latent"].budget_s("quick", "cpu")
            (0.0, 18.0)
        """
        if self.gpu_only and not device.startswith("cuda"):
            return 0.0
        return float(self.budgets[budget])


def load_weights(name: str) -> dict[str, Any]:
    """A shipped model of the demo: ``{"state_dict", "config", "recipe"}``.

    The files hold tensors and numbers only and are read with ``weights_only=True``.

    Args:
        name: ``"digits_classifier"`` or ``"digits_decoder"``.

    Returns:
        The stored dict (tensors on the CPU).

    Raises:
        FileNotFoundError: no such shipped model.

    Example:
        >>> sorted(load_weights("digits_classifier"))
        ['config', 'recipe', 'state_dict']
    """
    import torch

    path = WEIGHTS / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; rebuild it with python scripts/make_demo_weights.py"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _copy_images(source: Path, target: Path, names: Sequence[str], prefix: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (source / name).is_file():
            shutil.copy(source / name, target / f"{prefix}{name}")


def _training_side(name: str, log: dict[str, Any], objective: float, **extra: Any) -> dict:
    """One side of a training comparison: mean epoch time and the final quality."""
    epochs = log["epochs"]
    mean_epoch = sum(e["epoch_time_s"] for e in epochs) / len(epochs)
    return {
        "name": name,
        "time_s": round(mean_epoch, 3),
        "f_evals": None,
        "objective": objective,
        **extra,
    }


_SHORT_TRAINING = (
    "One short epoch on {} digits: the models are barely trained, so the quality column only "
    "shows that neither side broke; jiio demo (full) trains longer."
)


def _training_report(
    task: str,
    device: str,
    objective_name: str,
    sizes: dict[str, Any],
    budget: str,
    baseline: dict,
    jiio: dict,
) -> dict[str, Any]:
    """A training comparison in the bench report schema (time = mean epoch time).

    Short budgets carry a note that their quality column only shows that neither side broke.
    """
    report = {
        "task": task,
        "device": device,
        "objective_name": objective_name,
        "epochs": sizes["epochs"],
        "baseline": baseline,
        "jiio": jiio,
        "time_name": "mean epoch time",
        "speedup_time": round(baseline["time_s"] / jiio["time_s"], 2),
        "training_images": sizes["train_size"] or "all",
    }
    if budget != "full":
        report["note"] = _SHORT_TRAINING.format(sizes["train_size"])
        report["caveat"] = "quality after one short epoch only"
    return report


def _adversarial_training(budget: str, device: str, folder: Path) -> dict[str, Any]:
    """JIIOPGD vs PGD in Madry adversarial training (digits, L∞ 0.1), epoch time and accuracy."""
    from jiio_ext.apps.tasks.adversarial import train_adversarial

    sizes = {
        "tiny": dict(epochs=1, train_size=32, eval_size=16, steps=2, eval_steps=2),
        "quick": dict(epochs=1, train_size=128, eval_size=64, steps=10, eval_steps=10),
        "full": dict(epochs=2, train_size=768, eval_size=200, steps=10, eval_steps=20),
    }[budget]
    logs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in ("pgd", "jiio"):
            logs[method] = train_adversarial(
                method=method,
                out=f"{scratch}/{method}",
                device=device,
                progress=False,
                robust_eval=False,
                **sizes,
            )
        _copy_images(Path(scratch) / "pgd", folder, ("examples.png",), "baseline_PGD_")
        _copy_images(Path(scratch) / "jiio", folder, ("examples.png", "curves.png"), "JIIO_")
    names = {
        "pgd": f"torchattacks PGD-{sizes['steps']} in the loop",
        "jiio": f"JIIOPGD ({sizes['steps']} PGD-equivalent steps) in the loop",
    }
    sides = {
        method: _training_side(
            names[method],
            log,
            log["epochs"][-1]["robust_accuracy"],
            clean_accuracy=log["epochs"][-1]["clean_accuracy"],
        )
        for method, log in logs.items()
    }
    return _training_report(
        "adversarial-training",
        device,
        f"robust accuracy under PGD-{sizes['eval_steps']} (higher is better)",
        sizes,
        budget,
        sides["pgd"],
        sides["jiio"],
    )


def _generative_training(budget: str, device: str, folder: Path) -> dict[str, Any]:
    """JIIO vs nested inner loop training a DEQ decoder for inpainting (digits, 16×16)."""
    from jiio_ext.apps.tasks.generative import train_generative

    sizes = {
        "tiny": dict(
            epochs=1, train_size=32, eval_size=16, batch_size=16, inner_iters=5, eval_iters=5
        ),
        # batches of 8: a one-epoch run still draws a training curve of 4 steps
        "quick": dict(
            epochs=1, train_size=32, eval_size=8, batch_size=8, inner_iters=40, eval_iters=20
        ),
        "full": dict(epochs=1, train_size=256, eval_size=64, batch_size=64, inner_iters=40),
    }[budget]
    logs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in ("nested", "jiio"):
            logs[method] = train_generative(
                problem="inpaint",
                method=method,
                out=f"{scratch}/{method}",
                device=device,
                progress=False,
                **sizes,
            )
        _copy_images(Path(scratch) / "nested", folder, ("reconstructions.png",), "baseline_")
        names = ("reconstructions.png", "curves.png", "residuals.png")
        _copy_images(Path(scratch) / "jiio", folder, names, "JIIO_")
    names = {
        "nested": f"nested: Adam, {sizes['inner_iters']} steps through torchdeq solves",
        "jiio": f"JIIO, {sizes['inner_iters']} joint iterations",
    }
    sides = {
        method: _training_side(names[method], log, round(log["epochs"][-1]["test_psnr"], 3))
        for method, log in logs.items()
    }
    return _training_report(
        "generative-training",
        device,
        "test PSNR of inpainted digits (dB; higher is better)",
        sizes,
        budget,
        sides["nested"],
        sides["jiio"],
    )


def _adversarial(budget: str, device: str, folder: Path) -> dict[str, Any]:
    """``jiio bench adversarial`` on the shipped digits classifier."""
    import torch

    from jiio_ext.apps.bench.adversarial import bench_adversarial
    from jiio_ext.apps.models import DEQClassifier

    stored = load_weights("digits_classifier")
    model = DEQClassifier(channels=stored["config"]["channels"])
    model.load_state_dict(stored["state_dict"])
    report = bench_adversarial(torch.device(device), quick=budget != "full", model=model)
    report["model"] = f"shipped digits classifier ({stored['recipe']})"
    _adversarial_examples(model.to(device), device, folder / "adversarial_examples.png")
    return report


def _adversarial_examples(model: Any, device: str, path: Path) -> None:
    """Eight held-out digits attacked by PGD and JIIOPGD (L∞ 0.1, 5 steps), true → predicted."""
    import torch
    import torchattacks

    from jiio_ext.adapters.torchattacks import JIIOPGD
    from jiio_ext.apps.data import load_digits
    from jiio_ext.apps.figures import image_grid

    _, _, images, labels = load_digits(torch.device(device))
    images, labels = images[:8], labels[:8]
    rows = {"clean": images}
    rows["PGD-5 (baseline)"] = torchattacks.PGD(
        model, eps=0.1, alpha=0.025, steps=5, random_start=False
    )(images, labels)
    rows["JIIOPGD-5"] = JIIOPGD(model, eps=0.1, alpha=0.025, steps=5, random_start=False)(
        images, labels
    )
    captions = {}
    with torch.no_grad():
        for name, batch in rows.items():
            predicted = model(batch).argmax(1)
            captions[name] = [f"{int(t)} → {int(p)}" for t, p in zip(labels, predicted)]
    image_grid(
        rows, path, "adversarial examples, L∞ ε = 0.1: true class → predicted class", captions
    )


def _inverse(budget: str, device: str, folder: Path) -> dict[str, Any]:
    """``jiio bench inverse``'s comparison (inpainting) on the shipped digits decoder."""
    import torch

    from jiio_ext.apps.bench.inverse import compare_reconstruction
    from jiio_ext.apps.data import load_images
    from jiio_ext.apps.tasks.generative import make_problem
    from jiio_ext.apps.tasks.latent import build_decoder

    stored = load_weights("digits_decoder")
    latent_dim = stored["config"]["latent_dim"]
    decoder = build_decoder(latent_dim=latent_dim).to(device)
    decoder.load_state_dict(stored["state_dict"])
    batch = {"tiny": 4, "quick": 8, "full": 32}[budget]
    # quick: JIIO at default options reaches the baseline's PSNR at iteration 43 of 50 (8
    # digits); every iterate is scored untimed against it, so a short budget saves wall time
    steps, max_iter = {"tiny": (5, 10), "quick": (40, 50), "full": (40, 200)}[budget]
    clean = load_images("digits", image_size=16, device=torch.device(device))[2][:batch]
    operator = make_problem("inpaint", 16)
    torch.manual_seed(0)
    comparison = compare_reconstruction(
        decoder,
        operator,
        clean,
        latent_dim=latent_dim,
        steps=steps,
        max_iter=max_iter,
        trace_stride={"tiny": 2, "quick": 10, "full": 5}[budget],
        return_latents=True,
    )
    latents = comparison.pop("latents")
    _inverse_examples(decoder, operator, clean, latents, folder / "reconstructions.png")
    return {
        "task": "inverse",
        "problem": "inpaint",
        "device": device,
        "batch": int(clean.shape[0]),
        "objective_name": "test PSNR (dB, [0, 1] scale; higher is better)",
        "model": f"shipped digits decoder ({stored['recipe']})",
        **comparison,
    }


def _inverse_examples(decoder: Any, operator: Any, clean: Any, latents: dict, path: Path) -> None:
    """Eight inpainted digits: target, measurement, the baseline's and JIIO's reconstructions.

    The reconstructions are the latents each side's reported PSNR was scored at, decoded at a
    tight fixed point as :func:`~jiio_ext.apps.bench.inverse.psnr_of_latents` scores them.
    """
    import torch
    from torchdeq import get_deq

    from jiio_ext.adapters.kornia import psnr
    from jiio_ext.apps.figures import image_grid

    count = min(8, clean.shape[0])
    shown = torch.arange(count, device=clean.device)
    measurement = operator.measure(clean, seed=0).index_select(shown)  # as compared
    clean = clean[:count]
    rows = {"target": clean, "measurement": operator.naive_inverse(measurement).clamp(0, 1)}
    captions = {}
    loose = decoder.deq
    decoder.deq = get_deq(f_solver="anderson", f_max_iter=200, f_tol=1e-6)
    try:
        for title, side in (("baseline (nested Adam)", "baseline"), ("JIIO", "jiio")):
            with torch.no_grad():
                images = decoder(latents[side][:count]).clamp(0, 1)
            rows[title] = images
            captions[title] = [f"{float(value):.1f} dB" for value in psnr(images, clean)]
    finally:
        decoder.deq = loose
    image_grid(
        rows,
        path,
        "inpainting held-out digits: reconstructions and their PSNR (higher is better)",
        captions,
    )


# benches whose full budget alone would take most of the full demo's 15 minutes on 2 CPU cores
# (jiio bench meta: about 15 min; jiio bench torchdeq: 64 channels, over 6 min under load)
_QUICK_IN_FULL = frozenset({"meta", "torchdeq"})


def _bench(name: str) -> Callable[[str, str, Path], dict[str, Any]]:
    """A runner of ``jiio bench NAME`` (its quick budget in the quick and tiny demos)."""

    def run(budget: str, device: str, folder: Path) -> dict[str, Any]:
        from jiio_ext.apps.bench import run_task

        report = run_task(name, device=device, quick=budget != "full" or name in _QUICK_IN_FULL)
        default = report.pop("jiio_default", None)
        if default is not None:  # the row shows JIIO with default options; the tuned run aside
            report["jiio_tuned"] = report["jiio"]
            report["jiio"] = default
            report["speedup_time"] = default.get("speedup_time")
        return report

    return run


_ADVERSARIAL_SLOWER = (
    "JIIOPGD's per-step cost is one f evaluation and one VJP; PGD's is a full forward solve and "
    "an implicit backward, so JIIO can only lose where those solves are very short."
)


# The demo's tasks in the order they run; budgets in seconds (quick: 2 loaded CPU cores).
TASKS: dict[str, DemoTask] = {
    task.name: task
    for task in (
        DemoTask(
            "latent",
            "latent inversion of 16 images through a conv DEQ decoder, JIIO against nested Adam "
            "(warm-started Anderson inner solves), at equal objective",
            "decoded MSE",
            "lower",
            1e-6,
            {"tiny": 60, "quick": 18, "full": 150},
            _bench("latent"),
            short="latent inversion, JIIO vs nested Adam",
        ),
        DemoTask(
            "overhead",
            "the cost of one joint iteration against one f evaluation plus one VJP",
            "",
            "lower",
            0.0,
            {"tiny": 30, "quick": 6, "full": 15},
            _bench("overhead"),
            short="one joint iteration vs one f evaluation + VJP",
        ),
        DemoTask(
            "torchdeq",
            "latent inversion through a torchdeq model via the decorator, against Adam through "
            "model(x) (torchdeq Anderson + implicit backward)",
            "objective (MSE)",
            "lower",
            1e-6,
            {"tiny": 60, "quick": 25, "full": 30},
            _bench("torchdeq"),
            short="a torchdeq model's input, JIIO vs Adam through model(x)",
        ),
        DemoTask(
            "adversarial",
            "an L∞ attack (ε = 0.1) on a trained digits DEQ classifier, JIIOPGD against "
            "torchattacks' PGD with the same steps (a stronger attack leaves a lower robust "
            "accuracy)",
            "robust accuracy",
            "lower",
            1 / 64,
            {"tiny": 60, "quick": 10, "full": 45},
            _adversarial,
            why_slower=_ADVERSARIAL_SLOWER,
            short="L∞ attack on a digits DEQ, JIIOPGD vs PGD",
        ),
        DemoTask(
            "inverse",
            "inpainting held-out digits with a trained DEQ decoder, JIIO against nested Adam "
            "through torchdeq solves, at equal test PSNR",
            "test PSNR (dB)",
            "higher",
            0.05,
            # full: 169 s on an idle core with the default options (every iterate scored)
            {"tiny": 60, "quick": 30, "full": 180},
            _inverse,
            why_slower=(
                "JIIO's time counts until its iterate first reaches the baseline's PSNR; when "
                "its budget ends below that PSNR, no speed-up is claimed."
            ),
            short="inpainting digits, JIIO vs nested Adam",
        ),
        DemoTask(
            "meta",
            "5-way 1-shot digits meta-learning of a FiLM DEQ, JIIO's inner loop against "
            "higher-style MAML",
            "meta-test accuracy",
            "higher",
            0.05,
            {"tiny": 120, "quick": 18, "full": 30},
            _bench("meta"),
            why_slower="a few meta-steps only: set-up costs weigh on both sides.",
            short="5-way 1-shot digits, JIIO vs MAML",
        ),
        DemoTask(
            "autocast",
            "the latent problem with f under bf16 autocast against float32, same budget",
            "decoded MSE",
            "lower",
            1e-4,
            {"tiny": 60, "quick": 20, "full": 60},
            _bench("autocast"),
            gpu_only=True,
            short="bf16 autocast vs float32 f",
        ),
        DemoTask(
            "adversarial-training",
            "Madry adversarial training of a digits DEQ, JIIOPGD against torchattacks' PGD in "
            "the loop (mean epoch time)",
            "robust accuracy",
            "higher",
            0.03,
            {"tiny": 120, "quick": 15, "full": 120},
            _adversarial_training,
            why_slower=_ADVERSARIAL_SLOWER,
            short="adversarial training, JIIOPGD vs PGD in the loop",
        ),
        DemoTask(
            "generative-training",
            "training a DEQ decoder for inpainting with the latents inferred in the loop, JIIO "
            "against nested Adam (mean epoch time)",
            "test PSNR (dB)",
            "higher",
            0.3,
            {"tiny": 120, "quick": 25, "full": 150},
            _generative_training,
            short="decoder training, JIIO vs nested inner loop",
        ),
    )
}
