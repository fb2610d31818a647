"""What pip installed into a revision's folder, file by file, as each distribution's RECORD lists it (path
and sha256), and which of those files are missing or changed now. A revision's folder is on sys.path
through the .pth, so `pip uninstall` (or a hand edit) reaches into it; a rollback checks before reusing it."""

from __future__ import annotations

import base64
import csv
import hashlib
from pathlib import Path

from packaging.utils import canonicalize_name

SHOWN = 4  # files named per problem; the rest are counted


def installed(site: Path) -> dict[str, dict[str, str]]:
    """``{"name version": {path: "sha256=...", ...}}`` for every distribution in ``site`` (RECORD's own
    entry has no hash: it is checked for being there)."""
    found: dict[str, dict[str, str]] = {}
    for record in sorted(site.glob("*.dist-info/RECORD")):
        name, _, version = record.parent.name.removesuffix(".dist-info").partition("-")
        with record.open(newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row]
        found[f"{canonicalize_name(name)} {version}"] = {row[0]: row[1] if len(row) > 1 else "" for row in rows}
    return found


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def _some(paths: list[str]) -> str:
    paths = sorted(paths, key=lambda p: (".dist-info/" in p, p))  # the code first, pip's bookkeeping after
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more


def damage(site: Path, expected: dict[str, dict[str, str]]) -> list[str]:
    """One line per distribution of ``expected`` whose files in ``site`` are missing or changed."""
    problems = []
    for dist, files in sorted(expected.items()):
        missing, changed = [], []
        for path, digest in files.items():
            full = site / path
            if not full.is_file():
                missing.append(path)
            elif digest.startswith("sha256=") and _digest(full) != digest:
                changed.append(path)
        parts = [f"{len(paths)} file{'s' if len(paths) > 1 else ''} {what} ({_some(paths)})"
                 for paths, what in ((missing, "missing"), (changed, "changed")) if paths]
        if parts:
            problems.append(f"{dist}: {', '.join(parts)}")
    return problems
