"""Does a built component have what its protocol declares? Checked where the runner builds it, so a factory
that returns the wrong shape is an error naming the plugin, the component and what is missing, not an
``AttributeError`` at the trainer's first step.

The members checked are those the protocols in ``apt_kernel.protocols`` declare (their annotated attributes
and their methods), read from the protocol classes themselves: a protocol that gains a member is checked
for it without a change here.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

from . import protocols

#: What a factory of each kind must return. A callback needs no method in particular (it overrides
#: the ``Callback`` events it wants), so it has no entry.
KIND_PROTOCOLS: dict[str, type] = {"data": protocols.DataModule, "encoder": protocols.Encoder,
                                   "model": protocols.Model, "loss": protocols.Loss, "trainer": protocols.Trainer}


@functools.cache
def _declared(protocol: type) -> dict[str, bool]:
    """name -> whether it is a method, for what ``protocol`` declares (with the protocols it extends)."""
    found: dict[str, bool] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        found.update(dict.fromkeys(vars(cls).get("__annotations__", {}), False))
        found.update({name: True for name, value in vars(cls).items()  # a classmethod object is not callable
                      if (callable(value) or isinstance(value, classmethod))
                      and (not name.startswith("_") or name == "__call__")})
    return found


def declared_members(protocol: type) -> tuple[str, ...]:
    """The attributes and methods ``protocol`` declares, in the order it declares them."""
    return tuple(_declared(protocol))


def missing_members(component: Any, protocol: type) -> list[str]:
    """What ``component`` lacks of ``protocol``: a declared attribute it does not have, or a declared method
    that is absent or not callable (``__call__``: the component itself is not callable)."""
    def present(name: str, is_method: bool) -> bool:
        if name == "__call__":
            return callable(component)
        return callable(getattr(component, name, None)) if is_method else hasattr(component, name)

    return [name for name, is_method in _declared(protocol).items() if not present(name, is_method)]


def shape_problem(kind: str, component: Any) -> str | None:
    """Why ``component`` cannot serve as a ``kind`` (one line), or None when it has what the kind's protocol
    declares."""
    protocol = KIND_PROTOCOLS.get(kind)
    if protocol is None:
        return None
    missing = missing_members(component, protocol)
    if not missing:
        return None
    what = [f"{name} (it is not callable)" if name == "__call__" else name for name in missing]
    return (f"it returned {_describe(component)}, which lacks {', '.join(what)}; the {kind} protocol, "
            f"apt_sdk.{protocol.__name__}, declares: {', '.join(declared_members(protocol))}")


def _describe(component: Any) -> str:
    if component is None:
        return "None"
    kind = type(component)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"an object of type {name}"
