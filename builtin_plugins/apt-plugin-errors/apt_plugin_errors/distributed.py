"""The original import path of the distributed failure protocol, which the trainer owns."""

from apt_plugin_trainer.failures import DistributedError, DistributedErrorHandler

__all__ = ["DistributedError", "DistributedErrorHandler"]
