"""apt-plugin-monitor: per-layer gradient norms and anomalies, statistics, the flow plot, and the
gradient-monitor callback in real runs (NaN reported with layer names, skip_step, stop)."""

import json
import math

import pytest
import torch

from apt_plugin_monitor import GradientMonitor
from conftest import cli


def model_with_grads(**set_grads):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model(torch.randn(3, 4)).sum().backward()
    with torch.no_grad():
        for name, value in set_grads.items():
            dict(model.named_parameters())[name].grad.fill_(value)
    return model


def test_check_gradient_flow_finds_vanishing_exploding_and_nan():
    model = model_with_grads(**{"0.weight": 1e-9, "0.bias": 5e3, "1.weight": float("nan")})
    norms, issues = GradientMonitor(model).check_gradient_flow()
    assert set(norms) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    kinds = {i["layer"]: i["kind"] for i in issues}
    assert kinds == {"0.weight": "vanishing", "0.bias": "exploding", "1.weight": "nan"}
    monitor = GradientMonitor(model, vanishing=0.0, exploding=1e9)
    monitor.check_gradient_flow()
    assert [i["kind"] for i in monitor.detect_gradient_anomalies()] == ["nan"]


def test_total_norm_and_stats_match_torch():
    model = model_with_grads()
    monitor = GradientMonitor(model)
    total = monitor.log_gradient_norms(step=1)
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert math.isclose(total, expected, rel_tol=1e-5)
    for p in model.parameters():
        p.grad.mul_(3)
    monitor.log_gradient_norms(step=2)
    stats = monitor.get_gradient_stats()["0.weight"]
    first = monitor.history["0.weight"][0]
    assert math.isclose(stats["mean"], 2 * first, rel_tol=1e-5) and math.isclose(stats["max"], 3 * first, rel_tol=1e-5)
    assert math.isclose(stats["std"], first, rel_tol=1e-5) and monitor.steps == [1, 2]


def test_plot_gradient_flow_writes_a_png(tmp_path):
    monitor = GradientMonitor(model_with_grads())
    monitor.log_gradient_norms(1)
    figure = monitor.plot_gradient_flow(tmp_path / "flow.png")
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.axes[0].get_yscale() == "log"


def test_monitor_callback_writes_plot_and_stats_beside_the_checkpoints(tiny_pipeline, tmp_path):
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "gradient-monitor"\nevery = 2\n')
    result = cli("run", str(tiny_pipeline), "--no-progress")
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "run" / "gradient_stats.json").read_text())
    assert stats["steps"] == [2, 4] and "decoder.0.attn.q.weight" in stats["layers"] and stats["anomalies"] == []
    assert (tmp_path / "run" / "gradient_flow.png").exists()


@pytest.mark.parametrize(("action", "steps"), [("warn", 5), ("skip_step", 5), ("stop", 3)])
def test_nan_gradients_are_reported_with_layers_and_acted_on(tmp_path, action, steps):
    from test_training import run_with_nan_step

    probe, result, context = run_with_nan_step(
        tmp_path / action, trainer={"grad_clip": 0.0},
        callbacks=[{"use": "gradient-monitor", "every": 1, "on_anomaly": action}])
    reports = probe.errors
    monitor_report = next(r for r in reports if r.get("layers"))
    assert monitor_report["global_step"] == 3 and "tok.weight" in monitor_report["layers"]
    assert monitor_report["action"] == action and result["steps"] == steps
    assert all(torch.isfinite(v).all() for v in context.model.state_dict().values())


def events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    accumulator.Reload()
    return accumulator


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


def test_wandb_without_the_package_is_a_message_not_a_failure(tmp_path, caplog):
    import importlib.util

    from apt_plugin_monitor import TrainingVisualizer

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    visualizer = TrainingVisualizer(tmp_path / "tb", use_wandb=True)
    assert "wandb is not installed" in visualizer.message
    visualizer.log_scalars(1, {"loss": 2.0}, "train")
    visualizer.close()
    assert [e.value for e in events(tmp_path / "tb").Scalars("train/loss")] == [2.0]
