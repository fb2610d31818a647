"""Hostile uploads and requests against a real server: each is refused with a status and a reason that
names what is wrong, and nothing of it is stored or served."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

META = "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: >=3.11\n"


def raw_wheel(name: str = "apt_plugin_evil", version: str = "1.0", manifest: str | None = 'kernel_api = "^1.0"\n',
              extra: list[tuple[zipfile.ZipInfo | str, bytes]] = ()) -> bytes:
    """A wheel assembled member by member, so a test can put in what no build tool would."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", META.format(name=name, version=version))
        archive.writestr(f"{name}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        archive.writestr(f"{name}/__init__.py", "")
        if manifest is not None:
            archive.writestr(f"{name}/apt-plugin.toml", manifest)
        for member, data in extra:
            archive.writestr(member, data)
    return buffer.getvalue()


def upload(server, filename: str, content: bytes, token: str | None, **fields) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = {":action": "file_upload", "protocol_version": "1", **fields}
    return httpx.post(server.url + "legacy/", data=data, files={"content": (filename, content)}, headers=headers,
                      timeout=60)


def stored(server) -> list[str]:
    return sorted(p.name for p in (server.storage / "files").iterdir())


def incoming_is_empty(server) -> bool:
    return not any((server.storage / "incoming").iterdir())


def symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("apt_plugin_evil/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("filename, content, reason", [
    ("../../apt_plugin_evil-1.0-py3-none-any.whl", raw_wheel(), "must be a plain file name"),
    ("/tmp/apt_plugin_evil-1.0-py3-none-any.whl", raw_wheel(), "must be a plain file name"),
    ("apt_plugin_evil-1.0.banana-py3-none-any.whl", raw_wheel(version="1.0.banana"), "PEP 440"),
    ("apt_plugin_evil-1.0-py3-none-any.exe", raw_wheel(), "only wheels"),
    ("apt_plugin_evil-1.0-py3-none-any.whl", b"not a zip at all", "not a wheel"),
    ("apt_plugin_evil-1.0-py3-none-any.whl", raw_wheel(manifest="kernel_api = [unclosed"),
     "apt_plugin_evil/apt-plugin.toml: not TOML"),
    ("apt_plugin_evil-1.0-py3-none-any.whl", raw_wheel(manifest='kernel_api = "^1.0"\n[provides.nonsense.x]\n'),
     "unknown kind"),
    ("apt_plugin_evil-1.0-py3-none-any.whl", raw_wheel(extra=[(symlink_member(), b"/etc/passwd")]),
     "symbolic link"),
    ("apt_plugin_evil-1.0-py3-none-any.whl", raw_wheel(extra=[("../../outside.py", b"x")]), "outside the archive"),
    ("apt_plugin_evil-1.0-py3-none-any.whl", raw_wheel(extra=[("/etc/cron.d/x", b"x")]), "outside the archive"),
    ("apt_plugin_evil-1.0-py3-none-any.whl", raw_wheel(extra=[("apt_plugin_evil/zeros.bin", bytes(60 << 20))]),
     "archive bomb"),
    ("apt_plugin_other-1.0-py3-none-any.whl", raw_wheel(), "the metadata names"),
], ids=["traversal", "absolute", "not-pep440", "not-a-dist", "not-zip", "manifest-not-toml", "manifest-invalid",
        "symlink", "member-traversal", "member-absolute", "zip-bomb", "name-mismatch"])
def test_a_hostile_upload_is_refused_and_nothing_is_kept(module_server, filename, content, reason):
    server = module_server
    token = server.tokens.get("mallory") or server.user("mallory")
    reply = upload(server, filename, content, token)
    assert reply.status_code == 400, reply.text
    assert reason in reply.json()["detail"]
    assert stored(server) == [] and incoming_is_empty(server)
    assert httpx.get(server.url + "simple/").text.count("<a ") == 0


@pytest.mark.parametrize("fields, reason", [
    ({"name": "apt-plugin-victim", "version": "1.0"},
     "apt_plugin_evil-1.0-py3-none-any.whl: the form names project 'apt-plugin-victim', the file 'apt-plugin-evil'"),
    ({"name": "Apt_Plugin.Evil", "version": "2.0"}, "the form says version 2.0, the file 1.0"),
    ({"name": "apt-plugin-evil", "version": "one"}, "the form's version 'one' does not follow PEP 440"),
], ids=["name", "version", "not-a-version"])
def test_an_upload_whose_form_disagrees_with_its_file_is_refused(module_server, fields, reason):
    # twine sends the name and version with the file, as PyPI's upload API expects; PyPI refuses a mismatch,
    # and so must this index (before, the form's fields were ignored)
    server = module_server
    token = server.tokens.get("mallory") or server.user("mallory")
    reply = upload(server, "apt_plugin_evil-1.0-py3-none-any.whl", raw_wheel(), token, **fields)
    assert reply.status_code == 400 and reason in reply.json()["detail"], reply.text
    assert stored(server) == [] and incoming_is_empty(server)


def test_sdists_with_links_or_traversal_are_refused(server):
    token = server.user("mallory")

    def sdist(*members: tarfile.TarInfo) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            body = META.format(name="apt_plugin_evil", version="1.0").encode()
            info = tarfile.TarInfo("apt_plugin_evil-1.0/PKG-INFO")
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
            for member in members:
                archive.addfile(member, io.BytesIO(b"") if member.isfile() else None)
        return buffer.getvalue()

    link = tarfile.TarInfo("apt_plugin_evil-1.0/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    escape = tarfile.TarInfo("apt_plugin_evil-1.0/../../escape.py")
    for member, reason in ((link, "is a link"), (escape, "outside the archive")):
        reply = upload(server, "apt_plugin_evil-1.0.tar.gz", sdist(member), token)
        assert reply.status_code == 400 and reason in reply.json()["detail"], reply.text
    assert upload(server, "apt_plugin_evil-1.0.tar.gz", sdist(), token).status_code == 200
    assert stored(server) != [] and incoming_is_empty(server)


def test_tokens_hashes_and_ownership(server, tmp_path):
    alice, bob, carol = server.user("alice"), server.user("bob"), server.user("carol")  # users 1, 2 and 3
    # carol's project comes first, so alice's is project 2: an owner check that compared a user's id with the
    # project's (rather than with its owner's) would let bob, user 2, in and keep alice out
    assert upload(server, "apt_plugin_carols-1.0-py3-none-any.whl", raw_wheel("apt_plugin_carols"), carol) \
        .status_code == 200
    wheel = raw_wheel("apt_plugin_mine")
    name = "apt_plugin_mine-1.0-py3-none-any.whl"
    assert upload(server, name, wheel, None).status_code == 401
    wrong = upload(server, name, wheel, alice[:-4] + "AAAA")
    assert wrong.status_code == 403 and "invalid" in wrong.json()["detail"]
    assert upload(server, name, wheel, "garbage").status_code == 403
    mismatch = upload(server, name, wheel, alice, sha256_digest="0" * 64)
    assert mismatch.status_code == 400 and "does not match the file" in mismatch.json()["detail"]
    assert upload(server, name, wheel, alice).status_code == 200
    assert upload(server, "apt_plugin_mine-1.1-py3-none-any.whl", raw_wheel("apt_plugin_mine", "1.1"), alice) \
        .status_code == 200  # the owner publishes to the project she made

    def maintainers(token: str, user: str) -> httpx.Response:
        return httpx.post(server.url + "api/plugins/apt-plugin-mine/maintainers", json={"user": user},
                          headers={"Authorization": f"Bearer {token}"})

    def yank(token: str) -> httpx.Response:
        return httpx.post(server.url + "api/plugins/apt-plugin-mine/yank", json={"version": "1.0"},
                          headers={"Authorization": f"Bearer {token}"})

    # bob cannot publish alice's plugin, under its own name or one that normalises to it (PEP 503)
    for other in ("apt_plugin_mine-1.2-py3-none-any.whl", "Apt_Plugin.Mine-1.2-py3-none-any.whl"):
        theirs = upload(server, other, raw_wheel(other.split("-")[0], "1.2"), bob)
        assert theirs.status_code == 403 and "belongs to alice" in theirs.json()["detail"], theirs.text
    assert yank(bob).status_code == 403
    assert maintainers(bob, "bob").status_code == 403  # nor make himself a maintainer
    # once alice adds bob as a maintainer he may
    added = maintainers(alice, "bob")
    assert added.status_code == 200 and added.json()["maintainers"] == ["bob"], added.text
    renamed = raw_wheel("Apt_Plugin.Mine", "1.2")
    assert upload(server, "apt_plugin_mine-1.2-py3-none-any.whl", renamed, bob).status_code == 200
    assert httpx.get(server.url + "api/plugins/apt-plugin-mine").json()["versions"] == ["1.0", "1.1", "1.2"]
    # and carol, who is neither owner nor maintainer, still may not: a project with maintainers is not open to all
    carols = upload(server, "apt_plugin_mine-1.3-py3-none-any.whl", raw_wheel("apt_plugin_mine", "1.3"), carol)
    assert carols.status_code == 403 and "belongs to alice" in carols.json()["detail"], carols.text
    assert yank(carol).status_code == 403 and maintainers(carol, "carol").status_code == 403
    assert maintainers(bob, "carol").status_code == 403  # a maintainer publishes; only the owner adds people
    assert yank(bob).status_code == 200

    # only hashes are stored: no token text in the database file
    database = Path(server.db.removeprefix("sqlite:///")).read_bytes()
    for token in (alice, bob, carol):
        assert token.split(".")[1].encode() not in database


def test_sql_injection_strings_in_search_are_only_text(server):
    token = server.user("alice")
    upload(server, "apt_plugin_mine-1.0-py3-none-any.whl", raw_wheel("apt_plugin_mine"), token)
    for text in ("' OR 1=1 --", "%", "mi_e", "m%e", "'; DROP TABLE projects; --", "\" OR \"\"=\"", "\\"):
        reply = httpx.get(server.url + "api/search", params={"q": text})
        assert reply.status_code == 200 and reply.json() == [], text
        page = httpx.get(server.url, params={"q": text})
        assert page.status_code == 200 and "0 plugins" in page.text
    assert [p["name"] for p in httpx.get(server.url + "api/search", params={"q": "mine"}).json()] == \
        ["apt-plugin-mine"]


def test_an_oversized_upload_is_refused_before_it_is_stored(server):
    token = server.user("alice")
    big = raw_wheel(extra=[("apt_plugin_evil/noise.bin", bytes(__import__("os").urandom(6 << 20)))])
    reply = upload(server, "apt_plugin_evil-1.0-py3-none-any.whl", big, token)
    assert reply.status_code == 413 and "upload limit" in reply.json()["detail"]
    assert stored(server) == [] and incoming_is_empty(server)
