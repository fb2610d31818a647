"""The embedded default corpus: docstrings of the Python standard library installed on this machine.

Real English prose about programming, present wherever Python is, gathered at run time with ``ast``
(no module is imported or executed), in a fixed file order so a given Python gives the same text.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "ensurepip",
             "turtledemo", "__pycache__", "config-3", "pydoc_data", "encodings"}


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


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


def stdlib_docstrings(max_chars: int = 0) -> list[str]:
    """Docstrings of the installed standard library, in file order; stop after ``max_chars``."""
    texts: list[str] = []
    total = 0
    for path in stdlib_files():
        for doc in docstrings(path):
            texts.append(doc)
            total += len(doc) + 2
            if max_chars and total >= max_chars:
                return texts
    return texts
