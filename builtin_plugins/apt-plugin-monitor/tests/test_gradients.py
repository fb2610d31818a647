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


def test_detect_gradient_anomalies_looks_at_the_gradients_as_they_are_now():
    model = model_with_grads()
    monitor = GradientMonitor(model)
    assert monitor.check_gradient_flow()[1] == []
    with torch.no_grad():
        model[1].weight.grad[0, 0] = float("nan")  # appears after the last check
    assert [(i["layer"], i["kind"]) for i in monitor.detect_gradient_anomalies()] == [("1.weight", "nan")]


def test_plot_gradient_flow_without_a_path_returns_the_figure_and_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monitor = GradientMonitor(model_with_grads())
    monitor.log_gradient_norms(1)
    figure = monitor.plot_gradient_flow()
    assert figure.axes[0].get_yscale() == "log" and not any(tmp_path.iterdir())
    figure.savefig(tmp_path / "later.png")  # still a usable figure
    assert (tmp_path / "later.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")  # TensorBoard's add_graph traces the model
def test_the_original_training_visualizer_methods_write_tensorboard_events(tmp_path):
    from apt_plugin_monitor import TrainingVisualizer

    model = model_with_grads()
    visualizer = TrainingVisualizer(tmp_path / "tb")
    visualizer.log_training_step({"loss": 2.5, "lr": 1e-3}, step=1)
    visualizer.log_validation_step({"loss": 2.25}, step=1)
    assert visualizer.plot_model_architecture(model, torch.randn(2, 4))
    assert visualizer.plot_gradient_flow(model, step=1).axes
    visualizer.plot_weight_distributions(model, step=1)
    assert visualizer.log_attention_weights([torch.softmax(torch.randn(2, 3, 5, 5), -1),
                                             torch.softmax(torch.randn(5, 5), -1)], step=1) == 2
    with pytest.raises(ValueError, match="expected"):
        visualizer.log_attention_weights(torch.ones(5), step=1)
    visualizer.close()
    read = events(tmp_path / "tb")
    tags = read.Tags()
    assert {"train/loss", "train/lr", "val/loss"} <= set(tags["scalars"])
    assert read.Scalars("val/loss")[0].value == 2.25
    assert {"weights/0.weight", "weights/1.bias"} <= set(tags["histograms"])
    assert {"gradients/flow", "attention/weights_layer0", "attention/weights_layer1"} <= set(tags["images"])
    assert tags["graph"]


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


def test_wandb_without_the_package_is_a_message_not_a_failure(tmp_path):
    import importlib.util

    from apt_plugin_monitor import TrainingVisualizer

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    visualizer = TrainingVisualizer(tmp_path / "tb", use_wandb=True)
    assert "wandb is not installed" in visualizer.message
    visualizer.log_scalars(1, {"loss": 2.0}, "train")
    visualizer.close()
    assert [e.value for e in events(tmp_path / "tb").Scalars("train/loss")] == [2.0]
