"""Errors the kernel raises. A ``UserError`` is the user's to fix: the CLI prints it and exits 2."""

from __future__ import annotations


class KernelError(Exception):
    """Base class for errors raised by the kernel."""


class UserError(KernelError):
    """Bad input from the user (pipeline file, overrides, environment). Exit code 2, no traceback."""

    exit_code = 2


class PipelineError(UserError):
    """A pipeline file that cannot be read or does not match its schema."""

    def __init__(self, message: str, *, source: str | None = None, location: str | None = None,
                 line: int | None = None) -> None:
        self.source, self.location, self.line, self.detail = source, location, line, message
        where = [p for p in (source, f"line {line}" if line else None, location) if p]
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class OptionError(UserError):
    """Raised by a component factory for an option value it cannot work with (``d_model`` not divisible
    by ``n_heads``). The kernel turns it into a ``PipelineError`` naming the pipeline file, table, key
    and line, like every other pipeline error. ``table`` names another table than the component's own."""

    def __init__(self, key: str | None, message: str, table: str | None = None) -> None:
        self.key, self.table, self.detail = key, table, message
        super().__init__(f"{key}: {message}" if key else message)


class DuplicateComponentError(UserError):
    """Two plugins registered the same component name for the same kind."""


class PluginLoadError(UserError):
    """A plugin the pipeline needs could not be imported or registered."""


class ResolutionError(UserError):
    """The plugin versions a pipeline needs cannot be satisfied; the message explains the chain."""


class RunInterrupted(KernelError):
    """A run stopped by SIGTERM/SIGINT after saving its state; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum
