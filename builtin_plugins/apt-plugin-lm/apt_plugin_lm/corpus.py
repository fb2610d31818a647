"""The embedded default corpus: docstrings of the Python standard library installed on this machine.

Real English prose about programming, present wherever Python is, gathered at run time with ``ast``
(no module is imported or executed), in a fixed file order so a given Python gives the same text.
Parsing the files takes seconds, every run; what each file yielded is kept in a cache file (in
``$XDG_CACHE_HOME/apt-kernel``, else ``~/.cache/apt-kernel``), keyed by the file's size and modification
time, so a file that changed is parsed again and an unwritable cache only costs the time.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "ensurepip",
             "turtledemo", "__pycache__", "config-3", "pydoc_data", "encodings"}


def stdlib_files(root: Path | None = None) -> list[Path]:
    root = root or Path(sysconfig.get_paths()["stdlib"])
    files = []
    # pruned while walking: site-packages alone can hold tens of thousands of files, and every run lists these
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in SKIP_DIRS]
        files += [Path(folder, name) for name in names if name.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "apt-kernel"


def docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    found = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc) >= 40:  # one-word docstrings teach nothing
            found.append(doc.strip())
    return found


def stdlib_docstrings(max_chars: int = 0, root: Path | None = None, cache: Path | None = None) -> list[str]:
    """Docstrings of the installed standard library (or of the ``.py`` files under ``root``), in file
    order; stop after ``max_chars``. ``cache``: the cache folder (default :func:`cache_dir`)."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha256(f"{sys.version}\0{root.resolve()}".encode()).hexdigest()[:16]
    cache_file = (cache or cache_dir()) / f"stdlib-docstrings-{key}.json"
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    texts: list[str] = []
    total, changed = 0, False
    for path in stdlib_files(root):
        stat = path.stat()
        name, stamp = path.relative_to(root).as_posix(), [stat.st_size, stat.st_mtime_ns]
        entry = known.get(name)
        if not entry or entry[0] != stamp:
            entry = known[name] = [stamp, docstrings(path)]
            changed = True
        for doc in entry[1]:
            texts.append(doc)
            total += len(doc) + 2
            if max_chars and total >= max_chars:
                break
        if max_chars and total >= max_chars:
            break
    if changed:
        _save(cache_file, known)
    return texts


def _save(cache_file: Path, known: dict) -> None:
    """Write the cache atomically (several runs may start at once); a cache that cannot be written is
    not an error."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, delete=False, suffix=".tmp") as fh:
            json.dump(known, fh)
        os.replace(fh.name, cache_file)
    except OSError:
        return
