"""Checking the keys of a dict a user wrote (a config table handed to a library, say) before a typo
is silently kept or ignored."""

from __future__ import annotations

from collections.abc import Iterable

from apt_kernel.errors import UserError
from apt_kernel.registry import closest


def check_known_keys(given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise ``UserError`` naming the first key of ``given`` not in ``known``, and the known key it most
    resembles: ``unknown CLIPVisionConfig field 'hiden_size' (did you mean 'hidden_size'?)``.

    :param what: what a key is, for the message (``"CLIPVisionConfig field"``).
    """
    candidates = sorted(known)
    for key in given:
        if key not in candidates:
            hint = closest(key, candidates)
            raise UserError(f"unknown {what} {key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
