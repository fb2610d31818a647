"""The sandbox in the environments users have: what a sandboxed plugin can import depends on where the
interpreter's packages really are. Linux only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from apt_sdk.testing import fresh_venv

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's layers are Linux's")


def test_a_package_linked_into_site_packages_from_elsewhere_can_be_imported(tmp_path):
    """A venv whose site-packages links its packages from another one (as a shared or Nix-built environment
    does, and the tutorials' venv): Landlock checks the path a file resolves to, so each linked package is
    granted where it lives (the tutorials' sandbox page failed with PermissionError on packaging/)."""
    python = fresh_venv(tmp_path / "venv", exclude="^$")
    plugin = "import packaging.version\nresult = str(packaging.version.Version('1.0.post2'))"
    code = ("from apt_kernel.sandbox import PluginSandbox\n"
            "import json\nwith PluginSandbox(allowed_imports=['packaging']) as box:\n"
            f"    print(json.dumps(box.execute_plugin(plugin_code={plugin!r}, globals_dict={{}}), default=str))")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert reply["success"] and reply["result"] == "1.0.post2", reply
