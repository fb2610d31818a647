"""The CLI end to end: start-up stays light, the quickstart learns, the Shakespeare pipeline runs."""

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA, cli


def test_help_does_not_import_torch_or_pydantic():
    code = ("import sys; from apt_kernel.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'pydantic', 'rich', 'apt_plugin_lm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage: " in out and out.strip().endswith("[]")


def test_loading_every_builtin_plugin_imports_no_heavy_library():
    """What `plugins doctor` does for each plugin (and `plugins list` after an edit): load its module and let it
    register. Registration names factories; torch, optuna and the encoders' libraries wait for a build."""
    code = ("import sys; from apt_kernel.kernel import Kernel\n"
            "kernel = Kernel(plugins_dirs=[], strict=True); kernel.load_all()\n"
            "print(sorted(kernel.plugins)); print(sorted(m for m in ('torch', 'optuna', 'transformers', 'librosa', "
            "'fastapi', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded, heavy = out.strip().splitlines()
    assert "apt-plugin-errors" in loaded and "apt-plugin-hpo" in loaded, loaded
    assert heavy == "[]"


def test_version_and_unknown_command():
    assert "kernel API 1.0.0" in cli("--version").stdout
    bad = cli("fly")
    assert bad.returncode == 2 and "No such command" in bad.stderr


def test_plugins_info_shows_options():
    out = cli("plugins", "info", "apt-plugin-lm").stdout
    assert "model 'apt-lm'" in out and "attention" in out and "kernel_api" in out
    missing = cli("plugins", "info", "apt-plugin-ln")
    assert missing.returncode == 2 and "did you mean 'apt-plugin-lm'" in missing.stderr


def test_run_prints_a_summary_and_writes_the_run(tiny_pipeline, tmp_path):
    result = cli("run", str(tiny_pipeline), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "Finished 'tiny'" in result.stdout and "val loss" in result.stdout
    assert "resume with" in result.stdout and "--resume latest" in result.stdout
    run = tmp_path / "run"
    assert json.loads((run / "pipeline.json").read_text())["model"]["d_model"] == 32
    assert (run / "metadata.json").exists() and (run / "model" / "config.json").exists()
    resumed = cli("run", str(tiny_pipeline), "--no-progress", "--resume", "latest", "--set", "trainer.max_steps=8")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert "trainer.max_steps: 4 in the checkpoint, 8 now" in resumed.stdout  # the note names what changed
    assert len(list((run / "checkpoints").glob("*.pt"))) == 2
    assert json.loads((run / "pipeline.json").read_text())["trainer"]["max_steps"] == 8


@pytest.mark.slow
def test_quickstart_learns_offline(tmp_path):
    """The embedded default, shortened: val loss falls far below the corpus's unigram entropy."""
    result = cli("run", str(REPO / "pipelines" / "quickstart.toml"), "--no-progress",
                 "--set", f"pipeline.output_dir={str(tmp_path / 'qs')!r}", "--set", "trainer.max_steps=150",
                 "--set", "trainer.eval_every=0", "--set", "data.max_chars=300000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    val = float(re.search(r"val loss\s+([\d.]+)", result.stdout).group(1))
    entropy = float(re.search(r"unigram entropy\s+([\d.]+)", result.stdout).group(1))
    assert val < entropy - 0.6, (val, entropy)  # measured: 2.573 against an entropy of 3.322 (the bound 2.722)
    assert "sample before training" in result.stdout and "sample after training" in result.stdout


def run_shakespeare(pipeline: str, out, *overrides: str):
    """A Shakespeare pipeline on the shared Tiny Shakespeare, into ``out``, with ``--set`` overrides."""
    sets = [word for override in (f"data.path={str(SHARED_DATA / 'tinyshakespeare' / 'input.txt')!r}",
                                  f"pipeline.output_dir={str(out)!r}", *overrides) for word in ("--set", override)]
    return cli("run", str(REPO / "pipelines" / pipeline), "--no-progress", *sets)


@pytest.mark.slow
@pytest.mark.slow_tier  # the slow tier (pytest --slow-tier): the quickstart's test covers the same path
@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare" / "input.txt").exists(), reason="shared data absent")
def test_shakespeare_char_pipeline_runs(tmp_path):
    result = run_shakespeare("shakespeare-char.toml", tmp_path / "sh", "trainer.max_steps=60",
                             "trainer.eval_batches=10")
    assert result.returncode == 0, result.stderr
    assert float(re.search(r"val loss\s+([\d.]+)", result.stdout).group(1)) < 3.3


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare" / "input.txt").exists(), reason="shared data absent")
def test_the_gpu_shakespeare_pipeline_builds_and_steps_on_cpu(tmp_path):
    """Its race runs on a GPU (bench/race_nanogpt_gpu.py); here its model, data and callbacks are built for real."""
    result = run_shakespeare("shakespeare-char-gpu.toml", tmp_path / "gpu", "trainer.device='cpu'",
                             "trainer.compile=false", "trainer.precision='fp32'", "trainer.max_steps=2",
                             "trainer.eval_batches=1", "data.batch_size=4")
    assert result.returncode == 0, result.stderr
    assert "steps            2" in result.stdout and (tmp_path / "gpu" / "model").is_dir()


def test_shakespeare_without_data_path_is_a_user_error(tmp_path):
    result = cli("run", str(REPO / "pipelines" / "shakespeare-char.toml"), "--set", "data.path='nowhere.txt'",
                 cwd=tmp_path)
    assert result.returncode == 2 and "file or folder not found: nowhere.txt" in result.stderr


def test_a_plugins_warning_is_one_line_not_the_plugins_source(tiny_pipeline, tmp_path):
    """`warnings.warn` in a plugin printed its file, line number and that line of its code under `apt-kernel run`."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "warner.py").write_text(
        'APT_MANIFEST = {"kernel_api": "^1.0", "version": "1.0.0", "provides": {"callback": {"warner": {}}}}\n'
        "import warnings\nfrom apt_sdk import Callback, hookimpl\n\n"
        "class Warner(Callback):\n"
        "    def on_fit_start(self, trainer):\n"
        '        warnings.warn("the sky is low")\n\n'
        "@hookimpl\ndef register_callbacks(register):\n"
        '    register("warner", lambda options, context: Warner())\n')
    tiny_pipeline.write_text(tiny_pipeline.read_text().replace("max_steps = 4", "max_steps = 1")
                             + '\n[[callbacks]]\nuse = "warner"\n')
    result = cli("run", str(tiny_pipeline), "--no-progress", "--plugins-dir", str(plugins))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "sky" in line]
    assert lines == ["warning: the sky is low"], result.stderr
