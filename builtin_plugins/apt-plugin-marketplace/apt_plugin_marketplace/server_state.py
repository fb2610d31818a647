"""What every request handler shares: the database, the file store, the limits, the templates, and who is
asking (a token as ``Authorization: Bearer`` or as twine's basic-auth password)."""

from __future__ import annotations

import base64
import binascii
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from packaging.version import Version
from sqlalchemy.orm import Session, sessionmaker

from .store import Project, Release, User, user_for_token


@dataclass
class State:
    sessions: sessionmaker[Session]
    files: Path  # published files, named by their sha256
    incoming: Path  # uploads being received; emptied at start
    max_upload: int
    max_unpacked: int
    templates: Environment
    pages: dict = field(default_factory=dict)  # (path, media type) -> (generation, body): rendered index pages

    @property
    def marker(self) -> Path:
        return self.files.parent / "index-generation"

    def generation(self) -> tuple[int, int]:
        """Changes whenever any process serving this storage publishes or yanks: the index pages are cached
        per process and re-rendered when it moves (a stat, not a query, per request)."""
        try:
            info = self.marker.stat()
        except FileNotFoundError:
            return (0, 0)
        return (info.st_ino, info.st_mtime_ns)

    def changed(self) -> None:
        temp = self.marker.with_name(f".index-generation.{os.getpid()}.{threading.get_ident()}")
        temp.write_text(str(time.time_ns()))
        os.replace(temp, self.marker)


def make_templates() -> Environment:
    return Environment(loader=PackageLoader("apt_plugin_marketplace", "templates"),
                       autoescape=select_autoescape(default=True, default_for_string=True))


def state(request: Request) -> State:
    return request.app.state.market


def token_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password
    return None


def authenticate(request: Request, session: Session) -> User:
    """The user whose token the request carries; 401 without one, 403 with a wrong one."""
    token = token_from(request)
    if not token:
        raise HTTPException(401, "a token is required (Authorization: Bearer TOKEN, or user __token__ with the "
                                 "token as password)", headers={"WWW-Authenticate": 'Basic realm="apt-marketplace"'})
    user = user_for_token(session, token)
    if user is None:
        raise HTTPException(403, "invalid or revoked token")
    return user


def sorted_releases(project: Project) -> list[Release]:
    return sorted(project.releases, key=lambda r: Version(r.version))
