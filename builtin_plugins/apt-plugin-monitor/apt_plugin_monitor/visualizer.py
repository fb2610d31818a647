"""TensorBoard logging: scalars, weight and gradient histograms, figures, the model graph, and
attention heatmaps of the APT model (the autopoietic refinement next to plain attention)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

log = logging.getLogger("apt.visualizer")


class TrainingVisualizer:
    def __init__(self, log_dir: str | Path, use_wandb: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))
        self.wandb = None
        if use_wandb:
            try:
                import wandb

                self.wandb = wandb
            except ImportError:  # said once, by whoever made this (the callback, in the run's log)
                self.message = "use_wandb = true but wandb is not installed (pip install wandb): TensorBoard only"

    def log_scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", float(value), step)
        if self.wandb is not None and self.wandb.run is not None:
            self.wandb.log({f"{prefix}/{k}": float(v) for k, v in values.items()}, step=step)

    def log_histograms(self, model: torch.nn.Module, step: int, gradients: bool = True) -> None:
        for name, param in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
            if gradients and param.grad is not None and torch.isfinite(param.grad).all():
                self.writer.add_histogram(f"gradients/{name}", param.grad.detach().float().cpu(), step)

    def log_figure(self, tag: str, figure, step: int) -> None:
        self.writer.add_figure(tag, figure, step)

    def log_image_file(self, tag: str, path: Path, step: int) -> None:
        """A PNG another callback wrote (the gradient-flow figure), as an image."""
        from matplotlib.image import imread

        self.writer.add_image(tag, imread(path)[..., :3], step, dataformats="HWC")

    def log_graph(self, model: torch.nn.Module, example: torch.Tensor) -> bool:
        try:
            with warnings.catch_warnings():  # the tracer's notes on Python control flow are not the user's business
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                self.writer.add_graph(model, example)
            return True
        except Exception as exc:  # tracing is best effort; a model that cannot be traced still trains
            log.warning("model graph not logged: %s", exc)
            return False

    @torch.no_grad()
    def log_attention(self, model: torch.nn.Module, input_ids: torch.Tensor, step: int) -> int:
        """One figure per attention layer: head-0 probabilities as trained, and with the refinement off."""
        if not hasattr(model, "set_record_attention"):
            return 0
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        was_training = model.training
        model.eval()
        layers = [m for m in model.modules() if hasattr(m, "record_attention") and not getattr(m, "cross", False)]
        model.set_record_attention(True)
        model(input_ids[:1])
        trained = [m.last_attention[0, 0].float().cpu() for m in layers]
        gates = [(m, m.gate.detach().clone()) for m in layers if hasattr(m, "gate")]
        for module, _ in gates:
            module.gate.zero_()  # plain attention: the same weights without the refinement
        model(input_ids[:1])
        plain = [m.last_attention[0, 0].float().cpu() for m in layers]
        for module, gate in gates:
            module.gate.copy_(gate)
        model.set_record_attention(False)
        model.train(was_training)
        for index, (refined, base) in enumerate(zip(trained, plain, strict=True)):
            figure, axes = plt.subplots(1, 2, figsize=(8, 4))
            for axis, matrix, title in ((axes[0], refined, "as trained"), (axes[1], base, "refinement off")):
                _heatmap(axis, matrix, f"layer {index}, head 0: {title}", float(max(refined.max(), base.max())))
            self._add_figure(f"attention/layer{index}", figure, step)
        return len(layers)

    def _add_figure(self, tag: str, figure, step: int) -> None:
        import matplotlib.pyplot as plt

        figure.tight_layout()
        self.writer.add_figure(tag, figure, step)
        plt.close(figure)

    # -- the original TrainingVisualizer's names, for code ported from it -----------------------------
    def log_training_step(self, metrics: dict[str, float], step: int) -> None:
        """Scalars under ``train/``."""
        self.log_scalars(step, metrics, "train")

    def log_validation_step(self, metrics: dict[str, float], step: int) -> None:
        """Scalars under ``val/``."""
        self.log_scalars(step, metrics, "val")

    def plot_model_architecture(self, model: torch.nn.Module, input_sample: torch.Tensor) -> bool:
        """The model's graph, traced on ``input_sample`` (TensorBoard's Graphs tab)."""
        return self.log_graph(model, input_sample)

    def plot_gradient_flow(self, model: torch.nn.Module, step: int):
        """The per-layer gradient norms of ``model`` as they are now, as a figure at ``gradients/flow``."""
        from .gradients import GradientMonitor

        monitor = GradientMonitor(model)
        monitor.log_gradient_norms(step)
        figure = monitor.plot_gradient_flow()
        self.writer.add_figure("gradients/flow", figure, step)
        return figure

    def plot_weight_distributions(self, model: torch.nn.Module, step: int) -> None:
        """A histogram of every parameter, under ``weights/``."""
        self.log_histograms(model, step, gradients=False)

    def log_attention_weights(self, attention_weights, step: int) -> int:
        """Heatmaps of attention probabilities: one tensor or a list of them (one per layer), each
        ``[batch, heads, T, T]``, ``[heads, T, T]`` or ``[T, T]``; the first sample, averaged over heads."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layers = attention_weights if isinstance(attention_weights, list | tuple) else [attention_weights]
        for index, weights in enumerate(layers):
            matrix = torch.as_tensor(weights).detach().float().cpu()
            if matrix.dim() == 4:
                matrix = matrix[0]
            if matrix.dim() == 3:
                matrix = matrix.mean(0)
            if matrix.dim() != 2:
                raise ValueError(f"attention weights of layer {index} have shape {tuple(weights.shape)}; expected "
                                 "[batch, heads, T, T], [heads, T, T] or [T, T]")
            figure, axis = plt.subplots(figsize=(4, 4))
            _heatmap(axis, matrix, f"layer {index}, mean over heads", None)
            self._add_figure(f"attention/weights_layer{index}", figure, step)
        return len(layers)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _heatmap(axis, matrix: torch.Tensor, title: str, vmax: float | None) -> None:
    """Attention probabilities, queries down, keys across."""
    axis.imshow(matrix.numpy(), cmap="viridis", vmin=0, vmax=vmax)
    axis.set_title(title, fontsize=8)
    axis.set_xlabel("key")
    axis.set_ylabel("query")


def read_events(log_dir: str | Path):
    """What a TensorBoard log folder holds, read back with TensorBoard's own reader (every sample kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    accumulator.Reload()
    return accumulator
