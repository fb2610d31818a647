"""Sandboxed callbacks in real training runs: same losses as in-process, attacks contained with the
failure policy applied (stop with a checkpoint, or continue), errors attributed to the plugin, the
plugin never imported by the host, and bad sandbox settings refused before anything runs."""

from __future__ import annotations

import sys

import pytest
import torch

from apt_kernel.runner import run_pipeline
from conftest import REPO, TINY_PIPELINE, cli

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's layers are Linux's")
PLUGINS = str(REPO / "tests" / "plugins")


def pipeline(tmp_path, callbacks: str, steps: int = 8, name: str = "run"):
    path = tmp_path / f"{name}.toml"
    text = TINY_PIPELINE.format(out=(tmp_path / name).as_posix()).replace("max_steps = 4", f"max_steps = {steps}")
    path.write_text(text + "eval_every = 2\n" + callbacks)
    return path


def one_file_callback(tmp_path, name: str, on_fit_start: str):
    """A plugins folder holding a one-file plugin: callback ``name`` runs the line ``on_fit_start``."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / f"{name}.py").write_text(
        f'APT_MANIFEST = {{"kernel_api": "^1.0", "version": "1.0.0", "provides": {{"callback": {{"{name}": {{}}}}}}}}\n'
        "from apt_sdk import Callback, hookimpl\n\n"
        "class Plugin(Callback):\n"
        "    def on_fit_start(self, trainer):\n"
        f"        {on_fit_start}\n\n"
        "@hookimpl\n"
        "def register_callbacks(register):\n"
        f"    register({name!r}, lambda options, context: Plugin())\n")
    return plugins


def losses(run_dir):
    saved = torch.load(next((run_dir / "checkpoints").glob("*.pt")), weights_only=False)
    return saved["loss_history"], saved


def test_a_sandboxed_callback_trains_with_the_same_losses_and_is_never_imported_here(tmp_path):
    callbacks = ('\n[[callbacks]]\nuse = "hostile"\nattack = "none"\n'
                 '[[callbacks]]\nuse = "early-stopping"\npatience = 9\n')
    sandboxed = callbacks.replace('attack = "none"\n', 'attack = "none"\nsandbox = true\n').replace(
        "patience = 9\n", "patience = 9\n[callbacks.limits]\ncpu_seconds = 30\n")
    plain = run_pipeline(pipeline(tmp_path, callbacks, name="plain"), plugins_dirs=(PLUGINS,))[0]
    for key in [k for k in sys.modules if "hostile" in k]:
        del sys.modules[key]
    boxed = run_pipeline(pipeline(tmp_path, sandboxed, name="boxed"), plugins_dirs=(PLUGINS,))[0]
    assert not [k for k in sys.modules if "hostile" in k]  # the host never ran the plugin's code
    assert boxed["loss_history"] == plain["loss_history"] and boxed["steps"] == 8
    history, saved = losses(tmp_path / "boxed")
    states = list(saved["callbacks"].values())  # by state key
    assert any(state.get("seen") == pytest.approx(history) for state in states)  # the plugin's state crossed back


def test_an_attack_in_a_sandboxed_callback_stops_the_run_with_a_checkpoint(tmp_path):
    from apt_plugin_errors import ErrorLogger

    marker = tmp_path / "escaped"
    callbacks = (f'\n[[callbacks]]\nuse = "hostile"\nattack = "system"\nat_step = 3\ntarget = "{marker}"\n'
                 'sandbox = true\n[[callbacks]]\nuse = "error-log"\n')
    result = cli("run", str(pipeline(tmp_path, callbacks)), "--no-progress", "--plugins-dir", PLUGINS)
    assert result.returncode == 1, result.stdout + result.stderr
    assert not marker.exists()
    assert "plugin 'hostile'" in result.stderr and "os.system was refused" in result.stderr
    assert "training stopped at step 3" in result.stderr
    assert (tmp_path / "run" / "checkpoints" / "apt_model_epoch0_step3.pt").exists()
    rows = ErrorLogger(tmp_path / "run" / "errors.db").search("os.system was refused")
    assert rows and rows[-1]["plugin"] == "hostile" and rows[-1]["global_step"] == 3
    # the sandbox itself says what it denied, by name, in the log and the error log
    denied = ErrorLogger(tmp_path / "run" / "errors.db").search("was denied: a sandboxed plugin cannot start")
    assert denied and denied[-1]["plugin"] == "hostile" and "os.system(" in denied[-1]["message"]
    assert "warning: plugin 'hostile' (hostile): os.system(" in result.stdout + result.stderr


@pytest.mark.parametrize("attack, words", [("exit", "called sys.exit(3)"), ("segfault", "crashed with SIGSEGV")])
def test_a_plugin_that_exits_or_segfaults_in_a_hook_is_restarted_and_the_run_goes_on(tmp_path, attack, words):
    callbacks = (f'\n[[callbacks]]\nuse = "hostile"\nattack = "{attack}"\nat_step = 2\n'
                 '[callbacks.limits]\non_failure = "continue"\n')
    result = cli("run", str(pipeline(tmp_path, callbacks)), "--no-progress", "--plugins-dir", PLUGINS)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert words in output and "plugin 'hostile'" in output and "the run goes on" in output
    assert (tmp_path / "run" / "checkpoints" / "apt_model_epoch0_step8.pt").exists()
    # the callback really ran after the failure: the (restarted) worker saw every later step's loss
    history, saved = losses(tmp_path / "run")
    seen = next(state["seen"] for key, state in saved["callbacks"].items() if key.startswith("hostile"))
    assert seen[-6:] == pytest.approx(history[2:8], rel=1e-6)


def test_sandbox_settings_are_checked_before_anything_runs(tmp_path):
    bad_key = pipeline(tmp_path, '\n[[callbacks]]\nuse = "hostile"\nattack = "none"\n[callbacks.limits]\ncpu = 3\n',
                       name="bad")
    result = cli("run", str(bad_key), "--plugins-dir", PLUGINS)
    assert result.returncode == 2 and "callbacks[0]" in result.stderr and "cpu" in result.stderr
    assert not (tmp_path / "bad").exists()
    typo = pipeline(tmp_path, '\n[[callbacks]]\nuse = "hostile"\nattack = "none"\n[callbacks.limits]\nnetwrok = true\n',
                    name="typo")
    result = cli("run", str(typo), "--plugins-dir", PLUGINS)
    assert result.returncode == 2 and "limits.netwrok: unknown key (did you mean 'network'?)" in result.stderr
    model = pipeline(tmp_path, "", name="model").read_text().replace('use = "apt-lm"', 'use = "apt-lm"\nsandbox = true')
    (tmp_path / "model.toml").write_text(model)
    result = cli("run", str(tmp_path / "model.toml"))
    assert result.returncode == 2 and "only callbacks can run in the sandbox" in result.stderr


def test_a_required_layer_that_cannot_be_applied_is_fatal(tmp_path):
    callbacks = ('\n[[callbacks]]\nuse = "hostile"\nattack = "none"\n[callbacks.limits]\nnetwork = true\n'
                 'require = ["namespaces"]\n')
    result = cli("run", str(pipeline(tmp_path, callbacks)), "--no-progress", "--plugins-dir", PLUGINS)
    assert result.returncode == 2
    assert "required sandbox layer unavailable: namespaces" in result.stderr
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


def test_doctor_sandbox_lists_every_layer():
    result = cli("plugins", "doctor", "--sandbox")
    assert result.returncode == 0, result.stderr
    for layer in ("rlimits", "namespaces", "no_new_privs", "capabilities", "landlock", "seccomp"):
        assert f"\n{layer} " in "\n" + result.stdout
    assert "inet socket denied, fork denied" in result.stdout


def test_sandbox_all_runs_every_callback_in_a_worker(tmp_path):
    callbacks = '\n[[callbacks]]\nuse = "hostile"\nattack = "raise"\nat_step = 2\n'
    result = cli("run", str(pipeline(tmp_path, callbacks)), "--no-progress", "--plugins-dir", PLUGINS, "--sandbox-all")
    assert result.returncode == 1 and "hostile plugin gives up" in result.stderr and "(sandboxed)" in result.stderr


def test_what_a_sandboxed_callback_prints_is_shown_while_the_run_goes_on(tmp_path):
    # the worker runs `python -I`, which ignores PYTHONUNBUFFERED: its prints sat in a block buffer and
    # were lost when the worker was closed (docs/tutorials/sandbox.md showed nothing)
    plugins = one_file_callback(tmp_path, "talker", "print('hello from the sandbox')")
    result = cli("run", str(pipeline(tmp_path, '\n[[callbacks]]\nuse = "talker"\nsandbox = true\n')), "--no-progress",
                 "--plugins-dir", str(plugins))
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "[talker] hello from the sandbox" in output, output


def test_a_sandboxed_callback_denied_the_run_folder_is_told_which_setting_allows_it(tmp_path):
    # the SDK's template callback writes a CSV into the run folder: sandboxed without allow_paths it stopped
    # with a bare "PermissionError: [Errno 13] Permission denied: '.../loss.csv'"
    plugins = one_file_callback(tmp_path, "writer", "(trainer.run_dir / 'out.csv').write_text('step,loss')")
    boxed = '\n[[callbacks]]\nuse = "writer"\nsandbox = true\n'
    result = cli("run", str(pipeline(tmp_path, boxed)), "--no-progress", "--plugins-dir", str(plugins))
    assert result.returncode == 1 and "PermissionError" in result.stderr, result.stderr
    assert 'allow_paths = ["${run_dir}"] lets it write the run folder' in result.stderr
    allowed = boxed + '[callbacks.limits]\nallow_paths = ["${run_dir}"]\n'
    result = cli("run", str(pipeline(tmp_path, allowed, name="allowed")), "--no-progress",
                 "--plugins-dir", str(plugins))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "allowed" / "out.csv").read_text() == "step,loss"


def test_sandbox_all_lets_callbacks_write_the_run_folder_and_closes_every_worker(tmp_path):
    # --sandbox-all gave the error log no write access ("failed to start: unable to open database file"), and a
    # worker whose callback has no on_fit_end (the error log's) was never closed: killed with the run, it left
    # its SQLite WAL unmerged beside errors.db
    callbacks = '\n[[callbacks]]\nuse = "tensorboard"\nevery = 1\n[[callbacks]]\nuse = "error-log"\n'
    result = cli("run", str(pipeline(tmp_path, callbacks)), "--no-progress", "--sandbox-all")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*")) and (run_dir / "errors.db").exists()
    assert not list(run_dir.glob("errors.db-*")), sorted(p.name for p in run_dir.iterdir())


@pytest.mark.parametrize("hooks, message", [
    # the hook is register_callbacks: the worker looked it up by name and said only that it was missing
    ("@hookimpl\ndef register_callback(register):\n    register('checked', lambda options, context: Plugin())\n",
     "defines register_callback, which is not a hook (did you mean register_callbacks?)"),
    # a name the manifest does not declare: the worker registered it without a word
    ("@hookimpl\ndef register_callbacks(register):\n    register('checked', lambda options, context: Plugin())\n"
     "    register('undeclared', lambda options, context: Plugin())\n",
     "registers callback 'undeclared', which its manifest does not declare"),
])
def test_a_sandboxed_plugin_is_refused_by_the_same_checks_with_the_same_message(tmp_path, monkeypatch, hooks,
                                                                                  message):
    from apt_kernel.errors import PluginLoadError

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "checked.py").write_text(
        'APT_MANIFEST = {"kernel_api": "^1.0", "version": "1.0.0", "provides": {"callback": {"checked": {}}}}\n'
        "from apt_sdk import Callback, hookimpl\n\nclass Plugin(Callback):\n    pass\n\n" + hooks)
    refusals = []
    for sandbox in ("false", "true"):
        monkeypatch.setenv("APT_KERNEL_HOME", str(tmp_path / f"home-{sandbox}"))  # no remembered failure
        path = pipeline(tmp_path, f'\n[[callbacks]]\nuse = "checked"\nsandbox = {sandbox}\n', name=f"sandbox-{sandbox}")
        with pytest.raises(PluginLoadError) as refused:
            run_pipeline(path, plugins_dirs=(str(plugins),))
        refusals.append(str(refused.value))
    assert message in refusals[0] and refusals[1] == refusals[0]
