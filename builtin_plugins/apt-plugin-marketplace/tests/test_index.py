"""The index as pip and twine meet it: a real twine upload, a real pip install into a fresh virtual
environment, the PEP 503 page and its PEP 691 JSON form, yanking, and `apt-kernel plugins publish`."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import apt_kernel
import apt_sdk
from apt_sdk.testing import fresh_venv
from conftest import kernel

pytestmark = pytest.mark.slow_tier  # in the slow tier (pytest --slow-tier; CI runs it after the README's command)

JSON_V1 = "application/vnd.pypi.simple.v1+json"
KERNEL_AND_SDK = (Path(apt_kernel.__file__).parents[1], Path(apt_sdk.__file__).parents[1])


def twine(server, token: str, *files: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TWINE_USERNAME": "__token__", "TWINE_PASSWORD": token, "TWINE_NON_INTERACTIVE": "1"}
    return subprocess.run([sys.executable, "-m", "twine", "upload", "--disable-progress-bar", "--repository-url",
                           server.url + "legacy/", *map(str, files)], capture_output=True, text=True, env=env)


def test_twine_uploads_and_pip_installs_into_a_fresh_environment(server, wheels, tmp_path):
    token = server.user("alice")
    wheel = wheels("apt-plugin-hello", "1.0.0")
    sdist = wheels("apt-plugin-hello", "1.0.0", sdist=True)
    done = twine(server, token, wheel, sdist)
    assert done.returncode == 0, done.stdout + done.stderr

    page = httpx.get(server.url + "simple/apt-plugin-hello/").text
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f'href="/files/{wheel.name}#sha256={digest}"' in page
    assert 'data-requires-python="&gt;=3.11"' in page and sdist.name in page

    python = fresh_venv(tmp_path / "venv", editable=KERNEL_AND_SDK)
    before = _freeze(python)
    install = subprocess.run([str(python), "-m", "pip", "install", "--index-url", server.url + "simple/",
                              "--no-cache-dir", "apt-plugin-hello"], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr
    assert _freeze(python) - before == {"apt-plugin-hello==1.0.0"}
    listed = subprocess.run([str(python), "-m", "apt_kernel.cli", "plugins", "list"], capture_output=True, text=True)
    assert re.search(r"apt-plugin-hello\s+1\.0\.0\s+installed\s+callback: apt-plugin-hello-hello", listed.stdout)
    info = httpx.get(server.url + "api/plugins/apt-plugin-hello").json()
    assert info["downloads"] == 1 and info["provides"] == {"callback": ["apt-plugin-hello-hello"]}


def _freeze(python: Path) -> set[str]:
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True)
    return {line for line in out.stdout.splitlines() if "apt" in line.lower()}


def test_pep_691_json_redirects_and_yanking(server, wheels):
    token = server.user("alice")
    for version in ("1.0.0", "1.1.0"):
        assert twine(server, token, wheels("apt-plugin-hello", version)).returncode == 0

    root = httpx.get(server.url + "simple/", headers={"Accept": JSON_V1})
    assert root.headers["content-type"].startswith(JSON_V1)
    assert root.headers["vary"] == "Accept"  # one URL, two bodies: a cache must key on the Accept header
    assert root.json() == {"meta": {"api-version": "1.1"}, "projects": [{"name": "apt-plugin-hello"}]}
    moved = httpx.get(server.url + "simple/Apt_Plugin.Hello/")
    assert moved.status_code == 301 and moved.headers["location"] == "/simple/apt-plugin-hello/"
    # pip's own Accept header: JSON preferred
    pip_accept = f"{JSON_V1}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
    project = httpx.get(server.url + "simple/apt-plugin-hello/", headers={"Accept": pip_accept}).json()
    assert project["versions"] == ["1.0.0", "1.1.0"] and all(f["yanked"] is False for f in project["files"])
    assert httpx.get(server.url + "simple/", headers={"Accept": "image/png"}).status_code == 406
    html = httpx.get(server.url + "simple/apt-plugin-hello/")
    assert html.headers["vary"] == "Accept" and "data-yanked" not in html.text

    def yank(reason: str | None) -> None:
        body = {"version": "1.1.0", **({"reason": reason} if reason is not None else {})}
        done = httpx.post(server.url + "api/plugins/apt-plugin-hello/yank", json=body,
                          headers={"Authorization": f"Bearer {token}"})
        assert done.status_code == 200, done.text

    def served() -> tuple[dict, str, dict, str]:
        files = httpx.get(server.url + "simple/apt-plugin-hello/", headers={"Accept": JSON_V1}).json()["files"]
        page = httpx.get(server.url + "simple/apt-plugin-hello/").text
        links = {re.search(r"-(\d+\.\d+\.\d+)-", a)[1]: a for a in re.findall(r"<a [^>]*>", page)}
        release = httpx.get(server.url + "api/plugins/apt-plugin-hello").json()["releases"][1]
        return ({f["filename"].split("-")[1]: f["yanked"] for f in files}, links["1.1.0"], release,
                httpx.get(server.url).text)

    # a yank without a reason: PEP 691 says true and PEP 592's attribute is present but empty (pip reads an
    # empty string as "not yanked", and would install it)
    yank(None)
    files, link, release, directory = served()
    assert files == {"1.0.0": False, "1.1.0": True}
    assert ' data-yanked=""' in link
    assert release["yanked"] is True and release["yanked_reason"] == ""
    assert '<span class="yanked" title="yanked"><s>1.1.0</s> yanked</span>' in directory
    # pip skips a yanked version unless it is pinned exactly (PEP 592)
    report = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(server.storage / "dl"),
                             "--index-url", server.url + "simple/", "apt-plugin-hello"], capture_output=True, text=True)
    assert report.returncode == 0 and "apt_plugin_hello-1.0.0" in report.stdout, report.stdout + report.stderr

    yank("broken")  # a reason, given later
    files, link, release, directory = served()
    assert files == {"1.0.0": False, "1.1.0": "broken"} and ' data-yanked="broken"' in link
    assert release["yanked"] is True and release["yanked_reason"] == "broken"
    assert '<span class="yanked" title="yanked: broken"><s>1.1.0</s> yanked</span>' in directory


def test_plugins_publish_uses_the_same_api_and_a_published_file_never_changes(server, wheels):
    token = server.user("alice")
    wheel = wheels("apt-plugin-hello", "2.0.0")
    env = {"APT_MARKETPLACE_URL": server.url, "APT_MARKETPLACE_TOKEN": token}
    first = kernel("plugins", "publish", str(wheel), env=env)
    assert first.returncode == 0 and "published apt-plugin-hello 2.0.0" in first.stdout, first.stderr
    again = kernel("plugins", "publish", str(wheel), env=env)
    assert again.returncode == 2 and "File already exists" in again.stderr
    # twine sees the same refusal, and says why: it prints the status line's phrase, not the body (without
    # --verbose), so the reason is the phrase, as PyPI sends it
    refused = twine(server, token, wheel)
    said = " ".join((refused.stdout + refused.stderr).split())  # as rich wrapped it, unwrapped
    assert refused.returncode != 0 and f"File already exists: {wheel.name}" in said, said
    missing = kernel("plugins", "publish", str(wheel.with_name("nothing-1.0-py3-none-any.whl")), env=env)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_the_server_reads_what_a_version_provides_without_importing_it(server, wheels):
    token = server.user("alice")
    # importing this plugin would fail loudly; the index only reads its files
    wheel = wheels("apt-plugin-trap", "1.0.0", code="raise SystemExit('imported!')\n",
                   manifest='kernel_api = "^1.0"\n[provides.model.trap]\nsummary = "never imported"\n'
                            '[requires]\napt-plugin-hello = "^1.0"\n')
    assert twine(server, token, wheel).returncode == 0
    info = httpx.get(server.url + "api/plugins/apt-plugin-trap").json()
    assert info["provides"] == {"model": ["trap"]} and info["kernel_api"] == "^1.0"
    assert info["releases"][0]["manifest"]["requires"] == {"apt-plugin-hello": "^1.0"}
