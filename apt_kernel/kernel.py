"""The plugin manager: guarded imports, registration, and lifecycle hook calls."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import kinds
from .discovery import FAILED, INSTALLED, PluginInfo, StatusStore, discover, kernel_home, strict_from_env
from .errors import KernelError, PluginError, PluginLoadError, closest
from .registry import Registration, Registry

if TYPE_CHECKING:
    import pluggy


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
    """Discovers plugins, imports the ones asked for, and keeps the component registry.

    Every plugin is registered by ``add_plugin``, in this process or in a sandbox worker: its hooks are
    checked, then its registration hooks called through pluggy, and each name it registers checked
    against its manifest. ``remember=False`` keeps load outcomes out of ``$APT_KERNEL_HOME`` (a sandbox
    worker may not write there)."""

    def __init__(self, plugins_dirs: Iterable[str] = (), strict: bool | None = None,
                 env: dict | None = None, autoload: bool = True, remember: bool = True) -> None:
        self.env = dict(os.environ if env is None else env)
        self.strict = strict_from_env(self.env) if strict is None else strict
        self.plugins: dict[str, PluginInfo] = (
            {info.name: info for info in discover(tuple(plugins_dirs), self.env)} if autoload else {}
        )
        self.store = StatusStore(kernel_home(self.env) / "plugin-status.json") if remember else None
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
        if self.store is not None:
            self.store.record(info, FAILED, reason)
        self.remove_plugin(info.name)
        if self.strict:
            raise PluginLoadError(f"plugin {info.name!r} failed to load: {reason}")

    def add_plugin(self, obj: Any, info: PluginInfo) -> None:
        """Register an imported plugin object (module or instance) and collect its components."""
        self.plugins.setdefault(info.name, info)
        from pluggy import PluginValidationError

        try:
            self._check_hooks(obj, info)
            self.pm.register(obj, name=info.name)
        except PluginLoadError as exc:
            self._fail(info, str(exc))
            return
        except PluginValidationError as exc:  # what pluggy refuses beyond the checks above
            self._fail(info, f"plugin {info.name!r}: {exc}")
            return
        try:
            for kind, hook_name in kinds.REGISTRATION_HOOKS.items():
                caller = self._caller(hook_name, info.name)
                if caller is not None:
                    caller(register=self._registrar(info, kind))
        except KernelError:
            self.remove_plugin(info.name)
            raise
        except Exception as exc:  # a plugin bug in its registration hook
            self._fail(info, f"registration failed: {describe_failure(exc)}")
            return
        self.loaded.add(info.name)
        if self.store is not None and self.store.last_failure(info):
            self.store.record(info, INSTALLED, None)

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin's hooks and components (its modules stay imported)."""
        if self._pm is not None and self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self.registry.remove_plugin(name)
        self.loaded.discard(name)

    def _check_hooks(self, obj: Any, info: PluginInfo) -> None:
        """A function named like a hook that is none, a hook pluggy would never call (no @hookimpl), or a
        hook argument the spec does not pass: each is a mistake to report now, with the plugin's name,
        not as a missing component later."""
        specs = _hook_specs()
        for attr in dir(obj):
            value = getattr(obj, attr, None) if not attr.startswith("_") else None
            if not callable(value):
                continue
            marked = hasattr(value, "apt_kernel_impl")
            if attr in specs and marked:
                wrong = set(_argnames(value)) - set(_argnames(specs[attr]))
                if wrong:
                    raise PluginLoadError(
                        f"plugin {info.name!r}: its {attr} takes {{{', '.join(map(repr, sorted(wrong)))}}}, which "
                        f"the hook does not pass (it passes: {', '.join(_argnames(specs[attr]))})")
            elif attr in specs:
                raise PluginLoadError(f"plugin {info.name!r}: {attr} is not marked with @hookimpl "
                                      f"(from apt_sdk import hookimpl), so the kernel would never call it")
            elif marked or attr.startswith("register_"):
                hint = closest(attr, list(specs))
                raise PluginLoadError(f"plugin {info.name!r} defines {attr}, which is not a hook"
                                      + (f" (did you mean {hint}?)" if hint else "")
                                      + f"; hooks: {', '.join(specs)}")

    def registration(self, kind: str, name: str, plugin: str) -> Registration:
        """The component ``plugin`` registered as ``kind`` ``name``; a ``PluginLoadError`` if the plugin declares
        it in its manifest but did not register it."""
        registration = self.registry.get(kind, name)
        if registration is None:
            raise PluginLoadError(f"plugin {plugin!r} declares {kind} {name!r} in its manifest but did not register it")
        return registration

    def unregistered(self, name: str) -> list[str]:
        """Components a loaded plugin declares in its manifest but did not register ("callback 'x'")."""
        manifest = self.plugins[name].manifest
        return [f"{kind} {component!r}" for kind, declared in (manifest.provides if manifest else {}).items()
                for component in declared if (reg := self.registry.get(kind, component)) is None
                or reg.plugin != name]

    def _caller(self, hook_name: str, plugin: str):
        """Pluggy's hook caller restricted to one plugin (None if it does not implement the hook)."""
        hook = getattr(self.pm.hook, hook_name)
        if not any(impl.plugin_name == plugin for impl in hook.get_hookimpls()):
            return None
        others = [p for name, p in self.pm.list_name_plugin() if name != plugin]
        return self.pm.subset_hook_caller(hook_name, remove_plugins=others)

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
        """Call every loaded plugin's implementation of a lifecycle hook through pluggy, one plugin at a
        time so a failure and its time are attributed to the plugin."""
        if self._pm is None:
            return []
        results = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            caller = self._caller(hook_name, impl.plugin_name)
            started = time.perf_counter()
            try:
                results.extend(caller(**kwargs))
            except Exception as exc:
                raise PluginError(impl.plugin_name, f"hook {hook_name}", exc) from exc
            finally:
                if self.profiler is not None:
                    self.profiler.record(impl.plugin_name, f"hook {hook_name}", time.perf_counter() - started)
        return results


@functools.cache
def _hook_specs() -> dict[str, Callable]:
    from . import hookspecs

    return {name: f for name, f in vars(hookspecs).items() if hasattr(f, "apt_kernel_spec")}


def _argnames(function: Callable) -> list[str]:
    """The arguments pluggy passes by name: those without defaults (``self`` is bound already)."""
    return [p.name for p in inspect.signature(function).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
