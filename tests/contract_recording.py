"""What consumers read of a component, recorded while it runs: the component's class is swapped for a subclass of it
that notes each attribute its consumers read (``getattr`` and ``hasattr`` included, methods too) and each call of the
object itself; reads on its class (``type(model).from_config``) are noted through a recording metaclass.

A read counts when the reading code is the project's (the kernel, the SDK, a builtin plugin; not torch, the standard
library or a test) and not the component's own: neither in the package its class comes from, nor a method running on
the component itself (a base class's from elsewhere, the SDK's ``EncoderModule``, say), nor a generic check that
reads every member a protocol declares (``checkers``). Dunder names are Python's machinery and are left out, but for
``__call__``. It works for ``torch.nn.Module``s (their ``__getattr__`` still runs for submodules and parameters).
"""

from __future__ import annotations

import sys
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_REPO, _VENV, _TESTS = (f"{path}/" for path in (REPO, REPO / ".venv", REPO / "tests"))


def _codes(code: types.CodeType) -> set[types.CodeType]:
    """``code`` and the code of what it defines (comprehensions, nested functions)."""
    found = {code}
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            found |= _codes(constant)
    return found


def _package_dir(cls: type) -> str:
    return f"{Path(sys.modules[cls.__module__.split('.')[0]].__file__).resolve().parent}/"


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class Recorder:
    """``watch(component, label)``; then ``uses[label]``: member -> where a consumer first read it."""

    def __init__(self, checkers: tuple[Callable, ...] = (), checker_files: tuple[Path, ...] = ()) -> None:
        self.uses: dict[str, dict[str, str]] = defaultdict(dict)
        self.skipped_codes = set().union(*(_codes(f.__code__) for f in checkers))
        self.skipped_files = tuple(str(f) for f in checker_files)

    def note(self, label: str, own: str, target: Any, name: str, frame: types.FrameType) -> None:
        code = frame.f_code
        file = code.co_filename
        if not file.startswith(_REPO) or file.startswith((_VENV, _TESTS, own)) or file in self.skipped_files \
                or code in self.skipped_codes:
            return
        if code.co_argcount and code.co_varnames[0] in ("self", "cls"):
            this = frame.f_locals.get(code.co_varnames[0])
            if this is target or this is type(target) or (isinstance(target, type) and isinstance(this, target)):
                return  # the component's own method, defined outside its package (a base class's)
        where = f"{Path(file).relative_to(REPO).as_posix()}:{frame.f_lineno} ({code.co_name})"
        self.uses[label].setdefault(name, where)

    def watch(self, component: Any, label: str) -> Any:
        """Record from now on what consumers read of ``component``, as ``label``; returns it."""
        cls = type(component)
        if getattr(cls, "__recording__", None) is not None:
            return component
        own, note = _package_dir(cls), self.note

        def __getattribute__(obj: Any, name: str) -> Any:
            if not _dunder(name):
                note(label, own, obj, name, sys._getframe(1))
            return cls.__getattribute__(obj, name)

        def read_on_class(klass: type, name: str) -> Any:
            if not _dunder(name) and not name.startswith("_abc_"):
                note(label, own, klass, name, sys._getframe(1))
            return type(cls).__getattribute__(klass, name)

        namespace = {"__slots__": (), "__getattribute__": __getattribute__, "__recording__": label,
                     "__module__": cls.__module__, "__qualname__": cls.__qualname__}  # as it was, for messages
        if callable(component):
            def __call__(obj: Any, *args: Any, **kwargs: Any) -> Any:
                note(label, own, obj, "__call__", sys._getframe(1))
                return cls.__call__(obj, *args, **kwargs)

            namespace["__call__"] = __call__
        meta = type(f"Recording{type(cls).__name__}", (type(cls),), {"__getattribute__": read_on_class})
        component.__class__ = meta(cls.__name__, (cls,), namespace)
        return component
