"""Load and failure on loopback: 10 publishers of different plugins and 50 installers at once; the
server killed in the middle of an upload never serves a partial file, and starts clean; two identical
uploads at once record the file once."""

from __future__ import annotations

import hashlib
import http.client
import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi import HTTPException
from sqlalchemy import event, func, select

from apt_plugin_marketplace import index
from apt_plugin_marketplace.client import PluginMarketplace
from apt_plugin_marketplace.distfile import inspect
from apt_plugin_marketplace.server import create_app
from apt_plugin_marketplace.store import File, connect, create_token, create_user
from conftest import Server


def small_wheel(folder: Path, module: str, version: str, payload: bytes = b"") -> Path:
    buffer = io.BytesIO()
    name = module.replace("_", "-")
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{module}-{version}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(f"{module}/apt-plugin.toml", 'kernel_api = "^1.0"\n')
        archive.writestr(f"{module}/data.bin", payload)
    path = folder / f"{module}-{version}-py3-none-any.whl"
    path.write_bytes(buffer.getvalue())
    return path


def test_ten_publishers_and_fifty_installers_at_once(tmp_path, any_db):
    db = any_db
    with connect(db)() as session:  # ten accounts made up front, as an admin would
        tokens = [create_token(session, create_user(session, f"author{i}")) for i in range(10)]
        session.commit()
    server = Server(tmp_path / "storage", db).start()
    try:
        base = small_wheel(tmp_path, "apt_plugin_base", "1.0.0", payload=bytes(range(256)) * 400)
        PluginMarketplace(server.url, tokens[0]).publish_plugin(base)
        expected = hashlib.sha256(base.read_bytes()).hexdigest()
        wheels = [small_wheel(tmp_path, f"apt_plugin_p{i}", "1.0.0", payload=str(i).encode() * 10_000)
                  for i in range(10)]

        def publish(i: int) -> str:
            return PluginMarketplace(server.url, tokens[i]).publish_plugin(wheels[i])["name"]

        def install(i: int) -> str:
            client = PluginMarketplace(server.url)
            page = client.http.get("simple/apt-plugin-base/").text
            assert f"#sha256={expected}" in page
            return hashlib.sha256(client.download_plugin("apt-plugin-base", "1.0.0",
                                                         dest=tmp_path / f"i{i}").read_bytes()).hexdigest()

        with ThreadPoolExecutor(60) as pool:
            published = [pool.submit(publish, i) for i in range(10)]
            installed = [pool.submit(install, i) for i in range(50)]
            names = sorted(f.result() for f in published)
            digests = [f.result() for f in installed]
        assert names == sorted(f"apt-plugin-p{i}" for i in range(10))
        assert digests == [expected] * 50
        listed = httpx.get(server.url + "simple/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()
        assert len(listed["projects"]) == 11
        assert PluginMarketplace(server.url).get_plugin_info("apt-plugin-base")["downloads"] == 50
    finally:
        server.stop()


def test_a_server_killed_mid_upload_never_serves_a_partial_file(tmp_path):
    server = Server(tmp_path / "storage", f"sqlite:///{tmp_path / 'market.db'}", max_upload_mb=50).start()
    token = server.user("alice")
    wheel = small_wheel(tmp_path, "apt_plugin_big", "1.0.0", payload=bytes(8 << 20))
    body_request = httpx.Request("POST", server.url + "legacy/", headers={"Authorization": f"Bearer {token}"},
                                 data={":action": "file_upload", "protocol_version": "1"},
                                 files={"content": (wheel.name, wheel.read_bytes())})
    body = body_request.read()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/legacy/")
    for key, value in body_request.headers.items():
        if key.lower() != "host":
            connection.putheader(key, value)
    connection.endheaders()
    connection.send(body[: len(body) // 2])  # half the upload is on its way...
    server.kill()  # ...when the server dies
    connection.close()
    stale = server.storage / "incoming" / "tmpcut.part"
    stale.write_bytes(b"half of something")  # what a server killed while writing leaves behind

    server.start()  # same storage and database
    assert not stale.exists()
    assert httpx.get(server.url + "simple/apt-plugin-big/").status_code == 404
    assert list((server.storage / "files").iterdir()) == []
    reply = PluginMarketplace(server.url, token).publish_plugin(wheel)  # the whole upload, again, works
    served = httpx.get(server.url + f"files/{wheel.name}").content
    assert hashlib.sha256(served).hexdigest() == reply["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    server.stop()


def test_two_uploads_of_one_file_at_once_record_it_once(tmp_path):
    """Two identical uploads that both pass the application's check (no file of that name yet) before either
    is recorded: the database's unique file name is what refuses the second (409), so no file is listed
    twice. The race is made certain, not left to timing: the second upload is recorded whole just before
    the first one commits."""
    state = create_app(f"sqlite:///{tmp_path / 'market.db'}", tmp_path / "storage").state.market
    with state.sessions() as session:
        alice = create_user(session, "alice").id
        session.commit()
    wheel = small_wheel(tmp_path, "apt_plugin_race", "1.0.0")
    digest, size = hashlib.sha256(wheel.read_bytes()).hexdigest(), wheel.stat().st_size

    def record(filename: str):
        """What the upload handler does once the file is received and checked."""
        temp = state.incoming / f"{filename}.part"
        temp.write_bytes(wheel.read_bytes())
        return index._record(state, alice, inspect(temp, filename, state.max_unpacked), filename, temp, digest, size)

    # the project and release exist (another file of 1.0.0), so only the file's own name can clash
    record("apt_plugin_race-1.0.0-py2-none-any.whl")
    racing = "apt_plugin_race-1.0.0-py3-none-any.whl"
    second: list = []
    event.listen(state.sessions, "before_commit", lambda session: second.append(record(racing)), once=True)
    with pytest.raises(HTTPException) as refused:
        record(racing)
    assert second[0].status_code == 200
    assert refused.value.status_code == 409 and "won the race" in refused.value.detail
    with state.sessions() as session:
        assert session.scalar(select(func.count()).select_from(File).where(File.filename == racing)) == 1
