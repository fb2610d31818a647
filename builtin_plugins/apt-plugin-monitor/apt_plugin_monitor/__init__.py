"""Gradient monitoring and TensorBoard visualisation for APT Kernel runs."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # torch is imported only when the monitor is used, not when the plugin is discovered
    if name == "GradientMonitor":
        from .gradients import GradientMonitor

        return GradientMonitor
    if name == "TrainingVisualizer":
        from .visualizer import TrainingVisualizer

        return TrainingVisualizer
    raise AttributeError(name)
