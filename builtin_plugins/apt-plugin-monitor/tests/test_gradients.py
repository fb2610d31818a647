"""GradientMonitor and TrainingVisualizer on their own: norms against torch, anomalies, plots."""

import math

import pytest
import torch

from apt_plugin_monitor import GradientMonitor
from apt_plugin_monitor.visualizer import read_events as events


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
