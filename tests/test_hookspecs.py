"""Every hookspec is documented and reaches plugins; registration, seeding and lifecycle hooks work."""

import inspect
import json
import types

import pytest

from apt_kernel import hookspecs
from apt_kernel.errors import DuplicateComponentError, PluginLoadError
from apt_sdk import Callback, hookimpl

SPECS = [name for name, f in vars(hookspecs).items() if callable(f) and hasattr(f, "apt_kernel_spec")]


def test_every_hookspec_is_typed_and_documents_each_parameter():
    assert set(SPECS) >= set(hookspecs.REGISTRATION_HOOKS.values()) | {
        "seed_everything", "pipeline_start", "pipeline_end", "pipeline_error"}
    for name in SPECS:
        spec = getattr(hookspecs, name)
        doc = inspect.getdoc(spec)
        assert doc, name
        for parameter in inspect.signature(spec).parameters.values():
            assert f":param {parameter.name}:" in doc, (name, parameter.name)
            assert parameter.annotation is not inspect.Parameter.empty, (name, parameter.name)


def _manifest(**provides):
    return {"kernel_api": "^1.0", "provides": {k: {n: {"allow_extra_options": True} for n in v}
                                                  for k, v in provides.items()}}


@pytest.mark.parametrize(("kind", "hook"), list(hookspecs.REGISTRATION_HOOKS.items()))
def test_each_registration_hook_registers_its_kind(apt_kernel, kind, hook):
    def impl(register):
        register("thing", lambda options, context: ("built", options), summary="a thing")

    plugin = types.SimpleNamespace(**{hook: hookimpl(impl)})
    apt_kernel.add(plugin, _manifest(**{kind: ["thing"]}), name="p")
    registration = apt_kernel.registry.get(kind, "thing")
    assert registration.plugin == "p" and registration.summary == "a thing"
    assert registration.factory({"x": 1}, None) == ("built", {"x": 1})


def test_registering_an_undeclared_name_is_refused(apt_kernel):
    class Plugin:
        @hookimpl
        def register_models(self, register):
            register("secret-model", lambda o, c: None)

    with pytest.raises(PluginLoadError, match="does not declare"):
        apt_kernel.add(Plugin(), _manifest(model=["other"]), name="p")
    assert apt_kernel.registry.get("model", "secret-model") is None


def test_two_plugins_registering_one_name_names_both(apt_kernel):
    class A:
        @hookimpl
        def register_models(self, register):
            register("gpt", lambda o, c: None)

    apt_kernel.add(A(), _manifest(model=["gpt"]), name="apt-plugin-first")
    with pytest.raises(DuplicateComponentError) as err:
        apt_kernel.add(A(), _manifest(model=["gpt"]), name="apt-plugin-second")
    assert str(err.value) == ("model 'gpt' is provided by two plugins: apt-plugin-first and apt-plugin-second; "
                              "uninstall one, or disable it with APT_DISABLE_PLUGINS=apt-plugin-second")


class Recorder:
    """A plugin implementing every lifecycle hook; records calls and checks arguments are plain data."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def seed_everything(self, seed):
        self.calls.append(("seed_everything", seed))

    @hookimpl
    def pipeline_start(self, pipeline, run_dir):
        json.dumps([pipeline, run_dir])
        self.calls.append(("pipeline_start", pipeline["pipeline"]["name"]))

    @hookimpl
    def pipeline_end(self, pipeline, run_dir, result):
        self.calls.append(("pipeline_end", result["steps"]))

    @hookimpl
    def pipeline_error(self, pipeline, run_dir, error):
        json.dumps(error)
        self.calls.append(("pipeline_error", error["type"], error["plugin"]))


def test_lifecycle_hooks_are_called_in_order(tiny_pipeline, tmp_path):
    from apt_kernel.runner import run_pipeline
    from apt_sdk.testing import IsolatedKernel

    kernel = IsolatedKernel()
    recorder = Recorder()
    kernel.add(recorder, {"kernel_api": "^1.0"}, name="recorder")
    run_pipeline(tiny_pipeline, kernel=kernel)
    assert recorder.calls == [("seed_everything", 3), ("pipeline_start", "tiny"), ("pipeline_end", 4)]


def test_pipeline_error_hook_gets_the_failing_plugin(tiny_pipeline):
    from apt_kernel.errors import PluginError
    from apt_kernel.runner import run_pipeline
    from apt_sdk.testing import IsolatedKernel

    class Boom(Callback):
        def on_fit_start(self, trainer):
            raise RuntimeError("boom")

    class BoomPlugin:
        @hookimpl
        def register_callbacks(self, register):
            register("boom", lambda options, context: Boom())

    kernel = IsolatedKernel()
    recorder = Recorder()
    kernel.add(recorder, {"kernel_api": "^1.0"}, name="recorder")
    kernel.add(BoomPlugin(), _manifest(callback=["boom"]), name="boom-plugin")
    text = tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "boom"\n'
    with pytest.raises(PluginError, match=r"plugin 'boom-plugin' failed in callback boom\.on_fit_start: "
                                          "RuntimeError: boom") as raised:
        run_pipeline(text, kernel=kernel)
    assert isinstance(raised.value.__cause__, RuntimeError) and raised.value.event == "on_fit_start"
    assert recorder.calls[-1] == ("pipeline_error", "PluginError", "boom-plugin")

    class BadFactory:
        @hookimpl
        def register_callbacks(self, register):
            register("bad", lambda options, context: 1 / 0)

    kernel.add(BadFactory(), _manifest(callback=["bad"]), name="bad-factory")
    with pytest.raises(PluginError, match="plugin 'bad-factory' failed in callback factory 'bad': ZeroDivisionError"):
        run_pipeline(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "bad"\n', kernel=kernel)
    assert recorder.calls[-1] == ("pipeline_error", "PluginError", "bad-factory")


def test_hook_failure_is_attributed(apt_kernel):
    class Faulty:
        @hookimpl
        def pipeline_start(self, pipeline, run_dir):
            raise KeyError("oops")

    from apt_kernel.errors import PluginError

    apt_kernel.add(Faulty(), {"kernel_api": "^1.0"}, name="faulty")
    with pytest.raises(PluginError, match="plugin 'faulty' failed in hook pipeline_start: KeyError"):
        apt_kernel.call_hook("pipeline_start", pipeline={}, run_dir="x")


@pytest.mark.parametrize(("manifest", "message"), [
    ({}, "kernel_api is required"),
    ({"kernel_api": "^x"}, "kernel_api: invalid version range"),
    ({"kernel_api": "^1", "provides": {"widget": {}}}, "provides.widget: unknown kind"),
    ({"kernel_api": "^1", "provides": {"model": {"m": {"options": {"o": {"type": "complex"}}}}}},
     "provides.model.m.options.o.type: 'complex' is not one of"),
    ({"kernel_api": "^1", "provides": {"model": {"m": {"sumary": "typo"}}}}, "unknown key 'sumary'"),
    ({"kernel_api": "^1", "requires": {"other": 3}}, "requires.other: expected a version range string"),
    ({"kernel_api": "^1", "colour": "blue"}, "unknown key 'colour'"),
    ({"kernel_api": "^1", "provides": {"model": {"m": {"options": {"o": {"aliases": "lr"}}}}}},
     "provides.model.m.options.o.aliases: expected a list"),
])
def test_invalid_manifests_name_what_is_wrong(manifest, message):
    from apt_kernel.manifest import ManifestError, parse_manifest

    with pytest.raises(ManifestError, match="invalid manifest m.toml: " if manifest else "m.toml") as err:
        parse_manifest(manifest, "m.toml")
    assert message in str(err.value)
