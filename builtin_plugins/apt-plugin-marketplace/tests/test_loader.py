"""PluginLoader: a plugin tried in a running kernel without being installed, and taken out again."""

from __future__ import annotations

import sys

import pytest

from apt_plugin_marketplace.loader import PluginLoader
from apt_sdk import UserError
from conftest import build, make_plugin


def test_plugin_load_unload(tmp_path):
    """The original project's test, adapted only in its import path."""
    loader = PluginLoader()
    plugin_path = make_plugin(tmp_path, "apt-plugin-hello", "1.0.0")
    loader.load_plugin(plugin_path)
    assert "apt-plugin-hello" in loader.loaded_plugins
    loader.unload_plugin("apt-plugin-hello")
    assert "apt-plugin-hello" not in loader.loaded_plugins


@pytest.mark.parametrize("form", ["folder", "wheel"])
def test_everything_a_loaded_plugin_registered_goes_away_on_unload(tmp_path, form):
    source = make_plugin(tmp_path / "src", "apt-plugin-hello", "1.0.0")
    path = source if form == "folder" else build(source, tmp_path / "dist")
    loader = PluginLoader()
    kernel = loader.kernel
    assert loader.load_plugin(path) == "apt-plugin-hello"
    registration = kernel.registry.get("callback", "apt-plugin-hello-hello")
    assert registration is not None and registration.plugin == "apt-plugin-hello"
    assert kernel.pm.has_plugin("apt-plugin-hello") and "apt_plugin_hello.plugin" in sys.modules
    with pytest.raises(UserError, match="already loaded"):
        loader.load_plugin(path)

    loader.unload_plugin("apt-plugin-hello")
    assert kernel.registry.get("callback", "apt-plugin-hello-hello") is None
    assert not kernel.pm.has_plugin("apt-plugin-hello") and "apt-plugin-hello" not in kernel.plugins
    assert not any(m.startswith("apt_plugin_hello") for m in sys.modules)
    assert not any("apt-loaded-" in p or str(source) in p for p in sys.path)
    with pytest.raises(UserError, match="was not loaded"):
        loader.unload_plugin("apt-plugin-hello")
    assert loader.load_plugin(path) == "apt-plugin-hello"  # and it loads again, fresh
    loader.unload_plugin("apt-plugin-hello")


def test_a_plugin_that_fails_to_import_leaves_nothing_behind(tmp_path):
    broken = make_plugin(tmp_path, "apt-plugin-broken", "1.0.0", code="import not_a_module_anywhere\n")
    loader = PluginLoader()
    with pytest.raises(UserError, match="not_a_module_anywhere"):
        loader.load_plugin(broken)
    assert loader.loaded_plugins == [] and "apt-plugin-broken" not in loader.kernel.plugins
    assert not any(m.startswith("apt_plugin_broken") for m in sys.modules) and str(broken) not in sys.path
    with pytest.raises(UserError, match="not a wheel"):
        loader.load_plugin(tmp_path / "nothing-here")
