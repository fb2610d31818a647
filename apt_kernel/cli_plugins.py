"""``apt-kernel plugins``: list, info and doctor read what is installed (list and info only manifests)."""

from __future__ import annotations

import sys

import click

from .cli_group import PluginsCommands, plugin_options, user_errors


@click.group(cls=PluginsCommands, epilog="Plugins add subcommands here: those installed are listed above.")
def plugins() -> None:
    """Installed plugins: list, info, doctor."""


_STATUS_COLOURS = {"installed": "green", "disabled": "yellow", "incompatible": "yellow",
                   "failed": "red", "crashed": "red"}


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@plugin_options
@user_errors
def plugins_list(as_json, plugins_dirs, strict):
    """Every plugin with version, status and what it provides (reads manifests only)."""
    from .discovery import discover, stale_editable

    infos = discover(plugins_dirs)
    if as_json:
        import json

        click.echo(json.dumps([{**i.to_dict(), "stale": stale_editable(i)} for i in infos], indent=2))
        return
    if not infos:
        click.echo("no plugins installed")
        return
    for info in infos:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in info.provides().items()) or "-"
        if info.manifest and info.manifest.commands:
            provides += f"; commands: {', '.join(sorted(info.manifest.commands))}"
        status = click.style(info.status, fg=_STATUS_COLOURS.get(info.status))
        click.echo(f"{info.name:<28} {info.version:<10} {status:<12} {provides}")
        for note in (info.reason, stale_editable(info)):
            if note:
                click.echo(f"{'':<28} {note}")


@plugins.command("info")
@click.argument("name")
@plugin_options
@user_errors
def plugins_info(name, plugins_dirs, strict):
    """Everything the manifest of plugin NAME says, and its options."""
    from .discovery import discover
    from .errors import UserError, closest

    infos = {i.name: i for i in discover(plugins_dirs)}
    if name not in infos:
        hint = closest(name, list(infos))
        raise UserError(f"no plugin named {name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    info = infos[name]
    data = info.to_dict()
    for key in ("name", "version", "distribution", "module", "path", "status", "reason", "kernel_api",
                "requires", "capabilities"):
        if data.get(key) not in (None, {}, []):
            click.echo(f"{key:<13} {data[key]}")
    for kind, components in (info.manifest.provides.items() if info.manifest else []):
        for cname, decl in components.items():
            click.echo(f"\n{kind} {cname!r}: {decl.summary}")
            for opt, spec in decl.options.items():
                default = "required" if spec.required else f"default {spec.default!r}"
                click.echo(f"    {opt:<22} {spec.type:<6} {default:<24} {spec.help}")


@plugins.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--sandbox", is_flag=True, help="Show which sandbox layers this machine can apply (docs/sandbox.md).")
@plugin_options
@user_errors
def plugins_doctor(as_json, sandbox, plugins_dirs, strict):
    """Import every plugin in a child process and report failures and crashes."""
    from .discovery import StatusStore, discover, kernel_home
    from .doctor import run_doctor

    if sandbox:
        _sandbox_doctor(as_json)
        return

    report = run_doctor(discover(plugins_dirs), list(plugins_dirs), StatusStore(kernel_home() / "plugin-status.json"))
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        for row in report:
            status = click.style(row["status"], fg=_STATUS_COLOURS.get(row["status"]))
            click.echo(f"{row['name']:<28} {row['version']:<10} {status}")
            if row.get("reason"):
                click.echo(f"    {row['reason']}")
    if any(r["status"] in ("failed", "crashed") for r in report):
        sys.exit(1)


def _sandbox_doctor(as_json: bool) -> None:
    from .sandbox.probe import probe_layers

    layers = probe_layers()
    if as_json:
        import json

        click.echo(json.dumps(layers, indent=2))
        return
    width = max(len(layer["name"]) for layer in layers)
    click.echo(f"{'layer':<{width}}  {'status':<11}  detail")
    for layer in layers:
        status = click.style(f"{'active' if layer['active'] else 'UNAVAILABLE':<11}",
                             fg="green" if layer["active"] else "red")
        click.echo(f"{layer['name']:<{width}}  {status}  {layer['detail']}")
