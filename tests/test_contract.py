"""The contract is enforced: hooks checked at load, callbacks attributed, dependencies declared once and
respected, the kernel independent of the SDK and of any particular trainer."""

import ast
import json
import tomllib
from pathlib import Path

import pytest
import torch

from apt_sdk import hookimpl
from apt_sdk.testing import IsolatedKernel
from conftest import REPO, cli, make_plugin, with_site

PLUGINS = sorted(p for p in (REPO / "builtin_plugins").iterdir() if (p / "pyproject.toml").exists())


def _manifest(kind: str, *names: str) -> dict:
    return {"kernel_api": "^1.0", "provides": {kind: {n: {"allow_extra_options": True} for n in names}}}


def _plugin(**functions) -> object:
    """A plugin object holding the given hook functions (pluggy needs plugins to be hashable)."""
    return type("Plugin", (), {name: staticmethod(f) for name, f in functions.items()})()


# -- registration is checked -----------------------------------------------------------------------
def test_a_misspelled_hook_fails_the_plugin_naming_the_closest_hook():
    @hookimpl
    def register_model(register):  # the hook is register_models
        register("m", lambda options, context: None)

    kernel = IsolatedKernel(autoload=False)
    kernel.add(_plugin(register_model=register_model), _manifest("model", "m"), name="typo-plugin")
    info = kernel.plugins["typo-plugin"]
    assert info.status == "failed"
    assert "plugin 'typo-plugin' defines register_model, which is not a hook (did you mean register_models?)" \
        in info.reason
    assert kernel.registry.get("model", "m") is None


def test_an_unmarked_hook_is_reported_not_silently_skipped():
    def register_models(register):  # no @hookimpl: pluggy would never call it
        register("m", lambda options, context: None)

    kernel = IsolatedKernel(autoload=False)
    kernel.add(_plugin(register_models=register_models), _manifest("model", "m"), name="unmarked")
    assert kernel.plugins["unmarked"].status == "failed"
    assert "register_models is not marked with @hookimpl" in kernel.plugins["unmarked"].reason


def test_a_wrong_hook_argument_is_a_clear_error():
    @hookimpl
    def register_models(registr):
        registr("m", lambda options, context: None)

    kernel = IsolatedKernel(autoload=False)
    kernel.add(_plugin(register_models=register_models), _manifest("model", "m"), name="bad-arg")
    reason = kernel.plugins["bad-arg"].reason
    assert kernel.plugins["bad-arg"].status == "failed"
    assert reason == ("plugin 'bad-arg': its register_models takes {'registr'}, which the hook does not pass "
                      "(it passes: register)")


def test_a_misspelled_hook_in_an_installed_plugin_exits_2_and_doctor_fails(tmp_path, tiny_pipeline):
    site = tmp_path / "site"
    make_plugin(site, "typo-plugin", """
        from apt_sdk import Callback, hookimpl

        @hookimpl
        def register_callback(register):
            register("typo-cb", lambda options, context: Callback())
    """, 'kernel_api = "^1.0"\n[provides.callback.typo-cb]\nsummary = "x"\n')
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "typo-cb"\n')
    run = cli("run", str(tiny_pipeline), "--no-progress", env_extra=with_site(site))
    assert run.returncode == 2, run.stderr
    assert "register_callback, which is not a hook (did you mean register_callbacks?)" in run.stderr
    assert "Traceback" not in run.stderr
    doctor = cli("plugins", "doctor", "--json", env_extra=with_site(site))
    assert doctor.returncode == 1
    row = next(r for r in json.loads(doctor.stdout) if r["name"] == "typo-plugin")
    assert row["status"] == "failed" and "did you mean register_callbacks" in row["reason"]


def test_doctor_fails_a_plugin_that_declares_a_component_it_never_registers(tmp_path):
    site = tmp_path / "site"
    make_plugin(site, "lazy-plugin", """
        from apt_sdk import Callback, hookimpl

        @hookimpl
        def register_callbacks(register):
            register("one", lambda options, context: Callback())
    """, 'kernel_api = "^1.0"\n[provides.callback.one]\n[provides.callback.two]\n')
    doctor = cli("plugins", "doctor", "--json", env_extra=with_site(site))
    assert doctor.returncode == 1
    row = next(r for r in json.loads(doctor.stdout) if r["name"] == "lazy-plugin")
    assert row["status"] == "failed"
    assert row["reason"] == "declares callback 'two' in its manifest but did not register it"


# -- what a factory returns is checked where it is built -----------------------------------------------
class _NoForward:
    def parameters(self):
        return iter(())


class _NoBatches:  # a data module without train_batches
    def steps_per_epoch(self, epoch):
        return 1

    def val_batches(self):
        return []


class _NoDim:  # an encoder without output_dim
    def encode(self, inputs):
        return inputs


@pytest.mark.parametrize(("kind", "table", "component", "missing"), [
    ("model", "model", _NoForward(), "lacks __call__ (it is not callable), state_dict, load_state_dict"),
    ("data", "data", _NoBatches(), "lacks train_batches; the data protocol, apt_sdk.DataModule, declares: "
                                   "steps_per_epoch, train_batches, val_batches"),
    ("loss", "loss", "sum", "an object of type str, which lacks __call__ (it is not callable)"),
    ("trainer", "trainer", object(), "lacks fit"),
    ("encoder", "encoders.image", _NoDim(), "lacks modality, output_dim, preprocessor, frozen, config, freeze, "
                                            "from_config; the encoder protocol, apt_sdk.Encoder, declares: modality, "
                                            "output_dim, preprocessor, frozen, config, encode, freeze, from_config"),
])
def test_a_factory_returning_the_wrong_shape_is_refused_at_build_naming_plugin_component_and_member(
        tiny_pipeline, kind, table, component, missing):
    from apt_sdk import PluginError, run_pipeline

    kernel = IsolatedKernel()
    hook = {"data": "register_data", "encoder": "register_encoders"}.get(kind, f"register_{kind}es" if kind == "loss"
                                                                       else f"register_{kind}s")
    kernel.add(_plugin(**{hook: hookimpl(lambda register: register("odd", lambda o, c: component))}),
               _manifest(kind, "odd"), name="odd-plugin")
    text = tiny_pipeline.read_text()
    text = text.replace(f"[{table}]\nuse = ", f"[{table}]\nuse = \"odd\"\nunused = ") if kind != "encoder" else \
        text + '\n[encoders.image]\nuse = "odd"\n'
    with pytest.raises(PluginError) as refused:
        run_pipeline(text, kernel=kernel)
    assert str(refused.value).startswith(f"plugin 'odd-plugin' failed in {kind} factory 'odd': TypeError: it returned ")
    assert missing in str(refused.value)
    assert not (tiny_pipeline.parent / "run" / "checkpoints").exists()  # refused before any training


# -- callbacks: one dispatcher, attributed errors ----------------------------------------------------
def test_a_callback_exception_names_its_plugin_and_event_on_the_command_line(tiny_pipeline):
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "boom"\nat_step = 2\n')
    run = cli("run", str(tiny_pipeline), "--no-progress", "--plugins-dir", str(REPO / "tests" / "plugins"))
    assert run.returncode == 1
    assert "plugin 'boom' failed in callback boom.on_train_batch_end: RuntimeError: boom at step 2" in run.stderr


def test_the_event_list_exists_once():
    from apt_kernel import callbacks

    sources = [p for p in [*(REPO / "apt_kernel").rglob("*.py"), *(REPO / "sdk").rglob("*.py")]
               if p.name != "callbacks.py"]
    for path in sources:
        text = path.read_text()
        assert not ('"on_fit_start"' in text and '"on_epoch_end"' in text), f"{path} lists the events again"
    assert callbacks.EVENTS[0] == "on_fit_start" and "on_exception" in callbacks.EVENTS


def test_every_builtin_callback_runs_sandboxed(tiny_pipeline, tmp_path):
    """Each builtin callback, sandboxed, trains to the end using only the TrainerState a worker gets."""
    names = ["text-samples", "early-stopping", "error-log", "gradient-monitor", "tensorboard", "optuna-pruning",
             "multimodal-accuracy"]
    manifests = {}
    for plugin in PLUGINS:
        for path in plugin.rglob("apt-plugin.toml"):
            manifests.update(tomllib.loads(path.read_text()).get("provides", {}).get("callback", {}))
    assert set(manifests) == set(names), "a builtin callback is missing from this test"
    extra = {"text-samples": "max_new_tokens = 8", "early-stopping": "patience = 1",
             "tensorboard": "every = 1\nhistogram_every = 0"}
    text = tiny_pipeline.read_text().replace("max_steps = 4", "max_steps = 6\neval_every = 2")
    for name in names:
        text += (f'\n[[callbacks]]\nuse = "{name}"\nsandbox = true\n{extra.get(name, "")}\n'
                 '[callbacks.limits]\nallow_paths = ["${run_dir}"]\n')
    tiny_pipeline.write_text(text)
    run = cli("run", str(tiny_pipeline), "--no-progress")
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert "warning" not in out.lower(), out[-3000:]
    assert "text-samples: a sandboxed callback sees no model" in out
    assert "gradient-monitor: this callback reads the model's gradients" in out
    assert "tensorboard: sandboxed, it sees no model: scalars only" in out
    assert "multimodal-accuracy: a sandboxed callback sees no model or data, so it scores nothing" in out
    run_dir = tmp_path / "run"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "errors.db").exists()
    checkpoint = sorted((run_dir / "checkpoints").glob("*.pt"))[-1]
    saved = torch.load(checkpoint, weights_only=True)["callbacks"]  # by use name and state_key, as in-process
    early = saved["early-stopping:EarlyStopping(monitor='val_loss', mode='min')"]
    assert early["best"] is not None  # it saw validations through the sandbox and kept its state


# -- dependencies are declared once and respected --------------------------------------------------
def _declared(plugin: Path) -> tuple[set[str], set[str]]:
    project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        from packaging.requirements import Requirement

        return {Requirement(r).name.replace("-", "_") for r in requirements}

    extras = {n for group in project.get("optional-dependencies", {}).values() for n in names(group)}
    return names(project.get("dependencies", [])), extras


def _imports(path: Path, whole: bool = False) -> list[tuple[str, bool]]:
    """(top-level module, or the whole dotted name, imported at module level) for every import in a file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name if whole else alias.name.split(".")[0], id(node) in top_level)
                      for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module if whole else node.module.split(".")[0], id(node) in top_level))
    return found


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_a_plugin_imports_only_the_sdk_and_plugins_it_declares(plugin):
    required, extras = _declared(plugin)
    own = plugin.name.replace("-", "_")
    for path in (plugin / own).rglob("*.py"):
        kernel = {name for name, _ in _imports(path, whole=True) if name.split(".")[0] == "apt_kernel"}
        assert kernel <= {"apt_kernel.api"}, \
            f"{path} imports {sorted(kernel)}: plugins use apt_sdk (and a tool that manages plugins apt_kernel.api)"
        for module, at_module_level in _imports(path):
            if module.startswith("apt_plugin_") and module != own:
                allowed = required if at_module_level else required | extras
                assert module.replace("apt_plugin_", "apt_plugin_") in {r for r in allowed}, \
                    f"{path.relative_to(REPO)} imports {module}, which {plugin.name}'s pyproject does not require"


def test_the_kernel_never_imports_the_sdk():
    for path in (REPO / "apt_kernel").rglob("*.py"):
        assert "apt_sdk" not in {module for module, _ in _imports(path)}, path


def test_plugin_requirements_come_from_the_distribution(tmp_path):
    site = tmp_path / "site"
    make_plugin(site, "base-plugin", "", 'kernel_api = "^1.0"\n[provides.callback.base-cb]\n')
    make_plugin(site, "child-plugin", "", 'kernel_api = "^1.0"\n[provides.callback.child-cb]\n',
                requires=("base-plugin>=1.0", "numpy>=1", 'other-plugin; extra == "x"'))
    make_plugin(site, "drifted-plugin", "", 'kernel_api = "^1.0"\n[requires]\nbase-plugin = "^1.0"\n'
                '[provides.callback.drifted-cb]\n')
    rows = {r["name"]: r for r in json.loads(cli("plugins", "list", "--json", env_extra=with_site(site)).stdout)}
    assert rows["child-plugin"]["requires"] == {"base-plugin": ">=1.0"}
    assert rows["drifted-plugin"]["status"] == "failed"
    reason = rows["drifted-plugin"]["reason"]
    assert "[requires] lists ['base-plugin'] but its distribution requires no plugin" in reason
    assert rows["apt-plugin-errors"]["requires"] == {"apt-plugin-trainer": "<0.2,>=0.1"}
