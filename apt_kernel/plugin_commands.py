"""The commands installed plugins declare (manifest ``[commands]``), listed for ``--help`` without importing
any plugin: each plugin's package is found from its entry point, its manifest names the commands, and a
command's one-line help is its function's docstring, read from the source file as text (``ast``).

Deliberately lighter than ``discovery.discover()`` (no status, no metadata): ``--help`` must stay fast, and
``discover`` would add about 0.15 s of CPU to it against about 0.05 s here.
"""

from __future__ import annotations

import ast
import importlib.util
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

from click.utils import make_default_short_help

ENTRY_POINT_GROUP = "apt_kernel.plugins"  # discovery's and manifest's names, spelt again: importing those
MANIFEST_FILE = "apt-plugin.toml"  # modules would bring packaging and the manifest checks into --help


def declared(prefix: str, width: int) -> list[tuple[str, str]]:
    """``(name, one-line help)`` for each command whose manifest key is ``prefix + name`` (``"plugins.install"``
    under ``plugins``), sorted, the help cut as click cuts a builtin command's for ``width`` columns."""
    found: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        folder = _package_folder(ep.value)
        if folder is None:
            continue
        try:
            commands = tomllib.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8")).get("commands", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue  # `plugins list` reports a broken manifest; help only leaves it out
        for key, target in commands.items() if isinstance(commands, dict) else ():
            name = key.removeprefix(prefix)
            if key.startswith(prefix) and "." not in name and name not in found and isinstance(target, str):
                found[name] = _docstring(folder, target)
    limit = width - 6 - max((len(name) for name in found), default=0)
    return [(name, make_default_short_help(doc, limit)) for name, doc in sorted(found.items())]


def _package_folder(module: str) -> Path | None:
    top = module.split(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)  # a top-level package is found without being imported
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _docstring(folder: Path, target: str) -> str:
    """The docstring of ``module:function`` under the package ``folder``, or "" (never raises)."""
    module, _, attr = target.partition(":")
    parts = module.split(".")[1:]
    for path in (folder.joinpath(*parts).with_suffix(".py") if parts else folder / "__init__.py",
                 folder.joinpath(*parts, "__init__.py")):
        try:
            tree = ast.parse(path.read_bytes())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == attr:
                return ast.get_docstring(node) or ""
        return ""
    return ""
