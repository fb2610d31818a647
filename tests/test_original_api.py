"""Code ported from the original project calls these names with these arguments; each call does its job."""

from __future__ import annotations

import logging

import pytest
import torch

from apt_kernel.profiler import PluginProfiler
from apt_kernel.sandbox import PluginSandbox
from apt_plugin_errors.distributed import DistributedErrorHandler
from apt_plugin_monitor import GradientMonitor, TrainingVisualizer
from apt_plugin_trainer import CheckpointManager, train_model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Return the number of items in the container.",
         "Raise ValueError if the value is not present.", "Open the file and return a stream."]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")  # TensorBoard traces the model for its graph
def test_every_original_name_with_its_original_arguments(tmp_path):
    logger = logging.getLogger("original")
    model, tokenizer, config = train_model(epochs=2, batch_size=2, learning_rate=1e-3, save_path=tmp_path / "model",
                                           logger=logger, tokenizer=None, texts=TEXTS,
                                           checkpoint_dir=tmp_path / "ckpt", resume_from=None,
                                           temp_checkpoint_freq=100, model={"d_model": 32, "num_heads": 2})
    assert (tmp_path / "model" / "config.json").exists() and config.d_model == 32

    manager = CheckpointManager(tmp_path / "ckpt")
    epoch, step, losses, metrics = manager.load_checkpoint(model, checkpoint_path="latest")
    assert (epoch, len(losses)) == (1, step) and "val_loss" in metrics

    with PluginSandbox(allowed_imports=["numpy"], resource_limits={"max_memory_mb": 512}) as sandbox:
        reply = sandbox.execute_plugin(plugin_code="import numpy\nresult = float(numpy.mean(values))",
                                       globals_dict={"values": [1.0, 2.0, 3.0]})
    assert reply["success"] and reply["result"] == 2.0

    tokens = torch.tensor([tokenizer.encode("The quick brown fox")])
    model(tokens).sum().backward()
    monitor = GradientMonitor(model)
    norms, issues = monitor.check_gradient_flow()
    assert norms and monitor.log_gradient_norms(1) > 0 and monitor.detect_gradient_anomalies() == issues
    assert monitor.get_gradient_stats() and monitor.plot_gradient_flow(save_path=None).axes

    visualizer = TrainingVisualizer(tmp_path / "tb")
    visualizer.log_training_step({"loss": 1.0}, 1)
    visualizer.log_validation_step({"loss": 1.1}, 1)
    visualizer.plot_model_architecture(torch.nn.Linear(2, 2), torch.randn(1, 2))
    visualizer.plot_gradient_flow(model, 1)
    visualizer.plot_weight_distributions(model, 1)
    assert visualizer.log_attention_weights(torch.softmax(torch.randn(1, 2, 4, 4), -1), 1) == 1
    visualizer.close()

    profiler = PluginProfiler()
    assert profiler.profile_plugin(sum, [1, 2, 3]) == 6
    assert profiler.get_plugin_stats("sum")["calls"] == 1

    handler = DistributedErrorHandler(rank=0, world_size=1)
    assert handler.broadcast_error(None) == []
    assert handler.sync_checkpoint_on_error(model, None, tmp_path / "err.pt") is False
    handler.broadcast_error(RuntimeError("lost"))
    assert handler.sync_checkpoint_on_error(model, None, tmp_path / "err.pt") is True
    assert torch.load(tmp_path / "err.pt", weights_only=False)["failures"][0]["message"] == "lost"
