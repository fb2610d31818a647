"""`apt-kernel new-plugin` writes a plugin that pip installs, whose own tests pass, and that a pipeline uses."""

import csv
import json
import site
import subprocess
import sys
import venv

import pytest

from conftest import cli


def _editable_install(tmp_path, plugin):
    """``pip install -e plugin`` into a fresh virtualenv that sees this environment's packages (torch,
    the kernel) through a .pth file; returns its python."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    parents = [p for p in site.getsitepackages() if "site-packages" in p]
    (env_dir / target.split(str(env_dir) + "/", 1)[1]).joinpath("parent.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "-e", str(plugin)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    return python


@pytest.mark.slow
def test_generated_plugin_installs_passes_its_tests_and_runs_in_a_pipeline(tmp_path, tiny_pipeline):
    made = cli("new-plugin", "loss-csv", "--dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    plugin = tmp_path / "loss-csv"
    python = _editable_install(tmp_path, plugin)
    tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(plugin / "tests")],
                           capture_output=True, text=True, cwd=plugin)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
    listed = subprocess.run([str(python), "-m", "apt_kernel.cli", "plugins", "info", "loss-csv"],
                            capture_output=True, text=True)
    assert "callback 'loss-csv'" in listed.stdout and "filename" in listed.stdout
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "loss-csv"\n')
    run = subprocess.run([str(python), "-m", "apt_kernel.cli", "run", str(tiny_pipeline), "--no-progress"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with (tmp_path / "run" / "loss.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]
    assert "loss_csv" not in sys.modules


def test_new_plugin_refuses_bad_names_and_existing_folders(tmp_path):
    assert cli("new-plugin", "9lives", "--dir", str(tmp_path)).returncode == 2
    assert cli("new-plugin", "ok-name", "--dir", str(tmp_path)).returncode == 0
    again = cli("new-plugin", "ok-name", "--dir", str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.slow
def test_doctor_follows_an_editable_plugin_from_broken_to_fixed_and_back(tmp_path, tiny_pipeline):
    """The new-plugin workflow: a plugin installed editable breaks, is fixed in place, breaks again;
    doctor, list and run follow each edit (the status memory is keyed on the plugin's files)."""
    assert cli("new-plugin", "edit-me", "--dir", str(tmp_path)).returncode == 0
    plugin = tmp_path / "edit-me"
    python = _editable_install(tmp_path, plugin)
    source = plugin / "edit_me" / "plugin.py"
    good = source.read_text()

    def kernel(*args):
        return subprocess.run([str(python), "-m", "apt_kernel.cli", *args], capture_output=True, text=True)

    def status(command):
        rows = {r["name"]: r for r in json.loads(kernel("plugins", command, "--json").stdout)}
        return rows["edit-me"]["status"], rows["edit-me"].get("reason") or ""

    source.write_text(good + "\nraise ImportError('a typo while editing')\n")
    failed, reason = status("doctor")
    assert failed == "failed" and "a typo while editing" in reason
    assert kernel("plugins", "doctor").returncode == 1
    source.write_text(good)
    assert status("list")[0] == "installed" and status("doctor")[0] == "installed"
    assert kernel("plugins", "doctor").returncode == 0
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "edit-me"\n')
    run = kernel("run", str(tiny_pipeline), "--no-progress")
    assert run.returncode == 0, run.stderr
    source.write_text(good + "\nraise RuntimeError('broken again')\n")
    assert status("doctor")[0] == "failed"
    # a version raised in the source: pip's record of an editable install keeps the old one until it is
    # installed again, and the kernel said only "installed edit-me: 0.1.0 → cannot run"
    source.write_text(good)
    pyproject = plugin / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    needs = '[pipeline]\nrequires = { edit-me = ">=0.2" }\n'
    tiny_pipeline.write_text(tiny_pipeline.read_text().replace("[pipeline]\n", needs))
    refused = kernel("validate", str(tiny_pipeline))
    hint = f"edit-me is installed editable from {plugin}, whose pyproject.toml now says 0.2.0; the kernel sees 0.1.0"
    assert refused.returncode == 2 and hint in refused.stderr and f"pip install -e {plugin}" in refused.stderr
    rows = {r["name"]: r for r in json.loads(kernel("plugins", "list", "--json").stdout)}
    assert "now says 0.2.0" in rows["edit-me"]["stale"]
    pyproject.write_text(pyproject.read_text().replace('version = "0.2.0"', 'version = "0.1.0"'))
    assert {r["name"]: r for r in json.loads(kernel("plugins", "list", "--json").stdout)}["edit-me"]["stale"] is None


def test_new_plugin_refuses_a_name_that_shadows_an_installed_package(tmp_path):
    for name, what in (("numpy", "a distribution of that name is installed (numpy"),
                       ("apt-plugin-lm", "a distribution of that name is installed (apt-plugin-lm"),
                       ("json", "a module named 'json' already exists")):
        result = cli("new-plugin", name, "--dir", str(tmp_path))
        assert result.returncode == 2 and what in result.stderr, result.stderr
    assert not any(tmp_path.iterdir())
