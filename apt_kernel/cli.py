"""The ``apt-kernel`` command. Imports stay inside commands so ``--help`` starts fast and torch-free."""

from __future__ import annotations

import click

from . import KERNEL_API_VERSION, __version__
from .cli_group import Commands, plan_file, plugin_options, user_errors
from .cli_plugins import plugins
from .cli_run import run


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Plugins add commands: those installed are listed above (`apt-kernel plugins list` says which "
                    "plugin adds each).")
@click.version_option(__version__, message=f"apt-kernel %(version)s (kernel API {KERNEL_API_VERSION})")
def main() -> None:
    """APT Kernel: train transformer models from pipeline.toml, built from plugins."""


main.add_command(run)
main.add_command(plugins)


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a pipeline value.")
@plugin_options
@user_errors
def validate(pipeline, overrides, plugins_dirs, strict):
    """Check PIPELINE's schema, options and plugin versions without running (imports no plugin)."""
    _, plan = plan_file(pipeline, overrides, plugins_dirs, strict)
    click.echo(f"{pipeline}: valid")
    for table, kind, spec in plan.config.components():
        info = plan.providers[table]
        click.echo(f"  [{table}] {kind} {spec.use!r} from {info.name} {info.version}")


@main.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", default=".", type=click.Path(file_okay=False), show_default=True,
              help="Where to create the plugin folder.")
@user_errors
def new_plugin(name, directory):
    """Create an installable plugin package NAME (a callback, with tests) from the SDK template."""
    from .scaffold import create_plugin

    path = create_plugin(name, directory)
    click.echo(f"created {path}\n  pip install -e {path}\n  pytest {path}/tests")


if __name__ == "__main__":
    main()
