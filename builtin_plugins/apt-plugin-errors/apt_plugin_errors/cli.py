"""`apt-kernel errors list | report | show ID | resolve ID`, declared in this plugin's manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from apt_sdk import UserError

from .logger import ErrorLogger


class BadInput(click.ClickException):
    """The user's input is wrong: one line, exit 2, as the kernel's own commands do."""

    exit_code = 2


def _logger(db: str) -> ErrorLogger:
    path = Path(db)
    if path.is_dir():
        path = path / "errors.db"
    if not path.exists():
        raise click.UsageError(f"no error database at {path}: pass --db <run dir> or the .db file")
    try:
        return ErrorLogger(path)
    except UserError as exc:
        raise BadInput(str(exc)) from None


db_option = click.option("--db", default=".", show_default=True, help="A run folder or an errors.db file.")


@click.group()
def errors() -> None:
    """The error log of runs that used the `error-log` callback."""


@errors.command("list")
@db_option
@click.option("--all", "show_all", is_flag=True, help="Include resolved errors.")
@click.option("--type", "error_type", help="Only this error type.")
@click.option("--search", "text", help="Only errors whose message, trace or context contains TEXT.")
@click.option("--limit", default=50, show_default=True)
def list_errors(db, show_all, error_type, text, limit):
    """Recent errors, newest first."""
    rows = _logger(db).search(text=text, error_type=error_type, unresolved=not show_all, limit=limit)
    if not rows:
        click.echo("no errors")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["timestamp"]))
        where = f"step {row['global_step']}" if row["global_step"] is not None else "-"
        mark = " (resolved)" if row["resolved"] else ""
        click.echo(f"{row['id']:>5}  {when}  {row['severity']:<8} {row['error_type']:<24} {where:<10} "
                   f"{row['message'][:70]}{mark}")


@errors.command()
@db_option
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--days", default=7.0, show_default=True)
def report(db, out, days):
    """Counts by type and severity, and the most frequent patterns."""
    data = _logger(db).generate_error_report(out, days)
    click.echo(f"{data['total']} errors, {data['unresolved']} unresolved ({data['database']})")
    for error_type, count in data["by_type"].items():
        click.echo(f"  {error_type:<28} {count}")
    for pattern in data["top_patterns"]:
        click.echo(f"  pattern {pattern['hash']} x{pattern['count']}: {pattern['error_type']}: "
                   f"{pattern['normalized_message'][:60]}")


@errors.command()
@click.argument("error_id", type=int)
@db_option
def show(error_id, db):
    """Everything recorded about one error, enough to reproduce it."""
    row = _logger(db).get(error_id)
    if row is None:
        raise click.UsageError(f"no error {error_id}")
    for key in ("id", "severity", "error_type", "message", "plugin", "hook", "pipeline", "run_id", "rank", "epoch",
                "global_step", "checkpoint_path", "pattern_hash", "resolved"):
        if row[key] is not None:
            click.echo(f"{key:<16} {row[key]}")
    if row["checkpoint_path"] and row["run_id"]:
        click.echo(f"reproduce with   apt-kernel run {Path(row['run_id']) / 'pipeline.json'} ... "
                   f"--resume {row['checkpoint_path']}")
    click.echo(f"context          {json.dumps(row['context'])[:2000]}")
    if row["stack_trace"]:
        click.echo(f"\n{row['stack_trace']}")


@errors.command()
@click.argument("error_id", type=int)
@db_option
@click.option("--pattern", is_flag=True, help="Resolve every error of this error's pattern.")
def resolve(error_id, db, pattern):
    """Mark an error (or its whole pattern) resolved."""
    logger = _logger(db)
    row = logger.get(error_id)
    if row is None:
        raise click.UsageError(f"no error {error_id}")
    changed = logger.mark_resolved(pattern_hash=row["pattern_hash"]) if pattern else logger.mark_resolved(error_id)
    click.echo(f"resolved {changed} error(s)")
