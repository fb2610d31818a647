"""``apt-kernel new-plugin NAME``: write an installable plugin package from ``plugin_template/``."""

from __future__ import annotations

import keyword
from importlib.resources import files
from pathlib import Path
from string import Template

from packaging.utils import canonicalize_name

from . import KERNEL_API_VERSION
from .errors import UserError

SDK_FOR_TEMPLATE = "0.1.3"  # the oldest apt-kernel-sdk the template's files work with (tests/conftest.py)


def create_plugin(name: str, directory: str | Path = ".") -> Path:
    dist = canonicalize_name(name)
    module = dist.replace("-", "_")
    if not module.isidentifier() or keyword.iskeyword(module) or dist != name.lower():
        raise UserError(f"plugin name {name!r}: use letters, digits and dashes, starting with a letter "
                        f"(e.g. my-callback)")
    _refuse_shadowing(dist, module)
    target = Path(directory) / dist
    if target.exists():
        raise UserError(f"{target} already exists; choose another name or --dir")
    major, minor = KERNEL_API_VERSION.split(".")[:2]
    values = {"name": dist, "module": module, "kernel_api": f"^{major}.{minor}",
              "sdk_range": f">={SDK_FOR_TEMPLATE},<{int(major) + 1}", "title": dist.replace("-", " ").capitalize()}
    template_root = files("apt_kernel") / "plugin_template"
    for source in _walk(template_root):
        relative = str(source).removeprefix(str(template_root)).lstrip("/").replace("__module__", module)
        relative = relative.removesuffix(".tmpl")
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(Template(source.read_text(encoding="utf-8")).substitute(values), encoding="utf-8")
    return target


def _refuse_shadowing(dist: str, module: str) -> None:
    """``pip install -e`` of a package named like an installed one replaces it (a distribution) or hides
    it (a module: ``import json`` would import the plugin)."""
    import importlib.util
    import sys
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        installed = distribution(dist)
    except PackageNotFoundError:
        installed = None
    if installed is not None:
        raise UserError(f"plugin name {dist!r}: a distribution of that name is installed "
                        f"({installed.metadata['Name']} {installed.version}); installing the plugin would replace "
                        f"it. Choose another name (e.g. {_other(dist)})")
    if module in sys.stdlib_module_names or importlib.util.find_spec(module) is not None:
        raise UserError(f"plugin name {dist!r}: a module named {module!r} already exists; the plugin's package "
                        f"would shadow it. Choose another name (e.g. {_other(dist)})")


def _walk(node):
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            if child.name != "__pycache__":
                yield from _walk(child)
        else:
            yield child


def _other(dist: str) -> str:
    return f"{dist}-plugin" if dist.startswith("apt-plugin-") else f"apt-plugin-{dist}"
