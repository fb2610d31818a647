"""The JSON API and the client's original methods against a real server, on SQLite and on PostgreSQL:
search by keyword, kind, component and kernel API; info; the newest compatible version by the kernel's
solver; ratings (one per user, updatable); hash-checked downloads."""

from __future__ import annotations

import hashlib

import pytest

from apt_plugin_marketplace.client import MarketplaceError, PluginMarketplace
from apt_sdk import KERNEL_API_VERSION
from conftest import Server, kernel

MODEL = 'kernel_api = "^1.0"\n[provides.model.{n}]\nsummary = "a model"\n'


@pytest.fixture
def market(any_db, tmp_path, wheels):
    server = Server(tmp_path / "storage", any_db).start()
    alice = server.user("alice")
    client = PluginMarketplace(server.url, alice)
    client.publish_plugin(wheels("apt-plugin-hello", "1.0.0", description="Says hello at each epoch"))
    client.publish_plugin(wheels("apt-plugin-hello", "1.1.0", description="Says hello at each epoch"))
    client.publish_plugin(wheels("apt-plugin-gpt", "0.3.0", manifest=MODEL.format(n="gpt")))
    needs_new_hello = MODEL.format(n="big") + '[requires]\napt-plugin-hello = ">=1.1"\n'
    client.publish_plugin(wheels("apt-plugin-big", "1.0.0", manifest=needs_new_hello))
    future = 'kernel_api = "^9.0"\n[provides.model.future]\nsummary = "for a later kernel"\n'
    client.publish_plugin(wheels("apt-plugin-future", "1.0.0", manifest=future))
    yield server, client
    server.stop()


def test_search_info_and_ratings(market):
    server, client = market
    names = lambda rows: [r["name"] for r in rows]  # noqa: E731
    assert names(client.search_plugins("hello")) == ["apt-plugin-hello"]
    assert names(client.search_plugins("EPOCH")) == ["apt-plugin-hello"]  # description, any case
    assert names(client.search_plugins("", category="model")) == ["apt-plugin-big", "apt-plugin-future",
                                                                  "apt-plugin-gpt"]
    assert names(client.search_plugins("", category="model", compatible_only=True)) == ["apt-plugin-big",
                                                                                         "apt-plugin-gpt"]
    assert names(client.http.get("api/search", params={"component": "gpt"}).json()) == ["apt-plugin-gpt"]

    info = client.get_plugin_info("APT_Plugin_Hello")
    assert info["versions"] == ["1.0.0", "1.1.0"] and info["latest"] == "1.1.0" and info["owner"] == "alice"
    assert info["releases"][1]["manifest"]["provides"] == {"callback": {"apt-plugin-hello-hello":
                                                                        {"summary": "says hello"}}}
    with pytest.raises(MarketplaceError, match="no plugin named 'nothing'"):
        client.get_plugin_info("nothing")

    bob = PluginMarketplace(server.url, server.user("bob"))
    client.rate_plugin("apt-plugin-hello", 5, "great")
    assert bob.rate_plugin("apt-plugin-hello", 2)["rating"] == 3.5
    assert bob.rate_plugin("apt-plugin-hello", 4, "better now")["rating"] == 4.5  # updated, not added
    info = client.get_plugin_info("apt-plugin-hello")
    assert info["ratings"] == 2 and {"user": "bob", "stars": 4, "comment": "better now"} in info["comments"]
    with pytest.raises(MarketplaceError, match="stars"):
        bob.rate_plugin("apt-plugin-hello", 6)
    with pytest.raises(MarketplaceError, match="token"):
        PluginMarketplace(server.url, token=None).rate_plugin("apt-plugin-hello", 3)
    cli = kernel("plugins", "rate", "apt-plugin-gpt", "4", "--index", server.url, "--token", server.tokens["bob"])
    assert cli.returncode == 0 and "average 4.00/5" in cli.stdout, cli.stderr
    found = kernel("plugins", "search", "gpt", "--index", server.url)
    assert "apt-plugin-gpt" in found.stdout and "4.0/5" in found.stdout


def test_newest_compatible_version_and_hash_checked_download(market, tmp_path):
    server, client = market
    # with hello 1.0.0 installed, big (which needs hello >= 1.1) cannot be chosen: the solver's chain says so
    chain = (r"409 the request needs apt-plugin-hello ==1\.0\.0; the request needs apt-plugin-big; "
             r"apt-plugin-big 1\.0\.0 requires apt-plugin-hello >=1\.1")  # "the request", not "pipeline"
    with pytest.raises(MarketplaceError, match=chain):
        client.compatible("apt-plugin-big", {"apt-plugin-hello": "1.0.0"})
    assert client.compatible("apt-plugin-big", {})["plan"] == {"apt-plugin-big": "1.0.0", "apt-plugin-hello": "1.1.0"}
    with pytest.raises(MarketplaceError, match=f"installed kernel API is {KERNEL_API_VERSION}"):
        client.compatible("apt-plugin-future", {})
    assert client.compatible("apt-plugin-future", {}, kernel_api="9.1")["version"] == "1.0.0"

    path = client.download_plugin("apt-plugin-hello", dest=tmp_path / "dl")
    assert path.name == "apt_plugin_hello-1.1.0-py3-none-any.whl"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == client.release_file("apt-plugin-hello", "1.1.0")["sha256"]
    # a file changed on the server's disk is caught by the client's hash check and not kept
    stored = server.storage / "files" / client.release_file("apt-plugin-hello", "1.0.0")["sha256"]
    stored.write_bytes(stored.read_bytes() + b"tampered")
    with pytest.raises(MarketplaceError, match="does not match the index"):
        client.download_plugin("apt-plugin-hello", "1.0.0", dest=tmp_path / "dl2")
    assert list((tmp_path / "dl2").iterdir()) == []
