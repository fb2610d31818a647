"""Errors the kernel raises. A ``UserError`` is the user's to fix: the CLI prints it and exits 2."""

from __future__ import annotations

import difflib


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate ``name`` most resembles, for a "did you mean ...?" in an error message (or None)."""
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return match[0] if match else None


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


class PluginError(KernelError):
    """A plugin's code raised: in a hook, in a component's factory, or in a callback's event.

    ``plugin`` is whose code it was, ``hook`` where (``"hook pipeline_start"``, ``"callback factory 'x'"``,
    ``"callback x.on_fit_start"``), ``event`` the callback event if it was one, and ``original`` what the
    plugin raised (also the ``__cause__``). Exit 1 on the command line: the plugin's to fix, not the user's.
    """

    def __init__(self, plugin: str, hook: str, exc: BaseException, *, event: str | None = None) -> None:
        self.plugin, self.hook, self.event, self.original = plugin, hook, event, exc
        super().__init__(failure_message(plugin, hook, type(exc).__name__, str(exc)))


def failure_message(plugin: str, hook: str, kind: str, detail: str) -> str:
    """The one line a plugin's failure reads as, wherever it ran (in this process or in a sandbox worker,
    which reports only the exception's type name and text)."""
    return f"plugin {plugin!r} failed in {hook}: {kind}: {detail}"


class DuplicateComponentError(UserError):
    """Two plugins provide the same component name for the same kind (in their manifests, or registered)."""

    def __init__(self, kind: str, name: str, first: str, second: str, disable: str | None = None) -> None:
        self.kind, self.name, self.owners = kind, name, (first, second)
        super().__init__(f"{kind} {name!r} is provided by two plugins: {first} and {second}; uninstall one, "
                         f"or disable it with APT_DISABLE_PLUGINS={disable or second}")


class PluginLoadError(UserError):
    """A plugin the pipeline needs could not be imported or registered."""


class ResolutionError(UserError):
    """The plugin versions a pipeline needs cannot be satisfied; the message explains the chain."""


class RunInterrupted(KernelError):
    """A run stopped by SIGTERM/SIGINT after saving its state; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum
