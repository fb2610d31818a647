"""The SDK's pytest plugin changes nothing in a session that does not ask: installing apt-kernel-sdk used to
rewrite APT_KERNEL_HOME and drop APT_*_PLUGINS in every pytest session on the machine (an autouse fixture).
A test asks with the ``apt_isolated_env`` fixture, a folder with one line in its conftest.py."""

import os
import subprocess
import sys
import textwrap

SEES = textwrap.dedent("""
    import os

    def test_sees(request):
        print("HOME=" + os.environ.get("APT_KERNEL_HOME", "-") + " LOAD=" + os.environ.get("APT_LOAD_PLUGINS", "-"))
""")


def _pytest(folder, env_extra: dict) -> str:
    env = {**os.environ, **env_extra}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(folder)],
                          capture_output=True, text=True, env=env, cwd=folder, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_session_that_does_not_opt_in_keeps_its_environment(tmp_path):
    (tmp_path / "test_elsewhere.py").write_text(SEES)
    out = _pytest(tmp_path, {"APT_KERNEL_HOME": "/srv/apt-home", "APT_LOAD_PLUGINS": "mine"})
    assert "HOME=/srv/apt-home LOAD=mine" in out


def test_the_fixture_and_the_conftest_line_isolate_each_test(tmp_path):
    asks = tmp_path / "asks"
    asks.mkdir()
    (asks / "test_asks.py").write_text(SEES.replace("def test_sees(request):", "def test_sees(apt_isolated_env):"))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "conftest.py").write_text("from apt_sdk.isolation import apt_isolate_every_test  # noqa: F401\n")
    (folder / "test_folder.py").write_text(SEES)
    for where in (asks, folder):
        out = _pytest(where, {"APT_KERNEL_HOME": "/srv/apt-home", "APT_LOAD_PLUGINS": "mine"})
        home = out.split("HOME=")[1].split(" ")[0]
        assert home.endswith("/apt-home") and home != "/srv/apt-home" and "LOAD=-" in out, out
