"""``import apt_plugin_lm`` registers the APT architecture with ``transformers``' Auto classes, so that
``AutoModelForCausalLM.from_pretrained(run/model)`` loads this package's ``APTForCausalLM`` without
``trust_remote_code``, and without importing ``transformers`` (seconds) or ``torch`` until they are used: the
kernel imports this package to run any pipeline that uses it, and ``plugins doctor`` to check it.

Each registration waits for the module of ``transformers`` it registers with: if that is imported already it is
done at once, otherwise when it is first imported (a finder on ``sys.meta_path`` runs it once the module has
executed, as post-import hooks do). A registration that fails is a warning, never a failed import of
``transformers``.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
MODEL_AUTO = "transformers.models.auto.modeling_auto"


def _register_config(auto: ModuleType) -> None:
    from .configuration_apt import APTLMConfig

    auto.AutoConfig.register(APTLMConfig.model_type, APTLMConfig, exist_ok=True)


def _register_model(auto: ModuleType) -> None:
    from .configuration_apt import APTLMConfig
    from .modeling_apt import APTForCausalLM

    auto.AutoModelForCausalLM.register(APTLMConfig, APTForCausalLM, exist_ok=True)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``hooks[name](module)`` once the module ``name`` has executed, then forgets it."""

    def __init__(self, hooks: dict[str, Callable[[ModuleType], None]]) -> None:
        self.hooks = hooks

    def find_spec(self, name, path, target=None):
        if name not in self.hooks:
            return None
        for finder in sys.meta_path:  # the spec the other finders would give, with its loader's exec wrapped
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                _then(spec.loader, self.hooks.pop(name))  # this spec's own loader object
                return spec
        return None


def _then(loader, hook: Callable[[ModuleType], None]) -> None:
    """``loader`` executes its module, then ``hook`` runs on it."""
    execute = loader.exec_module

    def exec_module(module: ModuleType) -> None:
        execute(module)
        _run(hook, module)

    loader.exec_module = exec_module


def _run(hook: Callable[[ModuleType], None] | None, module: ModuleType) -> None:
    if hook is None:
        return
    try:
        hook(module)
    except Exception as exc:  # noqa: BLE001 - transformers must still import; the user learns why APT is absent
        warnings.warn(f"apt_plugin_lm could not register the APT architecture with transformers ({exc}); load "
                      "an exported model with trust_remote_code=True", stacklevel=2)


def register_with_transformers() -> None:
    """Register now what ``transformers`` has loaded, and the rest when it loads it (once per process)."""
    if any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        return
    waiting = {}
    for name, hook in ((CONFIG_AUTO, _register_config), (MODEL_AUTO, _register_model)):
        if name in sys.modules:
            _run(hook, sys.modules[name])
        else:
            waiting[name] = hook
    if waiting:
        sys.meta_path.insert(0, _AfterImport(waiting))
