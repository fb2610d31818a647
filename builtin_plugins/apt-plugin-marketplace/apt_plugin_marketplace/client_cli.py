"""`apt-kernel plugins search | install | publish | rate | upgrade | rollback | history`, declared in this
plugin's manifest as subcommands of the kernel's `plugins` group."""

from __future__ import annotations

import json

import click

from apt_sdk import UserError

index_option = click.option("--index", "server", envvar="APT_MARKETPLACE_URL",
                            help="Marketplace server URL (or APT_MARKETPLACE_URL) [default: http://127.0.0.1:8765/]")


def _market(server: str | None, token: str | None = None):
    from .client import PluginMarketplace

    return PluginMarketplace(server, token)


def _manager(server: str | None):
    from .manager import PluginVersionManager

    return PluginVersionManager(_market(server))


def _done(number: int, manager) -> None:
    plugins = manager.revisions.read(number)["plugins"]
    listed = ", ".join(f"{n} {e['version']}" for n, e in sorted(plugins.items())) or "no marketplace plugins"
    click.echo(f"revision {number}: {listed}")


@click.command()
@index_option
@click.argument("keyword", default="")
@click.option("--kind", help="Only plugins providing this kind (model, data, callback, encoder, ...).")
@click.option("--compatible", is_flag=True, help="Only plugins whose latest version fits this kernel's API.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def search(server, keyword, kind, compatible, as_json):
    """Plugins on the marketplace whose name or description contains KEYWORD."""
    found = _market(server).search_plugins(keyword, kind, compatible_only=compatible)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no plugins found")
    for row in found:
        rating = f"{row['rating']:.1f}/5" if row["rating"] else "unrated"
        click.echo(f"{row['name']:<28} {row['latest'] or '-':<10} {rating:<8} {', '.join(row['kinds']) or '-':<16} "
                   f"{row['summary']}")


@click.command()
@index_option
@click.argument("specs", nargs=-1, required=True)
def install(server, specs):
    """Install plugins (NAME or NAME>=1.2) as a new revision: all or nothing."""
    manager = _manager(server)
    _done(manager.install(list(specs)), manager)


@click.command()
@index_option
@click.argument("name")
@click.option("--to", "version", help="This version rather than the newest compatible one.")
def upgrade(server, name, version):
    """Upgrade plugin NAME (and what it needs) as a new revision."""
    manager = _manager(server)
    _done(manager.upgrade_plugin(name, version), manager)


@click.command()
@index_option
@click.argument("name", required=False)
@click.option("--to", "revision", type=int, help="Restore revision N exactly (see `apt-kernel plugins history`).")
def rollback(server, name, revision):
    """Put plugin NAME back as it was before its last change, or the whole set to revision --to N."""
    if (name is None) == (revision is None):
        raise click.UsageError("give a plugin NAME or --to N (one of them)")
    manager = _manager(server)
    _done(manager.rollback_to(revision) if revision is not None else manager.rollback_plugin(name), manager)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def history(as_json):
    """Every revision of this environment's marketplace plugins; * marks the current one."""
    from .revisions import Revisions

    rows = Revisions().history()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "*" if row["current"] else " " if row["applied"] else "!"
        listed = ", ".join(f"{n} {e['version']}" for n, e in sorted(row["plugins"].items())) or "-"
        when = row.get("created", "")
        click.echo(f"{mark} {row['revision']:>3}  {when:<19}  {row['action']:<40} {listed}")
    if any(not r["applied"] for r in rows):
        click.echo("! = interrupted before it became current; never in use")


@click.command()
@index_option
@click.argument("dists", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--token", envvar="APT_MARKETPLACE_TOKEN", help="API token (or APT_MARKETPLACE_TOKEN).")
def publish(server, dists, token):
    """Upload wheels or sdists (what `twine upload` does, on the same API)."""
    market = _market(server, token)
    for dist in dists:
        reply = market.publish_plugin(dist)
        click.echo(f"published {reply['name']} {reply['version']} (sha256 {reply['sha256'][:16]}...)")


@click.command()
@index_option
@click.argument("name")
@click.argument("stars", type=click.IntRange(1, 5))
@click.option("--comment", default="", help="A comment shown with the rating.")
@click.option("--token", envvar="APT_MARKETPLACE_TOKEN", help="API token (or APT_MARKETPLACE_TOKEN).")
def rate(server, name, stars, comment, token):
    """Rate plugin NAME from 1 to 5 stars (again to change your rating)."""
    reply = _market(server, token).rate_plugin(name, stars, comment)
    if reply.get("rating") is None:
        raise UserError(f"the rating of {name} was not recorded")
    click.echo(f"{reply['name']}: average {reply['rating']:.2f}/5")
