"""A real marketplace server per test (``apt-kernel marketplace serve`` in a child process on a loopback
port), real users and tokens made with the admin command, and real wheels built from plugin sources."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from apt_sdk.isolation import apt_isolate_every_test  # noqa: F401  (each test's own APT_KERNEL_HOME)

POSTGRES_URL = os.environ.get("APT_TEST_POSTGRES_URL")  # set by .ci/run, which starts a PostgreSQL server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apt_kernel.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@dataclass
class Server:
    storage: Path
    db: str
    max_upload_mb: float = 5
    port: int = 0
    process: subprocess.Popen | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def admin(self, *args: str) -> str:
        done = kernel("marketplace", *args, "--db", self.db, "--storage", str(self.storage))
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def user(self, name: str) -> str:
        self.tokens[name] = self.admin("user", "add", name)
        return self.tokens[name]

    def start(self) -> Server:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "apt_kernel.cli", "marketplace", "serve", "--port", str(self.port), "--db", self.db,
             "--storage", str(self.storage), "--max-upload-mb", str(self.max_upload_mb)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(self.url + "simple/", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server did not answer within 60 s")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _postgres_database(name: str) -> str:
    """A fresh database on the CI's PostgreSQL server for one test."""
    import psycopg

    with psycopg.connect(POSTGRES_URL.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path) -> str:
    """The database URL for a test that runs against both back ends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'market.db'}"
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: APT_TEST_POSTGRES_URL is unset (.ci/run starts one and sets it)")
    return _postgres_database(f"apt_{os.getpid()}_{request.node.name.split('[')[0][-30:]}".lower())


@pytest.fixture
def server(tmp_path) -> Server:
    srv = Server(tmp_path / "storage", f"sqlite:///{tmp_path / 'market.db'}").start()
    yield srv
    srv.stop()


def make_plugin(root: Path, name: str, version: str, manifest: str | None = None, code: str = "",
                dependencies: tuple[str, ...] = ("apt-kernel-sdk>=0.1,<2",), description: str = "") -> Path:
    """The source folder of an installable plugin distribution (a callback unless ``code`` says otherwise)."""
    module = name.replace("-", "_")
    folder = root / f"{name}-{version}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / module).mkdir(parents=True)
    (folder / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "{version}"
        description = {description or f"{name}: a test plugin"!r}
        requires-python = ">=3.11"
        dependencies = {list(dependencies)!r}
        [project.entry-points."apt_kernel.plugins"]
        {name} = "{module}.plugin"
        [tool.setuptools.packages.find]
        include = ["{module}*"]
        [tool.setuptools.package-data]
        {module} = ["apt-plugin.toml"]
        """).replace("'", '"'))
    (folder / module / "__init__.py").write_text("")
    (folder / module / "plugin.py").write_text(code or textwrap.dedent(f"""\
        from apt_sdk import Callback, hookimpl

        class Hello(Callback):
            pass

        @hookimpl
        def register_callbacks(register):
            register("{name}-hello", lambda options, context: Hello())
        """))
    (folder / module / "apt-plugin.toml").write_text(manifest if manifest is not None else textwrap.dedent(f"""\
        kernel_api = "^1.0"
        [provides.callback.{name}-hello]
        summary = "says hello"
        """))
    return folder


def build(source: Path, out: Path, sdist: bool = False) -> Path:
    """A wheel (or sdist) of ``source`` built by pip/setuptools, as a plugin author would."""
    out.mkdir(parents=True, exist_ok=True)
    if sdist:
        done = subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as b; "
                               "print(b.build_sdist(sys.argv[1]))", str(out.resolve())],
                              cwd=source, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return out / done.stdout.strip().splitlines()[-1]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    module = source.name.rsplit("-", 1)[0].replace("-", "_")
    return next(out.glob(f"{module}-{source.name.rsplit('-', 1)[1]}-*.whl"))


@pytest.fixture(scope="session")
def wheels(tmp_path_factory):
    """``wheels(name, version, **make_plugin options) -> Path`` of a wheel (or sdist) built by pip from a
    generated source folder; built once per session for the same arguments (the files are only read)."""
    root = tmp_path_factory.mktemp("wheels")
    built: dict[str, Path] = {}

    def factory(name: str, version: str, sdist: bool = False, **options) -> Path:
        key = repr((name, version, sdist, sorted(options.items())))
        if key not in built:
            folder = root / str(len(built))
            built[key] = build(make_plugin(folder / "src", name, version, **options), folder / "dist", sdist=sdist)
        return built[key]

    return factory


@pytest.fixture(scope="module")
def module_server(tmp_path_factory) -> Server:
    """One server for a module whose tests do not disturb each other."""
    root = tmp_path_factory.mktemp("market")
    srv = Server(root / "storage", f"sqlite:///{root / 'market.db'}").start()
    yield srv
    srv.stop()


def raw_upload_wheel(client, module: str, version: str, summary: str = "") -> dict:
    """Publish a minimal hand-assembled wheel whose metadata says exactly ``summary``."""
    import io
    import zipfile

    name = module.replace("_", "-")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{module}-{version}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {summary}\n")
        archive.writestr(f"{module}/apt-plugin.toml", 'kernel_api = "^1.0"\n')
    path = Path(tempfile.mkdtemp()) / f"{module}-{version}-py3-none-any.whl"
    path.write_bytes(buffer.getvalue())
    return client.publish_plugin(path)
