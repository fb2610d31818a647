"""What `apt-kernel plugins install/upgrade` refuse before touching the index or the environment: a
requirement pip's grammar rejects, one the marketplace cannot honour (a URL, extras, a marker: before,
those parts were dropped silently and the index's release installed), and a --to that is no version;
and the kernel's --help lists the commands this plugin adds."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import free_port, kernel


@pytest.mark.parametrize("args, message", [
    (["install", "apt-plugin-x>=>1"], "'apt-plugin-x>=>1' is not a plugin requirement (NAME or NAME>=1.2): Expected"),
    (["install", "apt-plugin-x @ https://example.com/x.whl"], "without a URL, extras or an environment marker"),
    (["install", "apt-plugin-x[gpu]>=1"], "'apt-plugin-x[gpu]>=1': the marketplace installs NAME"),
    (["upgrade", "apt-plugin-x", "--to", "1.x"], "--to '1.x' is not a version (e.g. 1.2.0)"),
])
def test_a_bad_requirement_is_refused_by_name_before_the_index_is_asked(args, message, tmp_path):
    # no server listens on this port: reaching the index would fail differently
    index = f"http://127.0.0.1:{free_port()}/"
    done = kernel("plugins", *args, "--index", index, env={"APT_KERNEL_HOME": str(tmp_path / "home")})
    assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_an_address_it_cannot_listen_on(tmp_path):
    # a port in use was uvicorn's log line and exit code 3; a port past 65535 hung with nothing said
    import socket

    env = {"APT_KERNEL_HOME": str(tmp_path / "home")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = kernel("marketplace", "serve", "--port", str(port), env=env, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    done = kernel("marketplace", "serve", "--port", "99999", env=env, timeout=60)
    assert done.returncode == 2 and "99999 is not in the range 0<=x<=65535" in done.stderr


def test_help_lists_the_commands_this_plugin_adds_without_importing_it():
    # `apt-kernel --help` showed only the builtin commands: `marketplace` and `plugins install` were nowhere
    code = ("import sys; from apt_kernel.cli import main\n"
            "for args in (['--help'], ['plugins', '--help']):\n"
            "    try:\n        main(args, prog_name='apt-kernel')\n    except SystemExit:\n        print('=====')\n"
            "print(sorted(m for m in sys.modules if m.startswith('apt_plugin')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "120"})
    top, plugins, imported = done.stdout.split("=====\n")
    assert done.returncode == 0 and imported.strip() == "[]", done.stdout + done.stderr  # read, not imported
    section = top[top.index("Commands from plugins:"):]
    assert re.search(r"\n  marketplace +Run a plugin index that pip and twine speak", section), top
    section = plugins[plugins.index("Commands from plugins:"):]
    for name, summary in (("install", "Install plugins (NAME or NAME>=1.2) as a new revision"),
                          ("rollback", "Put plugin NAME back as it was before its last change"),
                          ("history", "Every revision of this environment's marketplace plugins")):
        assert re.search(rf"\n  {name} +{re.escape(summary)}", section), plugins
    assert [line.split()[0] for line in section.splitlines()[1:] if line.startswith("  ")][:7] == \
        ["history", "install", "publish", "rate", "rollback", "search", "upgrade"]
