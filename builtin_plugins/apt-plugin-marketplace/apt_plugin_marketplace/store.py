"""The index's database (SQLAlchemy; SQLite by default, PostgreSQL by URL) and its accounts.

Projects are keyed by their PEP 503 normalised name, so ``Apt_Plugin.Foo`` and ``apt-plugin-foo`` are one
project with one owner. Tokens are ``apt-<id>.<secret>``: the id finds the row, the secret is checked
against its scrypt hash (a memory-hard KDF; only the hash and salt are stored).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created: Mapped[datetime] = mapped_column(default=_now)


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    salt: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(128))
    created: Mapped[datetime] = mapped_column(default=_now)
    user: Mapped[User] = relationship()


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # normalised (PEP 503)
    display_name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created: Mapped[datetime] = mapped_column(default=_now)
    owner: Mapped[User] = relationship()
    maintainers: Mapped[list[User]] = relationship(secondary="maintainers")
    releases: Mapped[list[Release]] = relationship(back_populates="project", cascade="all, delete-orphan")
    ratings: Mapped[list[Rating]] = relationship(cascade="all, delete-orphan")

    def may_publish(self, user: User) -> bool:
        return user.id == self.owner_id or any(m.id == user.id for m in self.maintainers)


class Maintainer(Base):
    __tablename__ = "maintainers"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    version: Mapped[str] = mapped_column(String(100))  # normalised PEP 440
    summary: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    requires_python: Mapped[str] = mapped_column(String(200), default="")
    manifest: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    yanked: Mapped[bool] = mapped_column(default=False)
    yanked_reason: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(default=_now)
    project: Mapped[Project] = relationship(back_populates="releases")
    files: Mapped[list[File]] = relationship(back_populates="release", cascade="all, delete-orphan")


class File(Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    filename: Mapped[str] = mapped_column(String(300), unique=True)
    packagetype: Mapped[str] = mapped_column(String(20))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(default=_now)
    release: Mapped[Release] = relationship(back_populates="files")


class Rating(Base):
    __tablename__ = "ratings"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    stars: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    updated: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)
    user: Mapped[User] = relationship()


def connect(url: str) -> sessionmaker[Session]:
    """An engine for ``url`` with the schema created; SQLite in WAL mode so readers never wait on a writer."""
    options: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        options["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **options)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def engine_of(sessions: sessionmaker[Session]) -> Engine:
    return sessions.kw["bind"]


def create_user(session: Session, name: str) -> User:
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise ValueError(f"user {name!r} already exists")
    user = User(name=name)
    session.add(user)
    session.flush()
    return user


def create_token(session: Session, user: User) -> str:
    """A new token for ``user``; the returned text is shown once and never stored."""
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    session.add(Token(id=token_id, user_id=user.id, salt=salt, digest=_hash(secret, salt)))
    session.flush()
    return f"apt-{token_id}.{secret}"


def _hash(secret: str, salt: str) -> str:
    return hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), **SCRYPT).hex()


def user_for_token(session: Session, token: str) -> User | None:
    """The user a token belongs to, or None for a malformed, unknown or wrong token."""
    head, _, secret = token.strip().partition(".")
    if not head.startswith("apt-") or not secret:
        return None
    row = session.get(Token, head[4:])
    if row is None:
        _hash(secret, "00" * 16)  # as slow as a real check, so timing does not tell which ids exist
        return None
    return row.user if hmac.compare_digest(_hash(secret, row.salt), row.digest) else None
