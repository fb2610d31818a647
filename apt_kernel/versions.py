"""Version ranges: semver style (``^1.2``, ``~1.2.3``, ``*``) and PEP 440 (``>=1,<2``), mixed by commas.

Caret and tilde are translated into PEP 440 specifiers with ``semver`` doing the parsing and bumping,
so every range ends up as a ``packaging`` ``SpecifierSet`` and comparisons use PEP 440 ordering.
"""

from __future__ import annotations

from functools import lru_cache

import semver
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version


class InvalidRange(ValueError):
    """A version range that is neither semver style nor PEP 440."""


def _caret(text: str) -> str:
    # ^1.2.3 := >=1.2.3,<2.0.0 ; ^0.2.3 := >=0.2.3,<0.3.0 ; ^0.0.3 := >=0.0.3,<0.0.4 (npm/cargo rules)
    v = semver.Version.parse(text, optional_minor_and_patch=True)
    given = text.count(".") + 1
    if v.major > 0 or given == 1:
        upper = v.bump_major()
    elif v.minor > 0 or given == 2:
        upper = v.bump_minor()
    else:
        upper = v.bump_patch()
    return f">={v},<{upper}"


def _tilde(text: str) -> str:
    # ~1.2.3 := >=1.2.3,<1.3.0 ; ~1.2 := >=1.2.0,<1.3.0 ; ~1 := >=1.0.0,<2.0.0
    v = semver.Version.parse(text, optional_minor_and_patch=True)
    upper = v.bump_major() if text.count(".") == 0 else v.bump_minor()
    return f">={v},<{upper}"


@lru_cache(maxsize=4096)
def parse_range(text: str) -> SpecifierSet:
    """Parse a version range into a ``SpecifierSet``; raise ``InvalidRange`` naming the bad clause."""
    clauses = []
    for raw in str(text).split(","):
        clause = raw.strip()
        if clause in ("", "*"):
            continue
        try:
            if clause.startswith("^"):
                clauses.append(_caret(clause[1:].strip()))
            elif clause.startswith("~") and not clause.startswith("~="):
                clauses.append(_tilde(clause[1:].strip()))
            else:
                if clause[0].isdigit():  # a bare version means exactly that version
                    clause = "==" + clause
                SpecifierSet(clause)
                clauses.append(clause)
        except (ValueError, InvalidSpecifier) as exc:
            raise InvalidRange(f"invalid version range {text!r}: cannot read {clause!r} ({exc})") from None
    return SpecifierSet(",".join(clauses))


def parse_version(text: str) -> Version:
    try:
        return Version(str(text))
    except InvalidVersion:
        raise InvalidRange(f"invalid version {text!r}") from None


def satisfies(version: str | Version, range_text: str) -> bool:
    """True when ``version`` lies in ``range_text`` (pre-releases included when named)."""
    v = version if isinstance(version, Version) else parse_version(version)
    return parse_range(range_text).contains(v, prereleases=True)
