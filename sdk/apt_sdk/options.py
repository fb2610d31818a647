"""Checking what a user wrote before it is used: the keys of a dict (a config table handed to a library,
say) before a typo is silently kept or ignored, and a folder option before the first write into it fails."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from apt_kernel.errors import UserError, closest


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


def folder_problem(path: str | Path) -> tuple[Path, str] | None:
    """Why ``path`` cannot become a folder this process writes, found before anything is written:
    ``(the nearest existing path, "a file")`` when a file is in the way, ``(that folder, "not writable")``
    when this process may not write there, ``None`` otherwise. Nothing is created: a factory checks its
    folder options with it and raises ``OptionError``; the folder is made when it is first used.

    New in apt-kernel-sdk 0.1.2.
    """
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return existing, "a file"
    if not os.access(existing, os.W_OK):
        return existing, "not writable"
    return None
