"""What every request handler shares: the database, the file store, the limits, the templates, and who is
asking (a token as ``Authorization: Bearer`` or as twine's basic-auth password)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
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
