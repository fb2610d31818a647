"""Choose one version of every plugin a pipeline needs, or explain in words why none fits.

A failure is explained as a chain like "pipeline needs apt-plugin-x >=2; apt-plugin-x 2.1 requires
apt-kernel-api ^3; installed kernel API is 1.0 → cannot run". The kernel API is a pseudo-package with
exactly the running kernel's version, so plugin ``kernel_api`` ranges are ordinary requirements.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from . import KERNEL_API_VERSION
from .errors import ResolutionError
from .versions import parse_range, parse_version

KERNEL_API = "apt-kernel-api"
ROOT = "pipeline"


@dataclass(frozen=True)
class Candidate:
    name: str
    version: Version
    requires: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class Requirement:
    name: str
    range: str
    parent: Candidate | None = None
    spec: SpecifierSet = field(compare=False, hash=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", parse_range(self.range))

    def __str__(self) -> str:
        return f"{self.name} {self.range}".strip() if self.range not in ("", "*") else self.name


class Catalog:
    """Every version of every package the solver may pick: installed plugins now, an index later."""

    def __init__(self, kernel_api: str = KERNEL_API_VERSION) -> None:
        self.kernel_api = kernel_api
        self.versions: dict[str, list[Candidate]] = {KERNEL_API: [Candidate(KERNEL_API, Version(kernel_api))]}
        self.installed: set[str] = set()

    def add(self, name: str, version: str, requires: Mapping[str, str] | None = None,
            kernel_api: str | None = None) -> Candidate:
        deps = dict(requires or {})
        if kernel_api:
            deps[KERNEL_API] = kernel_api
        candidate = Candidate(name, parse_version(version), tuple(sorted(deps.items())))
        self.versions.setdefault(name, []).append(candidate)
        self.versions[name].sort(key=lambda c: c.version, reverse=True)
        return candidate


class _Search:
    """Depth-first search over versions, newest first, with forward checking.

    Packages are decided in a static topological order of "may require" (dependents first), so when a
    package is decided every requirement on it is already known; a new requirement is checked at once
    against what is chosen or still possible, which leaves little to backtrack. resolvelib was the
    first choice, but it re-checks every pinned package each round: 18 s for 1,000 plugins.
    """

    def __init__(self, catalog: Catalog, max_attempts: int) -> None:
        self.catalog = catalog
        self.max_attempts = max_attempts
        self.attempts = 0
        self.reqs: dict[str, list[Requirement]] = {}
        self.chosen: dict[str, Candidate] = {}
        self.order: list[str] = []
        self.introduced: dict[str, Requirement] = {}
        self.failure: list[Requirement] | None = None
        self._match: dict[tuple[str, str], frozenset[Version]] = {}
        self._deps: dict[Candidate, list[Requirement]] = {}

    def matches(self, req: Requirement) -> frozenset[Version]:
        key = (req.name, req.range)
        found = self._match.get(key)
        if found is None:
            found = frozenset(c.version for c in self.catalog.versions.get(req.name, ())
                              if req.spec.contains(c.version, prereleases=True))
            self._match[key] = found
        return found

    def possible(self, name: str) -> list[Candidate]:
        active = self.reqs[name]
        return [c for c in self.catalog.versions.get(name, ())
                if all(c.version in self.matches(r) for r in active)]

    def require(self, req: Requirement) -> bool:
        """Add a requirement; False (and the failure noted) if it cannot hold any more."""
        active = self.reqs.setdefault(req.name, [])
        active.append(req)
        self.introduced.setdefault(req.name, req)
        chosen = self.chosen.get(req.name)
        ok = chosen.version in self.matches(req) if chosen else bool(self.possible(req.name))
        if not ok and self.failure is None:
            self.failure = list(active)
        return ok

    def unrequire(self, req: Requirement) -> None:
        active = self.reqs[req.name]
        active.pop()
        if not active:
            del self.reqs[req.name]

    def dependencies(self, candidate: Candidate) -> list[Requirement]:
        deps = self._deps.get(candidate)
        if deps is None:
            deps = self._deps[candidate] = [Requirement(n, r, candidate) for n, r in candidate.requires]
        return deps

    def plan(self, roots: Iterable[str]) -> None:
        """Order every package reachable from ``roots`` so that dependents come before dependencies."""
        seen: set[str] = set()
        post: list[str] = []
        for root in roots:
            if root in seen:
                continue
            seen.add(root)
            stack = [(root, iter(self._edges(root)))]
            while stack:
                name, children = stack[-1]
                child = next(children, None)
                if child is None:
                    stack.pop()
                    post.append(name)
                elif child not in seen:
                    seen.add(child)
                    stack.append((child, iter(self._edges(child))))
        self.order = post[::-1]

    def _edges(self, name: str) -> list[str]:
        return sorted({dep for c in self.catalog.versions.get(name, ()) for dep, _ in c.requires})

    def run(self, index: int = 0) -> bool:
        while index < len(self.order) and self.order[index] not in self.reqs:
            index += 1  # not needed by anything chosen so far; nothing later can need it
        if index == len(self.order):
            return True
        name = self.order[index]
        for candidate in self.possible(name):
            self.attempts += 1
            if self.attempts > self.max_attempts:
                raise ResolutionError("plugin versions could not be resolved: too many conflicting "
                                      f"choices (gave up after {self.max_attempts} attempts)")
            added = []
            self.chosen[name] = candidate
            ok = True
            for dep in self.dependencies(candidate):
                added.append(dep)
                if not self.require(dep):
                    ok = False
                    break
            if ok and self.run(index + 1):
                return True
            for dep in reversed(added):
                self.unrequire(dep)
            del self.chosen[name]
        return False


def solve(catalog: Catalog, root: Mapping[str, str], max_attempts: int = 200_000,
          root_name: str = ROOT) -> dict[str, Candidate]:
    """Pick a version of each package in ``root`` (name -> range) and all they require; an explanation
    starts from ``root_name`` ("pipeline needs ..."; an installer names its own request)."""
    search = _Search(catalog, max_attempts)
    for name, spec in root.items():
        req = Requirement(name, spec)
        if name not in catalog.versions:
            raise ResolutionError(f"{root_name} needs {req}, which is not installed → cannot run")
        if not search.require(req):
            raise ResolutionError(explain(catalog, search.introduced, search.failure or [req], root_name))
    search.plan(root)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * len(catalog.versions) + 200))
    try:
        found = search.run()
    finally:
        sys.setrecursionlimit(limit)
    if not found:
        raise ResolutionError(explain(catalog, search.introduced, search.failure or [], root_name))
    return dict(search.chosen)


def _chain(req: Requirement, introduced: Mapping[str, Requirement], root_name: str = ROOT) -> list[str]:
    steps: list[str] = []
    seen: set[str] = set()
    current: Requirement | None = req
    while current is not None and current.parent is not None and current.parent.name not in seen:
        steps.append(f"{current.parent} requires {current}")
        seen.add(current.parent.name)
        current = introduced.get(current.parent.name)
    if current is not None and current.parent is None:
        steps.append(f"{root_name} needs {current}")
    return steps[::-1]


def _available(catalog: Catalog, name: str) -> str:
    if name == KERNEL_API:
        return f"installed kernel API is {catalog.kernel_api}"
    versions = [str(c.version) for c in catalog.versions.get(name, [])]
    if not versions:
        return f"{name} is not installed"
    where = "installed" if name in catalog.installed else "available"
    return f"{where} {name}: {', '.join(versions)}"


def explain(catalog: Catalog, introduced: Mapping[str, Requirement], causes: Iterable, root_name: str = ROOT) -> str:
    lines: list[str] = []
    names: list[str] = []
    for req in causes:
        for step in _chain(req, introduced, root_name):
            if step not in lines:
                lines.append(step)
        if req.name not in names:
            names.append(req.name)
    tail = "; ".join(_available(catalog, n) for n in names)
    return "; ".join(lines) + f"; {tail} → cannot run"
