"""`apt-kernel marketplace serve | user add | token create | maintainer add`: run and administer an index.

The database and file store default to ``$APT_KERNEL_HOME/marketplace``; ``--db`` takes any SQLAlchemy
URL (``postgresql+psycopg://user@host/db``) and ``--storage`` a folder, or set APT_MARKETPLACE_DB and
APT_MARKETPLACE_STORAGE once for all commands.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from apt_sdk import UserError
from apt_sdk.http import check_address


def _home() -> Path:
    from apt_kernel.api import kernel_home

    return kernel_home() / "marketplace"


def _db(value: str | None, storage: Path) -> str:
    if value:
        return value
    storage.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{storage / 'marketplace.db'}"


def _storage(value: str | None) -> Path:
    return Path(value) if value else _home()


db_options = [
    click.option("--db", envvar="APT_MARKETPLACE_DB", help="SQLAlchemy URL [default: sqlite in --storage]"),
    click.option("--storage", envvar="APT_MARKETPLACE_STORAGE",
                 help="Folder for published files (and the default SQLite database) [default: "
                      "$APT_KERNEL_HOME/marketplace]"),
]


def _with_db(func):
    for option in reversed(db_options):
        func = option(func)
    return func


def _sessions(db: str | None, storage: str | None):
    from sqlalchemy.exc import ArgumentError, OperationalError

    from .store import connect

    folder = _storage(storage)
    try:
        return connect(_db(db, folder))
    except (ArgumentError, OperationalError) as exc:
        raise UserError(f"cannot open the marketplace database {_db(db, folder)!r}: {exc.args[0]}") from None


@click.group()
def marketplace() -> None:
    """Run a plugin index that pip and twine speak, and manage its users and tokens."""


@marketplace.command()
@_with_db
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-upload-mb", default=100.0, show_default=True, type=float, help="Largest accepted upload.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="uvicorn worker processes.")
def serve(db, storage, host, port, max_upload_mb, workers):
    """Serve the index: /simple/ (pip), /legacy/ (twine), /api/ (JSON) and the plugin directory at /."""
    import uvicorn

    from .server import create_app

    folder = _storage(storage)
    if max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    url = _db(db, folder)
    _sessions(url, str(folder))  # a wrong URL is reported here, as one line, before the server starts
    check_address(host, port)
    click.echo(f"marketplace: http://{host}:{port}/  (database {url.split('@')[-1]}, files in {folder})")
    if workers > 1:
        os.environ.update(APT_MARKETPLACE_DB=url, APT_MARKETPLACE_STORAGE=str(folder),
                          APT_MARKETPLACE_MAX_UPLOAD_MB=str(max_upload_mb))
        uvicorn.run("apt_plugin_marketplace.server:app_from_environment", factory=True, host=host, port=port,
                    workers=workers, log_level="warning")
    else:
        uvicorn.run(create_app(url, folder, max_upload_mb=max_upload_mb), host=host, port=port, log_level="warning")


@marketplace.group()
def user() -> None:
    """Accounts that own plugins."""


@user.command("add")
@_with_db
@click.argument("name")
def user_add(db, storage, name):
    """Create user NAME and print a token for them (shown once)."""
    from .store import create_token, create_user

    with _sessions(db, storage)() as session:
        try:
            account = create_user(session, name)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        token = create_token(session, account)
        session.commit()
    click.echo(token)


@marketplace.group()
def token() -> None:
    """API tokens (stored hashed; a token is shown only when created)."""


@token.command("create")
@_with_db
@click.argument("name")
def token_create(db, storage, name):
    """Print a new token for user NAME."""
    from sqlalchemy import select

    from .store import User, create_token

    with _sessions(db, storage)() as session:
        account = session.scalar(select(User).where(User.name == name))
        if account is None:
            raise UserError(f"no user named {name!r} (create one with `apt-kernel marketplace user add {name}`)")
        text = create_token(session, account)
        session.commit()
    click.echo(text)
