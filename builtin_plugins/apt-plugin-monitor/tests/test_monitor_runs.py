"""apt-plugin-monitor in real runs of a tiny APT language model (its [test] extra): the gradient-monitor
callback's statistics and plot, NaN gradients reported with layer names and acted on (warn, skip_step, stop),
and the TensorBoard callback's event files."""

import importlib.util
import json

import pytest
import torch

from apt_plugin_lm.testing_runs import run_with_nan_step
from apt_plugin_monitor.visualizer import read_events as events
from apt_sdk.testing import cli


def test_monitor_callback_writes_plot_and_stats_beside_the_checkpoints(tiny_pipeline, tmp_path):
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "gradient-monitor"\nevery = 2\n')
    result = cli("run", str(tiny_pipeline), "--no-progress")
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "run" / "gradient_stats.json").read_text())
    assert stats["steps"] == [2, 4] and "decoder.0.attn.q.weight" in stats["layers"] and stats["anomalies"] == []
    assert (tmp_path / "run" / "gradient_flow.png").exists()


@pytest.mark.parametrize(("action", "steps"), [("warn", 5), ("skip_step", 5), ("stop", 3)])
def test_nan_gradients_are_reported_with_layers_and_acted_on(tmp_path, action, steps):
    probe, result, context = run_with_nan_step(
        tmp_path / action, trainer={"grad_clip": 0.0},
        callbacks=[{"use": "gradient-monitor", "every": 1, "on_anomaly": action}])
    reports = probe.errors
    monitor_report = next(r for r in reports if r.get("layers"))
    assert monitor_report["global_step"] == 3 and "tok.weight" in monitor_report["layers"]
    assert monitor_report["action"] == action and result["steps"] == steps
    assert all(torch.isfinite(v).all() for v in context.model.state_dict().values())


def test_tensorboard_callback_writes_readable_event_files(tiny_pipeline, tmp_path):
    tiny_pipeline.write_text(tiny_pipeline.read_text().replace("max_steps = 4", "max_steps = 6\neval_every = 3")
                             + '\n[[callbacks]]\nuse = "gradient-monitor"\nevery = 2\n'
                             '\n[[callbacks]]\nuse = "tensorboard"\nevery = 2\nhistogram_every = 3\n')
    result = cli("run", str(tiny_pipeline), "--no-progress")
    assert result.returncode == 0, result.stderr
    log_dir = tmp_path / "run" / "tensorboard"
    assert f"tensorboard --logdir {log_dir}" in result.stdout
    acc = events(log_dir)
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]
    assert [e.step for e in acc.Scalars("val/loss")] == [3, 6]
    assert [e.step for e in acc.Scalars("train/lr")] == [2, 4, 6]
    assert "weights/tok.weight" in tags["histograms"] and "gradients/decoder.0.attn.q.weight" in tags["histograms"]
    assert [e.step for e in acc.Histograms("weights/tok.weight")] == [3, 6]
    assert "attention/layer0" in tags["images"] and "gradients/flow" in tags["images"]
    assert tags["graph"]  # the model graph traced
    assert "TracerWarning" not in result.stderr  # the tracer's notes on the model's Python control flow


def test_tensorboard_says_a_missing_wandb_once_and_refuses_a_log_dir_it_cannot_create(tiny_pipeline, tmp_path):
    # use_wandb without wandb was said twice (a logging warning and the run's log), and a log_dir under a file
    # failed at the start of training, exit 1, as a FileNotFoundError of the callback
    base = tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "tensorboard"\ngraph = false\n'
    tiny_pipeline.write_text(base + "use_wandb = true\n")
    result = cli("run", str(tiny_pipeline), "--no-progress")
    assert result.returncode == 0, result.stderr
    if importlib.util.find_spec("wandb") is None:
        assert (result.stdout + result.stderr).count("wandb is not installed") == 1
    (tmp_path / "a-file").write_text("")
    tiny_pipeline.write_text(base + f'log_dir = "{tmp_path / "a-file" / "tb"}"\n')
    result = cli("run", str(tiny_pipeline), "--no-progress", "--overwrite")
    assert result.returncode == 2 and f"log_dir: {tmp_path / 'a-file' / 'tb'} cannot be created: " \
        f"{tmp_path / 'a-file'} is not a folder" in result.stderr, result.stderr
