"""The demo's HTML report: self-contained, numbers in the tables, images that render."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jiio_ext.apps.figures import convergence_plot
from jiio_ext.apps.report import machine_info, write_report
from jiio_ext.apps.summary import summary_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_PNG = "data:image/png;base64,"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAGENTA = (1.0, 0.0, 1.0)


def side(name: str, time_s: float, f_evals: int | None, objective: float | None) -> dict:
    return {
        "name": name,
        "time_s": time_s,
        "f_evals": f_evals,
        "objective": objective,
        "peak_mem_mb": 12.5,
    }


def make_record() -> dict:
    jiio = side("solve_joint, Anderson type I", 2.4241, 41, 0.009773)
    jiio["full_run"] = {"time_s": 9.6963, "iterations": 100, "objective": 0.00162}
    adversarial_jiio = side("JIIOPGD steps=5", 0.2, 20, 0.29)
    del adversarial_jiio["peak_mem_mb"]  # a missing key
    return {
        "version": "9.9.9",
        "machine": machine_info("cpu"),
        "total_time_s": 123.456,
        "tasks": {
            "latent": {
                "task": "latent",
                "device": "cpu",
                "dtype": "float32",
                "batch": 16,
                "baseline": side("nested Adam lr=0.1, 30 steps", 22.2771, 235, 0.011121),
                "other_baselines": [side("nested L-BFGS", 30.5, 300, 0.0125)],
                "jiio": jiio,
                "speedup_time": 9.19,
                "speedup_evals": 5.73,
            },
            "adversarial": {
                "task": "adversarial",
                "quality": {"name": "robust accuracy", "better": "lower", "tolerance": 0.01},
                "clean_accuracy": 0.953,
                "baseline": side("torchattacks.PGD steps=5", 0.512, None, 0.31),
                "jiio": adversarial_jiio,
                "speedup_time": 2.56,
                "l2": {
                    "eps": 1.0,
                    "baseline": side("torchattacks.PGDL2", 0.5, None, 0.4),
                    "jiio": side("JIIOPGDL2", 0.3, 20, 0.38),
                    "speedup_time": 1.67,
                },
            },
            "overhead": {
                "task": "overhead",
                "baseline": side("one f evaluation + one VJP", 0.00123, 1, None),
                "jiio": side("one joint iteration", 0.00151, 1, None),
                "overhead": 1.228,
            },
            "torchdeq": {"task": "torchdeq", "error": "ModuleNotFoundError: torchdeq <missing>"},
        },
    }


def make_images(folder: Path) -> dict[str, list[Path]]:
    import matplotlib.image
    import numpy as np

    plot = convergence_plot(
        {
            "JIIO": ([0.1 * k for k in range(1, 30)], [0.5**k for k in range(1, 30)]),
            "nested Adam": ([1.0 * k for k in range(1, 30)], [0.9**k for k in range(1, 30)]),
        },
        folder / "convergence_latent.png",
        "latent",
        "objective",
    )
    block = folder / "adversarial-examples.png"
    matplotlib.image.imsave(block, np.tile(np.array(MAGENTA), (60, 90, 1)))
    return {
        "latent": [block, plot],
        "adversarial": [folder / "never_written.png"],
        "extra figures": [plot],
    }


class PageParser(HTMLParser):
    """Collects tags, ids and the URLs of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.links: list[str] = []
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attrs_dict = dict(attrs)
        if "id" in attrs_dict:
            self.ids.add(attrs_dict["id"])
        if tag == "img":
            self.images.append(attrs_dict.get("src") or "")
        for name in ("href", "src", "srcset", "action", "data", "poster"):
            if name in attrs_dict and not (tag == "img" and name == "src"):
                self.links.append(attrs_dict[name] or "")
        self._in_cell = tag in ("td", "th")
        if self._in_cell:
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells[-1] += data


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, dict[str, list[Path]]]:
    images = make_images(tmp_path / "figures")
    return write_report(make_record(), tmp_path / "run", images), images


def test_report_is_self_contained(report):
    path, images = report
    assert path == path.parent / "report.html" and path.is_file()
    page = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(page)
    assert parser.tags[0] == "html" and "style" in parser.tags
    assert not {"script", "link", "iframe", "object", "embed"} & set(parser.tags)
    assert "url(" not in page and "@import" not in page and "://" not in page
    # every link stays inside the page and lands on a section
    assert parser.links, "the summary links to the task sections"
    for link in parser.links:
        assert link.startswith("#") and link[1:] in parser.ids, link
    # every image is an embedded PNG: 2 for latent, 1 in the extra section, none for the
    # missing file
    assert len(parser.images) == 3
    wanted = {png_size(p.read_bytes()) for p in images["latent"]}
    for src in parser.images:
        assert src.startswith(DATA_PNG)
        assert png_size(base64.b64decode(src[len(DATA_PNG) :], validate=True)) in wanted
    assert "never_written.png: missing" in page
    assert "adversarial examples" in page and "convergence latent" in page  # captions


def test_report_tables_hold_numbers(report):
    path, _ = report
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    cells = [cell.strip() for cell in parser.cells]
    for text in ("22.3 s", "2.42 s", "9.19× faster", "2.56× faster", "1.23× overhead", "0.0111"):
        assert text in cells, text
    assert "0.00977" in cells and "235" in cells and "12.5 MB" in cells
    assert "9.7 s" in cells  # nested full_run time
    assert "30.5 s" in cells  # the other baseline
    assert "-" in cells  # missing keys and None values
    page = path.read_text(encoding="utf-8")
    assert "ModuleNotFoundError: torchdeq &lt;missing&gt;" in page  # the error, escaped
    assert "9.9.9" in page and "torch</b>" in page


def test_summary_table_text():
    record = make_record()
    record["tasks"]["latent"]["quality"] = {"name": "MSE", "better": "lower", "tolerance": 0.0}
    text = summary_table(record)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["task", "quality", "baseline"]
    latent = next(line for line in lines if line.startswith("latent"))
    assert "22.3 s" in latent and "2.42 s" in latent and "9.19× faster" in latent
    assert "MSE ↓" in latent and "JIIO better" in latent  # 0.00977 against 0.0111
    overhead = next(line for line in lines if line.startswith("overhead"))
    assert overhead.endswith("1.23× overhead")
    assert "torchdeq failed: ModuleNotFoundError" in text
    assert lines[-1] == "total time: 123 s"
    assert len({len(line) for line in lines[1:5]}) <= 2  # aligned columns


def test_total_time_says_when_the_machine_was_busy():
    record = make_record()
    record["machine"]["threads"] = 1
    record.update(total_time_s=200.0, cpu_time_s=100.0, budget_s=147.0)
    last = summary_table(record).splitlines()[-1]
    assert last.startswith("total time: 200 s, 100 s of CPU (stated budget 147 s)")
    assert "the machine was busy: the demo had 50 % of one core" in last
    record["cpu_time_s"] = 190.0  # it had the core: no excuse
    assert summary_table(record).splitlines()[-1].endswith("(stated budget 147 s)")


def test_first_screen_says_who_won_in_one_sentence_per_task(report):
    path, _ = report
    page = path.read_text(encoding="utf-8")
    first = page.split("<h2>Summary</h2>", 1)[0]
    sentences = re.findall(r"<li>(.*?)</li>", first.split('<ul class="sentences">', 1)[1])
    assert len(sentences) == 4
    latent = next(text for text in sentences if "task-latent" in text)
    assert "<b>JIIO 9.19× faster</b>" in latent  # the verdicts stand out
    text = re.sub(r"<[^>]+>", "", latent)
    assert "JIIO 9.19× faster (wall time: JIIO 2.42 s, baseline 22.3 s)" in text
    adversarial = next(text for text in sentences if "task-adversarial" in text)
    text = re.sub(r"<[^>]+>", "", adversarial)
    assert "JIIO better on quality (robust accuracy ↓: JIIO 0.29, baseline 0.31)" in text
    # the long sentence, with the direction in words, opens the task's section
    assert "Quality (robust accuracy, lower is better): JIIO is better" in page
    assert "failed" in next(text for text in sentences if "task-torchdeq" in text)


def test_sentences_say_losses_in_words():
    from jiio_ext.apps.summary import task_sentence, verdict

    quality = {"name": "test PSNR", "better": "higher", "tolerance": 0.05}
    report = {
        "quality": quality,
        "baseline": side("nested Adam", 0.4, None, 13.52),
        "jiio": {**side("JIIO", 1.2, 200, 13.37), "reached_baseline": False},
        "speedup_time": None,
        "why_slower": "its budget ran out.",
    }
    assert verdict(report) == {"quality": "baseline", "time": "baseline"}
    text = task_sentence("inverse", report)
    assert "the baseline is better, 13.52 against 13.37" in text
    assert "JIIO is 3× slower" in text and "Why slower: its budget ran out." in text
    report["jiio"]["objective"] = 13.50  # within the tolerance
    assert verdict(report)["quality"] == "equal"
    assert "skipped (GPU only)" in task_sentence("autocast", {"skipped": "GPU only"})


def test_quality_time_plot(tmp_path):
    from jiio_ext.apps.figures import quality_time_plot

    report = make_record()["tasks"]["latent"]
    report["quality"] = {"name": "MSE", "better": "lower", "tolerance": 0.0}
    report["traces"] = {"baseline": [[0.0, 10.0, 22.0], [0.1, 0.02, 0.0111]]}
    png_size(quality_time_plot(report, tmp_path / "q.png").read_bytes())


def test_one_epoch_training_curves_are_lines_not_a_dot(tmp_path):
    import matplotlib.image
    import numpy as np

    from jiio_ext.apps.figures import training_curves

    steps = [{"step": k, "epoch": 1, "loss": 1.0 / k} for k in range(1, 9)]
    log = {"training_steps": steps, "epochs": [{"epoch": 1, "loss": 0.34}]}
    panels = [("loss", [("steps", "loss", "per batch")], False)]
    blue = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first line colour

    def blue_pixels(record: dict) -> int:
        pixels = matplotlib.image.imread(training_curves(record, tmp_path / "c.png", panels, "t"))
        return int(np.all(np.abs(pixels[..., :3] - blue) < 0.1, axis=-1).sum())

    drawn = blue_pixels(log)
    assert drawn > 300  # 8 points joined by a line across the axes
    log["training_steps"] = steps[-1:]  # one step only: a dot
    assert blue_pixels(log) < drawn / 4


def test_image_grids_take_the_full_width_and_plots_share_a_row(tmp_path):
    import matplotlib.image
    import numpy as np

    grid, plot = tmp_path / "reconstructions.png", tmp_path / "quality_vs_time.png"
    matplotlib.image.imsave(grid, np.zeros((59, 104, 3)))  # 8 samples x 4 rows, as the demo's
    matplotlib.image.imsave(plot, np.zeros((46, 64, 3)))  # a plot
    page = write_report(make_record(), tmp_path / "run", {"latent": [plot, grid]}).read_text()
    figures = re.findall(r"<figure([^>]*)><img[^>]*alt=\"([^\"]+)\"", page)
    assert (' class="wide"', "reconstructions") in figures
    assert ("", "quality vs time") in figures


def test_report_with_empty_record(tmp_path):
    path = write_report({}, tmp_path)
    assert "No tasks ran." in path.read_text(encoding="utf-8")
    assert summary_table({}) == "no tasks ran"


def test_convergence_plot_checks_and_skips_non_positive(tmp_path):
    path = convergence_plot(
        {"JIIO": ([0, 1, 2], [1.0, 0.0, float("nan")])}, tmp_path / "a" / "b.png", "t", "y"
    )
    png_size(path.read_bytes())
    with pytest.raises(ValueError, match="2 xs but 1 ys"):
        convergence_plot({"JIIO": ([0, 1], [1.0])}, tmp_path / "c.png", "t", "y")


def test_machine_info_versions():
    info = machine_info("cpu")
    assert {"python", "torch", "platform", "threads", "device"} <= set(info)
    assert "matplotlib" in info and "gpu" not in info
    json.dumps(info)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    import matplotlib.image
    import numpy as np

    path, images = report
    profile = tmp_path / "profile"
    flags = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    # The report has no script; a test page frames it and lists each image's decoded size.
    # File pages may read each other's DOM only with --allow-file-access-from-files.
    harness = tmp_path / "harness.html"
    harness.write_text(
        '<!DOCTYPE html><html><body><pre id="result">pending</pre>'
        f'<iframe id="report" src="{path.as_uri()}"></iframe><script>'
        'window.addEventListener("load", () => {'
        '  const images = Array.from(document.getElementById("report").contentDocument.images);'
        '  document.getElementById("result").textContent = JSON.stringify('
        "    images.map(i => [i.complete, i.naturalWidth, i.naturalHeight]));"
        "});</script></body></html>"
    )
    dom = subprocess.run(
        [*flags, "--allow-file-access-from-files", "--dump-dom", harness.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = dom.split('<pre id="result">', 1)[1].split("</pre>", 1)[0]
    rendered = json.loads(result)
    expected = [png_size(p.read_bytes()) for p in images["latent"] + images["extra figures"]]
    assert [(w, h) for _, w, h in rendered] == expected
    assert all(complete for complete, _, _ in rendered)

    # and a screenshot of the report itself: not blank, the magenta test image is on it
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}"]
        + [path.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.05
    magenta = np.all(np.abs(pixels - np.array(MAGENTA)) < 0.05, axis=-1).sum()
    assert magenta >= 0.9 * 60 * 90
