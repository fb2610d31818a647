"""What every ``apt-kernel`` command shares: the command groups (builtin commands, plus those plugins declare),
kernel errors printed as one line with their exit code, the plugin options, and planning a pipeline."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from functools import wraps

import click


def user_errors(func: Callable) -> Callable:
    """Print kernel errors as one clear message: exit 2 for user errors, 1 for plugin failures."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        from .errors import KernelError, RunInterrupted, UserError

        try:
            return func(*args, **kwargs)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except RunInterrupted as exc:
            click.secho(str(exc), fg="yellow", err=True)
            sys.exit(exc.exit_code)
        except KernelError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)

    return wrapper


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def plugin_options(func: Callable) -> Callable:
    func = click.option("--plugins-dir", "plugins_dirs", multiple=True, type=click.Path(file_okay=False),
                        help="Also load one-file plugins from this folder (repeatable).")(func)
    func = click.option("--strict", is_flag=True, default=False,
                        help="A plugin that fails to load is fatal (also APT_STRICT_PLUGINS=1).")(func)
    return func


def make_kernel(plugins_dirs, strict):
    from .kernel import Kernel

    return Kernel(plugins_dirs, strict=strict or None)


class Commands(click.Group):
    """Builtin commands, plus commands that installed plugins declare in their manifests: looked up
    only when a name is not builtin, and imported only when invoked (so --help stays fast). A manifest
    names a top-level command ``errors``, or a subcommand of a builtin group as ``"plugins.search"``.
    A plugin's command may raise the SDK's ``UserError``: one red line, exit 2, as builtin commands do."""

    prefix = ""

    def get_command(self, ctx: click.Context, name: str):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        from importlib import import_module

        from .discovery import INSTALLED, discover

        for info in discover():
            target = info.manifest.commands.get(self.prefix + name) if info.manifest else None
            if target and info.status == INSTALLED:
                module, _, attr = target.partition(":")
                return getattr(import_module(module), attr)
        return None

    def invoke(self, ctx: click.Context):
        # Python's format adds the file, line and source line of the warn() call: for a warning raised in a
        # plugin that is the plugin's code, which tells a pipeline's user nothing
        warnings.formatwarning = _one_line
        return user_errors(super().invoke)(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_commands(ctx, formatter)
        from .plugin_commands import declared  # read from manifests: no plugin is imported for --help

        rows = declared(self.prefix, formatter.width)
        if rows:
            with formatter.section("Commands from plugins"):
                formatter.write_dl(rows)


class PluginsCommands(Commands):
    prefix = "plugins."


def plan_file(pipeline, overrides, plugins_dirs, strict):
    from .pipeline import load_pipeline
    from .planning import plan_pipeline

    config, data, source = load_pipeline(pipeline, list(overrides))
    kernel = make_kernel(plugins_dirs, strict)
    return kernel, plan_pipeline(kernel, config, data, source)
