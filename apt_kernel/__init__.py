"""APT Kernel: the contract between a training pipeline and the plugins that implement it."""

__version__ = "0.1.0"

#: The version of the plugin contract (hookspecs, manifest format, component protocols).
#: Plugins declare the range they support in their manifest as ``kernel_api``.
KERNEL_API_VERSION = "1.0.0"
