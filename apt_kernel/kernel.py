"""The plugin manager: guarded imports, registration, and lifecycle hook calls."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import kinds
from .discovery import FAILED, INSTALLED, PluginInfo, StatusStore, discover, kernel_home, strict_from_env
from .errors import KernelError, PluginLoadError
from .registry import Registration, Registry

if TYPE_CHECKING:
    import pluggy


class PluginHookError(KernelError):
    """A plugin's hook raised; names the plugin and hook so the error is attributable."""

    def __init__(self, plugin: str, hook: str, exc: BaseException) -> None:
        self.plugin, self.hook, self.original = plugin, hook, exc
        super().__init__(f"plugin {plugin!r} failed in hook {hook}: {type(exc).__name__}: {exc}")


def describe_failure(exc: BaseException) -> str:
    """One line: what went wrong at import and where in the plugin's code."""
    if isinstance(exc, SystemExit):
        what = f"called sys.exit({exc.code!r}) while importing"
    elif isinstance(exc, SyntaxError):
        what = f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    else:
        what = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if "importlib" not in f.filename and f.filename != __file__]
    if inside and not isinstance(exc, SyntaxError):
        what += f" (at {inside[-1].filename}:{inside[-1].lineno})"
    return what


class Kernel:
    """Discovers plugins, imports the ones asked for, and keeps the component registry."""

    def __init__(self, plugins_dirs: Iterable[str] = (), strict: bool | None = None,
                 env: dict | None = None, autoload: bool = True) -> None:
        self.env = dict(os.environ if env is None else env)
        self.strict = strict_from_env(self.env) if strict is None else strict
        self.plugins: dict[str, PluginInfo] = (
            {info.name: info for info in discover(tuple(plugins_dirs), self.env)} if autoload else {}
        )
        self.store = StatusStore(kernel_home(self.env) / "plugin-status.json")
        self._pm: pluggy.PluginManager | None = None
        self.registry = Registry()
        self.loaded: set[str] = set()
        self.profiler = None  # a PluginProfiler while `run --profile`; None costs nothing

    @property
    def pm(self):
        """The pluggy manager, made on first use: planning a pipeline never needs it."""
        if self._pm is None:
            import pluggy

            from . import hookspecs

            self._pm = pluggy.PluginManager("apt_kernel")
            self._pm.add_hookspecs(hookspecs)
        return self._pm

    # -- loading -----------------------------------------------------------------------------------
    def load(self, names: Iterable[str]) -> None:
        """Import and register the named plugins; a failure marks the plugin failed (or raises if strict)."""
        for name in names:
            info = self.plugins[name]
            if name in self.loaded or info.status != INSTALLED:
                continue
            try:
                module = self._import(info)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit at import must not end the kernel
                self._fail(info, describe_failure(exc))
                continue
            self.add_plugin(module, info)

    def load_all(self) -> None:
        self.load([name for name, info in self.plugins.items() if info.status == INSTALLED])

    def _import(self, info: PluginInfo) -> Any:
        if info.path:
            spec = importlib.util.spec_from_file_location(f"apt_local_plugins.{info.name}", info.path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return module
        module_name, _, attr = info.module.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module

    def _fail(self, info: PluginInfo, reason: str) -> None:
        info.status, info.reason = FAILED, reason
        self.store.record(info, FAILED, reason)
        if self._pm is not None and self.pm.has_plugin(info.name):
            self.pm.unregister(name=info.name)
        self.registry.remove_plugin(info.name)
        self.loaded.discard(info.name)
        if self.strict:
            raise PluginLoadError(f"plugin {info.name!r} failed to load: {reason}")

    def add_plugin(self, obj: Any, info: PluginInfo) -> None:
        """Register an imported plugin object (module or instance) and collect its components."""
        self.plugins.setdefault(info.name, info)
        self.pm.register(obj, name=info.name)
        try:
            for kind, hook_name in kinds.REGISTRATION_HOOKS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin_name == info.name:
                        impl.function(register=self._registrar(info, kind))
        except KernelError:
            self.pm.unregister(name=info.name)
            self.registry.remove_plugin(info.name)
            raise
        except Exception as exc:  # a plugin bug in its registration hook
            self._fail(info, f"registration failed: {describe_failure(exc)}")
            return
        self.loaded.add(info.name)
        if self.store.last_failure(info):
            self.store.record(info, INSTALLED, None)

    def _registrar(self, info: PluginInfo, kind: str) -> Callable[..., None]:
        declared = set(info.manifest.provides.get(kind, {})) if info.manifest else None

        def register(name: str, factory: Callable[[dict, Any], Any], summary: str = "") -> None:
            if declared is not None and name not in declared:
                raise PluginLoadError(
                    f"plugin {info.name!r} registers {kind} {name!r}, which its manifest does not declare "
                    f"(add it under [provides.{kind}.{name}] in apt-plugin.toml)"
                )
            if not callable(factory):
                raise PluginLoadError(f"plugin {info.name!r}: factory for {kind} {name!r} is not callable")
            self.registry.add(Registration(kind, name, factory, info.name, info.distribution, summary))

        return register

    # -- lifecycle hooks ---------------------------------------------------------------------------
    def call_hook(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every loaded plugin's implementation of a lifecycle hook, attributing any failure."""
        results = []
        if self._pm is None:
            return []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            function = impl.function
            if self.profiler is not None:
                function = self.profiler.timed(impl.plugin_name, f"hook {hook_name}", function)
            try:
                results.append(function(**{arg: kwargs[arg] for arg in impl.argnames}))
            except Exception as exc:
                raise PluginHookError(impl.plugin_name, hook_name, exc) from exc
        return results
