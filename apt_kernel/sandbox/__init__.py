"""Running plugins out of process, confined by the OS: see docs/sandbox.md.

Kept import-free: the worker imports this package before anything else and must start fast."""

__all__ = ["PluginSandbox", "SandboxError", "SandboxLimits", "SandboxedCallback"]


def __getattr__(name: str):
    if name == "PluginSandbox":
        from .code import PluginSandbox

        return PluginSandbox
    if name == "SandboxedCallback":
        from .callback import SandboxedCallback

        return SandboxedCallback
    if name == "SandboxLimits":
        from .limits import SandboxLimits

        return SandboxLimits
    if name == "SandboxError":
        from .host import SandboxError

        return SandboxError
    raise AttributeError(name)
