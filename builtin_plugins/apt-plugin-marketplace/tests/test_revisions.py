"""Plugin installs as revisions, in a fresh virtual environment holding the kernel, the SDK and this
plugin, against a real server: install, upgrade, roll back (one plugin, or the whole set to revision N
exactly), history; a failed install changes nothing; a `kill -9` at any moment leaves the old set or the
new one; upgrading the kernel keeps the plugins and names the ones it no longer fits."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import apt_kernel
import apt_plugin_marketplace
import apt_sdk
from apt_kernel.api import ResolutionError
from apt_plugin_marketplace.client import PluginMarketplace
from apt_plugin_marketplace.client_cli import history
from apt_plugin_marketplace.manager import PluginVersionManager
from apt_plugin_marketplace.revisions import Revisions, TransactionError, pip_install_target
from apt_sdk.testing import fresh_venv
from conftest import build, raw_upload_wheel

pytestmark = pytest.mark.slow_tier  # in the slow tier (pytest --slow-tier; CI runs it after the README's command)

KERNEL_SOURCE = Path(apt_kernel.__file__).parents[1]
PROJECT = (KERNEL_SOURCE, Path(apt_sdk.__file__).parents[1], Path(apt_plugin_marketplace.__file__).parents[1])


class Env:
    def __init__(self, root: Path, server_url: str) -> None:
        self.python = fresh_venv(root, editable=PROJECT)
        self.root = root
        self.env = {**os.environ, "APT_MARKETPLACE_URL": server_url, "APT_KERNEL_HOME": str(root / "home")}

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(self.python), "-m", "apt_kernel.cli", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.root)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), "-m", "apt_kernel.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=300, cwd=self.root)  # not the repo: its apt_kernel would shadow

    def plugins(self) -> dict[str, str]:
        listed = self.run("plugins", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        return {p["name"]: p["version"] for p in json.loads(listed.stdout) if p["name"] != "apt-plugin-marketplace"}

    def statuses(self) -> dict[str, tuple[str, str | None]]:
        listed = json.loads(self.run("plugins", "list", "--json").stdout)
        return {p["name"]: (p["status"], p["reason"]) for p in listed}

    def history(self) -> list[dict]:
        return json.loads(self.run("plugins", "history", "--json").stdout)

    def pth(self) -> bytes | None:
        found = list(self.root.glob("lib/python3*/site-packages/apt-kernel-plugins.pth"))
        return found[0].read_bytes() if found else None


@pytest.fixture(scope="module")
def published(module_server, wheels):
    server = module_server
    client = PluginMarketplace(server.url, server.user("alice"))
    for version in ("1.0.0", "1.1.0"):
        client.publish_plugin(wheels("apt-plugin-hello", version))
    client.publish_plugin(wheels("apt-plugin-broken", "1.0.0", code="raise ImportError('half-written plugin')\n"))
    client.publish_plugin(wheels("apt-plugin-needy", "1.0.0", dependencies=("apt-kernel-sdk>=0.1,<2",
                                                                             "no-such-library>=1")))
    strict = 'kernel_api = "~1.0.0"\n[provides.callback.apt-plugin-strict-hello]\nsummary = "s"\n'
    client.publish_plugin(wheels("apt-plugin-strict", "1.0.0", manifest=strict))
    big = ('kernel_api = "^1.0"\n[provides.callback.apt-plugin-big-hello]\nsummary = "b"\n'
           '[requires]\napt-plugin-hello = ">=1.1"\n')
    client.publish_plugin(wheels("apt-plugin-big", "1.0.0", manifest=big))
    return server


def test_install_upgrade_rollback_and_history(published, tmp_path):
    env = Env(tmp_path / "venv", published.url)
    assert env.plugins() == {}
    done = env.run("plugins", "install", "apt-plugin-hello==1.0.0")
    assert done.returncode == 0 and "revision 1: apt-plugin-hello 1.0.0" in done.stdout, done.stderr
    assert env.plugins() == {"apt-plugin-hello": "1.0.0"}
    check = subprocess.run([str(env.python), "-c", "from apt_plugin_marketplace.manager import PluginVersionManager;"
                            "print(PluginVersionManager().check_updates('apt-plugin-hello'))"],
                           env=env.env, capture_output=True, text=True, cwd=env.root)
    assert check.stdout.strip() == "{'has_update': True, 'current': '1.0.0', 'latest': '1.1.0'}", check.stderr

    assert env.run("plugins", "upgrade", "apt-plugin-hello").returncode == 0
    assert env.plugins() == {"apt-plugin-hello": "1.1.0"}
    assert env.run("plugins", "rollback", "apt-plugin-hello").returncode == 0
    assert env.plugins() == {"apt-plugin-hello": "1.0.0"}
    assert env.run("plugins", "install", "apt-plugin-strict").returncode == 0
    assert env.plugins() == {"apt-plugin-hello": "1.0.0", "apt-plugin-strict": "1.0.0"}

    restored = env.run("plugins", "rollback", "--to", "2")
    assert restored.returncode == 0 and "revision 5: apt-plugin-hello 1.1.0" in restored.stdout, restored.stderr
    assert env.plugins() == {"apt-plugin-hello": "1.1.0"}
    history = env.history()
    assert [(h["revision"], h["current"]) for h in history] == [(0, False), (1, False), (2, False), (3, False),
                                                                 (4, False), (5, True)]
    assert history[5]["plugins"] == history[2]["plugins"] and history[5]["site"] == history[2]["site"]  # exactly
    assert history[2]["plugins"]["apt-plugin-hello"]["sha256"] == \
        PluginMarketplace(published.url).release_file("apt-plugin-hello", "1.1.0")["sha256"]
    assert env.run("plugins", "rollback", "--to", "0").returncode == 0 and env.plugins() == {}
    text = env.run("plugins", "history").stdout
    assert "rollback to revision 0" in text and "* " in text
    bad = env.run("plugins", "rollback", "--to", "99")
    assert bad.returncode == 2 and "there is no revision 99" in bad.stderr


def test_a_failed_install_changes_nothing(published, tmp_path):
    env = Env(tmp_path / "venv", published.url)
    assert env.run("plugins", "install", "apt-plugin-hello==1.0.0").returncode == 0
    before = (env.plugins(), env.history(), env.pth())
    broken = env.run("plugins", "install", "apt-plugin-broken")
    assert broken.returncode == 2 and "failed its check, so nothing was changed" in broken.stderr
    assert "half-written plugin" in broken.stderr
    needy = env.run("plugins", "install", "apt-plugin-needy")
    assert needy.returncode == 2 and "needs no-such-library>=1 (this environment lacks it)" in needy.stderr
    conflict = env.run("plugins", "install", "apt-plugin-big")  # needs hello >= 1.1; 1.0.0 is installed
    assert conflict.returncode == 2, conflict.stderr
    assert "apt-plugin-big 1.0.0 requires apt-plugin-hello >=1.1" in conflict.stderr
    resolve = ("from apt_plugin_marketplace.manager import PluginVersionManager as M; "
               "print(M().resolve_version_conflicts(['apt-plugin-big', 'apt-plugin-hello>=1.1']))")
    plan = subprocess.run([str(env.python), "-c", resolve], env=env.env, capture_output=True, text=True, cwd=env.root)
    assert plan.stdout.strip() == "{'apt-plugin-big': '1.0.0', 'apt-plugin-hello': '1.1.0'}", plan.stderr
    missing = env.run("plugins", "install", "apt-plugin-nothing")
    assert missing.returncode == 2 and "no plugin named 'apt-plugin-nothing'" in missing.stderr
    assert (env.plugins(), env.history(), env.pth()) == before
    assert not list((env.root / "apt-plugins" / "revisions").glob(".staging-*"))


def test_upgrading_the_kernel_keeps_the_plugins_and_names_the_incompatible(published, tmp_path):
    env = Env(tmp_path / "venv", published.url)
    assert env.run("plugins", "install", "apt-plugin-hello", "apt-plugin-strict").returncode == 0
    # a real kernel upgrade: a wheel of this kernel as 0.2.0 with contract 1.1.0, pip-installed over it
    source = tmp_path / "kernel-src"
    shutil.copytree(KERNEL_SOURCE / "apt_kernel", source / "apt_kernel", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(KERNEL_SOURCE / "pyproject.toml", source)
    (source / "pyproject.toml").write_text((source / "pyproject.toml").read_text().replace(
        'version = "0.1.0"', 'version = "0.2.0"', 1))
    init = source / "apt_kernel" / "__init__.py"
    init.write_text(init.read_text().replace('KERNEL_API_VERSION = "1.0.0"', 'KERNEL_API_VERSION = "1.1.0"')
                    .replace('__version__ = "0.1.0"', '__version__ = "0.2.0"'))
    wheel = build(source.rename(tmp_path / "apt-kernel-0.2.0"), tmp_path / "kernel-dist")
    upgrade = subprocess.run([str(env.python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                             capture_output=True, text=True)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "0.2.0" in env.run("--version").stdout
    statuses = env.statuses()
    assert statuses["apt-plugin-hello"] == ("installed", None)
    assert statuses["apt-plugin-strict"] == ("incompatible", "needs kernel API ~1.0.0; this kernel's API is 1.1.0")
    assert env.history()[-1]["current"]


def test_a_yanked_version_stays_satisfiable_once_installed_and_installable_pinned(module_server, tmp_path):
    # resolution only: what `plugins install` decides before it downloads anything
    client = PluginMarketplace(module_server.url, module_server.tokens.get("alice") or module_server.user("alice"))
    for version in ("0.1.0", "0.2.0"):
        raw_upload_wheel(client, "apt_plugin_greeter", version)
    raw_upload_wheel(client, "apt_plugin_other", "1.0.0")
    revisions = Revisions(tmp_path / "env", tmp_path / "site-packages")
    manager = PluginVersionManager(client, revisions)
    plan = manager.resolve_version_conflicts(["apt-plugin-greeter==0.2.0"])
    assert plan == {"apt-plugin-greeter": "0.2.0"}
    revisions.commit({n: {"version": v} for n, v in plan.items()}, "install apt-plugin-greeter==0.2.0", None, None)
    client.yank_plugin("apt-plugin-greeter", "0.2.0", "greets twice")
    # the installed, now yanked, version is kept: it blocked every later install ("pipeline needs
    # apt-plugin-greeter ==0.2.0; available apt-plugin-greeter: 0.1.0")
    assert manager.resolve_version_conflicts(["apt-plugin-other"]) == {"apt-plugin-greeter": "0.2.0",
                                                                      "apt-plugin-other": "1.0.0"}
    # where it is not installed, it is taken only when pinned exactly, as pip does (PEP 592)
    fresh = PluginVersionManager(client, Revisions(tmp_path / "env2", tmp_path / "site-packages2"))
    assert fresh.resolve_version_conflicts(["apt-plugin-greeter==0.2.0"]) == {"apt-plugin-greeter": "0.2.0"}
    assert fresh.resolve_version_conflicts(["apt-plugin-greeter===0.2.0"]) == {"apt-plugin-greeter": "0.2.0"}
    assert fresh.resolve_version_conflicts(["apt-plugin-greeter"]) == {"apt-plugin-greeter": "0.1.0"}
    with pytest.raises(ResolutionError) as refused:
        fresh.resolve_version_conflicts(["apt-plugin-greeter>=0.2"])
    assert str(refused.value) == (
        "the plugin set needs apt-plugin-greeter >=0.2; available apt-plugin-greeter: 0.1.0 → cannot run "
        "(yanked, so taken only when pinned exactly, ==VERSION: apt-plugin-greeter 0.2.0: greets twice)")


def test_rollback_checks_the_revisions_files_against_its_lock(wheels, tmp_path):
    # `pip uninstall` follows the .pth into the current revision's folder and empties it; a rollback to that
    # revision said "revision 2: apt-plugin-hello 1.0.0" (exit 0) and the plugin was gone
    python = fresh_venv(tmp_path / "venv")  # this environment's pip, and a prefix of its own
    revisions = Revisions(tmp_path / "venv", next((tmp_path / "venv" / "lib").glob("python3*/site-packages")))
    staging = revisions.staging()
    (staging / "site").mkdir()
    pip_install_target([wheels("apt-plugin-hello", "1.0.0")], staging / "site")
    assert revisions.commit({"apt-plugin-hello": {"version": "1.0.0"}}, "install", staging / "site", staging) == 1
    assert revisions.restore(1) == 2  # intact: restored
    site = Path(revisions.current()["site"])
    refused = f"revision 1's files in {site} are not those its lock records (removed or changed since, e.g. by " \
              "`pip uninstall`), so it cannot be restored exactly: apt-plugin-hello 1.0.0: {}; nothing was " \
              "changed; `apt-kernel plugins install NAME==VERSION` installs a plugin again"

    plugin = site / "apt_plugin_hello" / "plugin.py"
    code = plugin.read_text()
    plugin.write_text(code + "# edited\n")
    with pytest.raises(TransactionError) as changed:
        revisions.restore(1)
    assert str(changed.value) == refused.format("1 file changed (apt_plugin_hello/plugin.py)")
    plugin.write_text(code)
    assert revisions.restore(1) == 3

    uninstall = subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "apt-plugin-hello"],
                               capture_output=True, text=True)
    assert uninstall.returncode == 0 and not plugin.exists(), uninstall.stdout + uninstall.stderr
    with pytest.raises(TransactionError) as missing:
        revisions.restore(1)
    assert re.fullmatch(re.escape(refused).replace(r"\{\}", "(.*)"), str(missing.value))[1] == (
        f"{len(revisions.read(1)['files']['apt-plugin-hello 1.0.0'])} files missing (apt_plugin_hello/__init__.py, "
        f"apt_plugin_hello/apt-plugin.toml, apt_plugin_hello/plugin.py, apt_plugin_hello-1.0.0.dist-info/INSTALLER "
        f"and {len(revisions.read(1)['files']['apt-plugin-hello 1.0.0']) - 4} more)")
    # a revision recorded before its files were: the plugins of its lock must still be installed there
    lock = revisions.folder / "1" / "lock.json"
    lock.write_text(json.dumps({k: v for k, v in json.loads(lock.read_text()).items() if k != "files"}))
    with pytest.raises(TransactionError) as legacy:
        revisions.restore(1)
    assert str(legacy.value) == refused.format("not installed there")
    assert revisions.numbers() == [0, 1, 2, 3] and revisions.current_number() == 3


def test_history_marks_a_cut_off_revision_after_later_ones(tmp_path, monkeypatch):
    revisions = Revisions(tmp_path / "env", tmp_path / "site-packages")
    assert revisions.commit({}, "install a", None, None) == 1

    def killed(number: int, site: str | None) -> None:
        raise KeyboardInterrupt  # a kill after the revision's folder was complete, before it became current

    monkeypatch.setattr(revisions, "_point", killed)
    with pytest.raises(KeyboardInterrupt):
        revisions.commit({}, "install b", None, None)
    monkeypatch.undo()
    assert revisions.commit({}, "install c", None, None) == 3
    assert revisions.restore(1) == 4
    rows = [(r["revision"], r["applied"], r["current"]) for r in revisions.history()]
    assert rows == [(0, True, False), (1, True, False), (2, False, False), (3, True, False), (4, True, True)]
    monkeypatch.setattr("apt_plugin_marketplace.revisions.Revisions", lambda: revisions)
    shown = CliRunner().invoke(history).output.splitlines()
    assert [line[0] for line in shown] == [" ", " ", "!", " ", "*", "!"], shown
    assert shown[2].startswith("!   2 ") and "install b" in shown[2]


@pytest.mark.slow
def test_kill_9_at_any_moment_of_an_install_leaves_the_old_set_or_the_new(published, tmp_path):
    env = Env(tmp_path / "venv", published.url)
    assert env.run("plugins", "install", "apt-plugin-hello==1.0.0").returncode == 0
    durations = []
    for version in ("1.1.0", "1.0.0"):  # warm: the kills below must land inside an install, not after it
        started = time.monotonic()
        assert env.run("plugins", "upgrade", "apt-plugin-hello", "--to", version).returncode == 0
        durations.append(time.monotonic() - started)
    duration = min(durations)
    rng = random.Random(0)
    outcomes = {"old": 0, "new": 0, "finished before the kill": 0}
    for attempt in range(20):
        old = env.plugins()["apt-plugin-hello"]
        new = "1.0.0" if old == "1.1.0" else "1.1.0"
        process = env.start("plugins", "upgrade", "apt-plugin-hello", "--to", new)
        time.sleep(rng.uniform(0.05, 1.2) * duration)  # a few after it ends
        finished = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
        now = env.plugins()
        assert now in ({"apt-plugin-hello": old}, {"apt-plugin-hello": new}), (attempt, now)
        outcomes["finished before the kill" if finished else "old" if now["apt-plugin-hello"] == old else "new"] += 1
    print(f"kill -9 at 20 random moments of an upgrade: {outcomes}")
    assert outcomes["old"] + outcomes["new"] >= 10  # most kills landed inside an install
    done = env.run("plugins", "upgrade", "apt-plugin-hello", "--to", "1.1.0")  # and the next install works
    assert done.returncode == 0, done.stderr
    assert env.plugins() == {"apt-plugin-hello": "1.1.0"} and env.run("plugins", "history").returncode == 0
