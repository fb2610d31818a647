"""Discovery and guarded loading with broken plugins installed beside the builtin ones."""

import json
import sys

import pytest

from conftest import cli, make_plugin, with_site

GOOD_MANIFEST = """
kernel_api = "^1.0"
[provides.callback.good-callback]
summary = "does nothing harmful"
"""


def manifest(component: str) -> str:
    return f'kernel_api = "^1.0"\n[provides.callback.{component}]\nsummary = "x"\n'


@pytest.fixture
def broken_site(tmp_path):
    """A raising, an exiting, a missing-module and a segfaulting plugin, plus a good one.
    Every plugin's import writes a marker file, so tests can tell whether it was imported."""
    site, marks = tmp_path / "site", tmp_path / "imported"
    marks.mkdir()

    def mark(name):
        return f"open({str(marks / name)!r}, 'w').close()\n"

    make_plugin(site, "raises-plugin", mark("raises") + "raise RuntimeError('kaboom at import')\n",
                manifest("raises-cb"))
    make_plugin(site, "exits-plugin", mark("exits") + "import sys\nsys.exit(3)\n", manifest("exits-cb"))
    make_plugin(site, "missing-plugin", "", manifest("missing-cb"), entry="no_such_module_here.plugin")
    make_plugin(site, "segfault-plugin", mark("segfault") + "import ctypes\nctypes.string_at(0)\n",
                manifest("segfault-cb"))
    make_plugin(site, "good-plugin", mark("good") + """
from apt_sdk import Callback, hookimpl

class Good(Callback):
    def on_train_batch_end(self, trainer, step, metrics):
        trainer.run_dir.joinpath("good.txt").write_text(str(step))

@hookimpl
def register_callbacks(register):
    register("good-callback", lambda options, context: Good())
""", GOOD_MANIFEST)
    return site, marks


def test_plugins_list_reads_manifests_without_importing(broken_site):
    site, marks = broken_site
    result = cli("plugins", "list", "--json", env_extra=with_site(site))
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {"raises-plugin", "exits-plugin", "segfault-plugin", "good-plugin", "apt-plugin-lm"} <= set(rows)
    assert rows["good-plugin"]["provides"] == {"callback": ["good-callback"]}
    assert rows["good-plugin"]["status"] == "installed"
    assert rows["missing-plugin"]["status"] == "failed"  # no package: no manifest can be found
    assert "no_such_module_here" in rows["missing-plugin"]["reason"]
    assert list(marks.iterdir()) == []  # no plugin code ran
    text = cli("plugins", "list", env_extra=with_site(site))
    assert text.returncode == 0 and "good-callback" in text.stdout


def test_validate_imports_no_plugin_code(broken_site, tiny_pipeline):
    site, marks = broken_site
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "good-callback"\n')
    result = cli("validate", str(tiny_pipeline), env_extra=with_site(site))
    assert result.returncode == 0, result.stderr
    assert "callback 'good-callback' from good-plugin 1.0.0" in result.stdout
    assert list(marks.iterdir()) == []


def test_doctor_reports_failures_and_crashes(broken_site):
    site, _ = broken_site
    result = cli("plugins", "doctor", "--json", env_extra=with_site(site))
    assert result.returncode == 1, result.stderr  # a failed plugin is a failed check
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["raises-plugin"]["status"] == "failed"
    assert "RuntimeError: kaboom at import" in rows["raises-plugin"]["reason"]
    assert "plugin.py:2" in rows["raises-plugin"]["reason"]
    assert rows["exits-plugin"]["status"] == "failed" and "sys.exit(3)" in rows["exits-plugin"]["reason"]
    assert rows["missing-plugin"]["status"] == "failed"
    assert rows["segfault-plugin"]["status"] == "crashed" and "SIGSEGV" in rows["segfault-plugin"]["reason"]
    assert rows["good-plugin"]["status"] == "installed"
    assert rows["good-plugin"]["registered"] == {"callback": ["good-callback"]}
    # what doctor found is remembered: list shows it without importing anything
    listed = {r["name"]: r for r in json.loads(cli("plugins", "list", "--json", env_extra=with_site(site)).stdout)}
    assert listed["segfault-plugin"]["status"] == "crashed"
    assert listed["raises-plugin"]["status"] == "failed" and "kaboom" in listed["raises-plugin"]["reason"]


def test_pipeline_not_using_broken_plugins_runs(broken_site, tiny_pipeline, tmp_path):
    site, marks = broken_site
    text = tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "good-callback"\n'
    tiny_pipeline.write_text(text)
    result = cli("run", str(tiny_pipeline), "--no-progress", env_extra=with_site(site))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "good.txt").read_text() == "4"
    assert sorted(p.name for p in marks.iterdir()) == ["good"]  # only what the pipeline uses was imported


def test_using_a_failing_plugin_is_a_clear_error(broken_site, tiny_pipeline, tmp_path):
    site, _ = broken_site
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "raises-cb"\n')
    result = cli("run", str(tiny_pipeline), env_extra=with_site(site))
    assert result.returncode == 2
    assert "plugin 'raises-plugin' failed to load: RuntimeError: kaboom at import" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_strict_makes_a_load_failure_fatal(broken_site):
    from apt_kernel.errors import PluginLoadError
    from apt_kernel.kernel import Kernel

    site, _ = broken_site
    sys.path.insert(0, str(site))
    try:
        kernel = Kernel(strict=False)
        kernel.load(["raises-plugin", "exits-plugin", "good-plugin"])
        assert kernel.plugins["exits-plugin"].status == "failed"
        assert kernel.loaded == {"good-plugin"}
        with pytest.raises(PluginLoadError, match="raises-plugin"):
            Kernel(env={"APT_STRICT_PLUGINS": "1", "APT_KERNEL_HOME": str(site.parent / "h")}).load(
                ["raises-plugin"])
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m.startswith(("raises_plugin", "exits_plugin", "good_plugin"))]:
            del sys.modules[name]


def test_allow_and_deny_lists(broken_site):
    site, _ = broken_site
    env = with_site(site) | {"APT_LOAD_PLUGINS": "good-plugin,apt-plugin-lm"}
    rows = {r["name"]: r for r in json.loads(cli("plugins", "list", "--json", env_extra=env).stdout)}
    assert rows["good-plugin"]["status"] == "installed"
    assert rows["apt-plugin-trainer"]["status"] == "disabled"
    assert "APT_LOAD_PLUGINS" in rows["apt-plugin-trainer"]["reason"]
    env = with_site(site) | {"APT_LOAD_PLUGINS": ""}
    rows = json.loads(cli("plugins", "list", "--json", env_extra=env).stdout)
    assert {r["status"] for r in rows if r["name"] != "missing-plugin"} == {"disabled"}
    env = with_site(site) | {"APT_DISABLE_PLUGINS": "good-plugin"}
    rows = {r["name"]: r for r in json.loads(cli("plugins", "list", "--json", env_extra=env).stdout)}
    assert rows["good-plugin"]["status"] == "disabled"


def test_disabled_component_is_reported(broken_site, tiny_pipeline):
    site, _ = broken_site
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "good-callback"\n')
    result = cli("validate", str(tiny_pipeline), env_extra=with_site(site) | {"APT_DISABLE_PLUGINS": "good-plugin"})
    assert result.returncode == 2
    assert "callback 'good-callback' comes from plugin 'good-plugin', which is disabled" in result.stderr


def test_one_file_plugin_from_plugins_dir(tmp_path, tiny_pipeline):
    plugins = tmp_path / "local"
    plugins.mkdir()
    (plugins / "stepcount.py").write_text('''
APT_MANIFEST = {"kernel_api": "^1.0", "version": "0.3.0",
                "provides": {"callback": {"step-count": {"options": {"every": {"type": "int", "default": 1}}}}}}

from apt_sdk import Callback, hookimpl

class StepCount(Callback):
    def __init__(self, path, every):
        self.path, self.every = path, every
    def on_fit_end(self, trainer, result):
        self.path.write_text(f"{trainer.step} {self.every}")

@hookimpl
def register_callbacks(register):
    register("step-count", lambda options, context: StepCount(context.run_dir / "steps.txt", **options))
''')
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "step-count"\nevery = 2\n')
    listed = cli("plugins", "list", "--plugins-dir", str(plugins))
    assert "stepcount" in listed.stdout and "0.3.0" in listed.stdout
    result = cli("run", str(tiny_pipeline), "--no-progress", "--plugins-dir", str(plugins))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "steps.txt").read_text() == "4 2"


def test_a_fixed_plugin_is_imported_again_and_a_new_break_is_seen(broken_site, tiny_pipeline):
    """The status memory is keyed on the plugin's files (and the installed distributions): editing the
    plugin invalidates what was remembered, in both directions."""
    site, _ = broken_site
    env = with_site(site)
    plugin_file = site / "raises_plugin" / "plugin.py"
    assert cli("plugins", "doctor", "--json", env_extra=env).returncode == 1
    plugin_file.write_text("from apt_sdk import Callback, hookimpl\n\n@hookimpl\ndef register_callbacks(register):\n"
                           "    register('raises-cb', lambda options, context: Callback())\n")
    listed = {r["name"]: r for r in json.loads(cli("plugins", "list", "--json", env_extra=env).stdout)}
    assert listed["raises-plugin"]["status"] == "installed"  # the remembered failure no longer applies
    doctor = {r["name"]: r for r in json.loads(cli("plugins", "doctor", "--json", env_extra=env).stdout)}
    assert doctor["raises-plugin"]["status"] == "installed", doctor["raises-plugin"]
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "raises-cb"\n')
    assert cli("run", str(tiny_pipeline), "--no-progress", env_extra=env).returncode == 0
    plugin_file.write_text("raise RuntimeError('broken again')\n")
    doctor = {r["name"]: r for r in json.loads(cli("plugins", "doctor", "--json", env_extra=env).stdout)}
    assert doctor["raises-plugin"]["status"] == "failed" and "broken again" in doctor["raises-plugin"]["reason"]


def test_a_bad_one_file_plugin_does_not_break_its_plugins_dir(tmp_path, tiny_pipeline):
    plugins = tmp_path / "local"
    plugins.mkdir()
    (plugins / "badversion.py").write_text('APT_MANIFEST = {"kernel_api": "^1.0", "version": "one point oh"}\n')
    (plugins / "fine.py").write_text('APT_MANIFEST = {"kernel_api": "^1.0", "version": "1.0.0", '
                                     '"provides": {"callback": {"fine": {}}}}\n'
                                     "from apt_sdk import Callback, hookimpl\n\n@hookimpl\n"
                                     "def register_callbacks(register):\n"
                                     "    register('fine', lambda options, context: Callback())\n")
    listed = {r["name"]: r for r in json.loads(cli("plugins", "list", "--json", "--plugins-dir", str(plugins)).stdout)}
    assert listed["badversion"]["status"] == "failed"
    assert "version: 'one point oh' is not a version" in listed["badversion"]["reason"]
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "fine"\n')
    result = cli("run", str(tiny_pipeline), "--no-progress", "--plugins-dir", str(plugins))
    assert result.returncode == 0, result.stderr
