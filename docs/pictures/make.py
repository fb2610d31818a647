"""Make the documentation's pictures from real runs of the product, never by hand:

    .venv/bin/python docs/pictures/make.py            # into docs/pictures/ (about 5 minutes on 2 CPU cores)
    .venv/bin/python docs/pictures/make.py --quick --out /tmp/pictures   # tiny runs: what the tests check

- tensorboard.png, gradient-flow.png, attention.png: a quickstart run with the `tensorboard` and
  `gradient-monitor` callbacks; TensorBoard itself is started on its event files and photographed in
  headless Chromium; the attention maps (refinement on and off) are the images the run logged.
- optimization-history.png, param-importances.png: Optuna's plots from `apt-kernel hpo`.
- sort-of-clevr.png: Sort-of-CLEVR test questions with the answers of a small model trained here.
- marketplace.png: the plugin directory of a marketplace server, with plugins published to it by
  `apt-kernel plugins publish` and rated.

Needs Debian's chromium and chromium-driver (what .ci/run installs) for the two screenshots. It ends
by checking that every picture a page shows was made and is a real picture (exit 1 otherwise); .ci/run
runs the quick mode after the tests.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHOWN = re.compile(r"\]\((?:\.\./)*pictures/([\w.-]+\.png)\)")  # a picture a page shows
KERNEL = [sys.executable, "-m", "apt_kernel.cli"]
HPO_PIPELINE = """
[pipeline]
name = "search"
seed = 0
output_dir = "runs/search"

[data]
use = "text"
corpus = "python-stdlib-docs"
max_chars = 200000
tokenizer = "char"
block_size = 64
batch_size = 32

[model]
use = "apt-lm"
d_model = 64
num_heads = 4
num_layers = 2
d_ff = 256

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
max_steps = 200
eval_every = 50
eval_batches = 10

[tool.hpo]
seed = 0
prune_after_step = {prune}
trial_overrides = {{ "trainer.max_steps" = {steps}, "trainer.eval_every" = {every} }}

[tool.hpo.space]
"trainer.learning_rate" = {{ range = [1e-3, 1e-2] }}
"trainer.weight_decay" = {{ range = [0.01, 0.3] }}
"model.num_layers" = {{ range = [1, 3] }}
"""


def kernel(*args: str, cwd: Path) -> str:
    from apt_sdk.testing import cli

    done = cli(*args, cwd=cwd, env_extra={"PYTHONWARNINGS": "ignore"}, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"apt-kernel {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(command: list[str], url: str, cwd: Path):
    """A server process, until the block ends; waits until ``url`` answers."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if process.poll() is not None:
                    raise SystemExit(f"{command[0:3]} exited with {process.returncode}") from None
                time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def photograph(url: str, path: Path, ready_script: str, window: str = "1400,900", prepare=None) -> None:
    """A screenshot of ``url`` once ``ready_script`` (JavaScript) returns true; ``prepare(browser)`` first
    clicks what has to be clicked."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    from apt_sdk.testing import headless_chromium

    with tempfile.TemporaryDirectory() as profile, headless_chromium(Path(profile), window) as browser:
        browser.get(url)
        if prepare is not None:
            prepare(browser)
        WebDriverWait(browser, 60, ignored_exceptions=(WebDriverException,)).until(
            lambda b: b.execute_script(ready_script))
        time.sleep(2)  # the charts animate in
        browser.save_screenshot(str(path))


def show_scalars(browser) -> None:
    """TensorBoard's time series: only the scalars, the settings pane closed, every group open."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, ignored_exceptions=(WebDriverException,))
    wait.until(lambda b: [x for x in b.find_elements(By.TAG_NAME, "button") if x.text.strip() == "Scalars"])[0].click()
    pane = browser.find_elements(By.CSS_SELECTOR, "[aria-label='Toggle settings side pane']")
    if pane and browser.find_elements(By.TAG_NAME, "metrics-dashboard-settings"):
        pane[0].click()
    wait.until(lambda b: len(b.find_elements(By.TAG_NAME, "metrics-card-group-toolbar")) >= 2)
    for group in browser.find_elements(By.TAG_NAME, "metrics-card-group-toolbar"):
        if not group.find_elements(By.XPATH, "./following-sibling::*//scalar-card"):
            group.click()


def observed_run(work: Path, out: Path, steps: int) -> None:
    pipeline = (REPO / "pipelines" / "quickstart.toml").read_text() + (
        '\n[[callbacks]]\nuse = "gradient-monitor"\nevery = 10\n'
        '\n[[callbacks]]\nuse = "tensorboard"\nevery = 10\nhistogram_every = 50\n')
    (work / "observed.toml").write_text(pipeline)
    kernel("run", "observed.toml", "--no-progress", "--set", "pipeline.output_dir=runs/observed",
           "--set", f"trainer.max_steps={steps}", "--set", f"trainer.eval_every={max(steps // 4, 5)}", cwd=work)
    run = work / "runs" / "observed"
    shutil.copy(run / "gradient_flow.png", out / "gradient-flow.png")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    (out / "attention.png").write_bytes(events.Images("attention/layer0")[-1].encoded_image_string)

    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(run / "tensorboard"), "--port", str(port),
               "--bind_all"]
    with server(command, f"http://127.0.0.1:{port}/data/runs", work):
        photograph(f"http://127.0.0.1:{port}/?darkMode=false#timeseries", out / "tensorboard.png",
                   "return document.querySelectorAll('scalar-card line-chart').length >= 3", "1400,1150", show_scalars)


def search(work: Path, out: Path, trials: int, steps: int) -> None:
    (work / "search.toml").write_text(HPO_PIPELINE.format(prune=steps // 2, steps=steps, every=max(steps // 4, 1)))
    kernel("hpo", "search.toml", "--trials", str(trials), cwd=work)
    hpo = work / "runs" / "search" / "hpo"
    shutil.copy(hpo / "optimization_history.png", out / "optimization-history.png")
    shutil.copy(hpo / "param_importances.png", out / "param-importances.png")


def sort_of_clevr(work: Path, out: Path, images: int, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from apt_plugin_multimodal import MultimodalAPTModel

    kernel("multimodal", "prepare", "sort-of-clevr", "--out", "data/sort-of-clevr", "--train-images", str(images),
           "--test-images", "10", cwd=work)
    kernel("run", str(REPO / "pipelines" / "multimodal-sort-of-clevr.toml"), "--no-progress",
           "--set", "data.num_workers=0", "--set", "trainer.log_every=0", "--set", f"trainer.max_steps={steps}",
           "--set", "trainer.learning_rate=3e-3", "--set", "model.d_model=64", "--set", "model.d_ff=128",
           "--set", "model.num_heads=2", "--set", "model.num_layers=1", "--set",
           "model.vision={patch_size=15, hidden_size=64, intermediate_size=128, num_hidden_layers=1, "
           "num_attention_heads=2}", cwd=work)
    model = MultimodalAPTModel.from_pretrained(str(work / "runs" / "multimodal-sort-of-clevr"))
    data = work / "data" / "sort-of-clevr"
    records = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    scenes = list(dict.fromkeys(r["image_path"] for r in records))[:2]
    figure, axes = plt.subplots(1, 2 * len(scenes), figsize=(6 * len(scenes), 3.4),
                                gridspec_kw={"width_ratios": [1, 1.6] * len(scenes)})
    for index, scene in enumerate(scenes):
        picture, text = axes[2 * index], axes[2 * index + 1]
        picture.imshow(Image.open(data / scene))
        picture.set_axis_off()
        lines = []
        for record in [r for r in records if r["image_path"] == scene][:12]:  # two colours, six questions each
            answer = model.generate_from_multimodal(record["prompt"], image=str(data / scene), max_length=8)
            mark = "✓" if answer == record["text"] else "✗"
            lines.append(f"{mark} {record['prompt'].strip():<24} {answer:<7} ({record['text']})")
        text.text(0, 1, "question, model's answer (truth)\n\n" + "\n".join(lines), va="top", family="monospace",
                  fontsize=8)
        text.set_axis_off()
    figure.suptitle(f"Sort-of-CLEVR test scenes; a small model after {steps} steps on {images} training images")
    figure.tight_layout()
    figure.savefig(out / "sort-of-clevr.png", dpi=110)
    plt.close(figure)


def marketplace(work: Path, out: Path) -> None:
    from apt_plugin_marketplace.client import PluginMarketplace

    storage, port = work / "market", free_port()
    admin = ["--storage", str(storage)]
    storage.mkdir()
    alice = kernel("marketplace", "user", "add", "alice", *admin, cwd=work).strip()
    bob = kernel("marketplace", "user", "add", "bob", *admin, cwd=work).strip()
    url = f"http://127.0.0.1:{port}/"
    with server([*KERNEL, "marketplace", "serve", "--port", str(port), *admin], url + "simple/", work):
        for name, versions in (("apt-plugin-loss-csv", ["0.1.0", "0.2.0"]), ("apt-plugin-greeter", ["1.0.0"])):
            kernel("new-plugin", name, "--dir", ".", cwd=work)
            for version in versions:
                project = work / name / "pyproject.toml"
                project.write_text(project.read_text().replace('version = "0.1.0"', f'version = "{version}"'))
                subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                                "-w", "dist", f"./{name}"], cwd=work, check=True, capture_output=True)
                wheel = next((work / "dist").glob(f"{name.replace('-', '_')}-{version}-*.whl"))
                PluginMarketplace(url, alice).publish_plugin(str(wheel))  # what `plugins publish` calls
        for token, stars in ((alice, 5), (bob, 4)):
            PluginMarketplace(url, token).rate_plugin("apt-plugin-loss-csv", stars)
        photograph(url, out / "marketplace.png", "return document.querySelectorAll('tr.plugin').length >= 2",
                   window="1200,600")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "pictures")
    parser.add_argument("--quick", action="store_true", help="tiny runs (for the tests), not the documented ones")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for name, make in (("observed run", lambda: observed_run(work, args.out, 10 if quick else 400)),
                           ("search", lambda: search(work, args.out, 3 if quick else 10, 10 if quick else 60)),
                           ("sort-of-clevr", lambda: sort_of_clevr(work, args.out, 20 if quick else 500,
                                                                   20 if quick else 600)),
                           ("marketplace", lambda: marketplace(work, args.out))):
            started = time.monotonic()
            make()
            print(f"{name}: {time.monotonic() - started:.0f} s")
    return check(args.out)


def check(folder: Path) -> int:
    """Each picture the pages show was made: a PNG at least 200 px wide and high, not one flat colour."""
    from PIL import Image, ImageStat

    shown = {name for page in (REPO / "docs").rglob("*.md") for name in SHOWN.findall(page.read_text())}
    missing = {name for name in shown if not (folder / name).exists()}
    problems = [f"{name}: not made" for name in sorted(missing)]
    for name in sorted(shown - missing):
        with Image.open(folder / name) as picture:
            spread = ImageStat.Stat(picture.convert("L")).stddev[0]
            if picture.format != "PNG" or min(picture.size) < 200 or spread < 5:
                problems.append(f"{name}: {picture.format} {picture.size}, brightness stddev {spread:.1f}")
    print("\n".join(problems) or f"{len(shown)} pictures in {folder}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
