"""``PluginVersionManager``: the original API, over transactions of the installed plugin set.

A transaction resolves the whole set first with the kernel's solver (the kernel API and every plugin pip
installed outside the marketplace held fixed; torch and the kernel are never touched), downloads each
wheel hash-checked, installs them with pip into a new revision's folder, imports every plugin of the new
set with the doctor, and only then makes the revision current (``revisions.Revisions``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from apt_kernel.api import KERNEL_API_VERSION, Catalog, ResolutionError, discover, solve

from .client import PluginMarketplace
from .revisions import Revisions, TransactionError, pip_install_target


class PluginVersionManager:
    def __init__(self, marketplace: PluginMarketplace | None = None, revisions: Revisions | None = None) -> None:
        self.marketplace = marketplace or PluginMarketplace()
        self.revisions = revisions or Revisions()

    # what is installed -------------------------------------------------------------------------------
    def managed(self) -> dict[str, str]:
        """name -> version of the plugins the current revision installed."""
        return {n: e["version"] for n, e in self.revisions.current()["plugins"].items()}

    def base(self) -> dict[str, object]:
        """Plugins pip installed outside the marketplace (the project's own, editable ones included)."""
        site = self.revisions.current()["site"]
        return {canonicalize_name(i.name): i for i in discover()
                if i.distribution and not (site and i.code and i.code.startswith(site))}

    def installed_versions(self) -> dict[str, str]:
        return {**{n: i.version for n, i in self.base().items()}, **self.managed()}

    # resolution --------------------------------------------------------------------------------------
    def _catalog(self, names: set[str], admitted: set[tuple[str, Version]]) -> tuple[Catalog, dict[str, list[str]]]:
        """The index's versions of ``names`` and all they may need, with the installed plugins held fixed;
        a yanked version only where ``admitted`` (installed, or pinned exactly: PEP 592, as pip does). Also
        the yanked versions left out: name -> ``["version: reason"]``."""
        catalog, yanked = Catalog(KERNEL_API_VERSION), {}
        for name, info in self.base().items():
            manifest = info.manifest
            requires = {canonicalize_name(n): r for n, r in (manifest.requires if manifest else {}).items()}
            catalog.add(name, info.version, requires, manifest.kernel_api if manifest else None)
            catalog.installed.add(name)
        todo, seen = list(names), set(self.base())
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for release in self.marketplace.get_plugin_info(name)["releases"]:
                if not any(f["packagetype"] == "bdist_wheel" for f in release["files"]):
                    continue
                if release["yanked"] and (name, Version(release["version"])) not in admitted:
                    reason = f": {release['yanked_reason']}" if release["yanked_reason"] else ""
                    yanked.setdefault(name, []).append(f"{release['version']}{reason}")
                    continue
                manifest = release["manifest"] or {}
                requires = {canonicalize_name(n): r for n, r in manifest.get("requires", {}).items()}
                catalog.add(name, release["version"], requires, manifest.get("kernel_api"))
                todo.extend(requires)
        return catalog, yanked

    def resolve_version_conflicts(self, plugins: dict[str, str] | list[str]) -> dict[str, str]:
        """One version for each of ``plugins`` (``{name: range}`` or ``["name>=1", ...]``) and what they
        need, beside what is installed; raises ``ResolutionError`` with the chain that cannot hold."""
        wanted = _ranges(plugins)
        base = self.base()
        clash = sorted(set(wanted) & set(base))
        if clash:
            raise TransactionError(f"{', '.join(clash)} {'is' if len(clash) == 1 else 'are'} installed by pip outside "
                                   "the marketplace; upgrade with pip, or `pip uninstall` first")
        root = {**{n: f"=={v}" for n, v in self.managed().items()},
                **{n: f"=={i.version}" for n, i in base.items()}, **wanted}
        admitted = {(n, Version(v)) for n, v in self.managed().items()}
        admitted |= {(n, pin) for n, spec in wanted.items() if (pin := _exact(spec)) is not None}
        catalog, yanked = self._catalog(set(root) - set(base), admitted)
        try:
            chosen = solve(catalog, root, root_name="the plugin set")
        except ResolutionError as exc:  # a version the user may be looking for could be yanked: say so
            said = [f"{n} {v}" for n, versions in yanked.items() if f"{n} " in str(exc) or f"{n}:" in str(exc)
                    for v in versions]
            if not said:
                raise
            raise ResolutionError(f"{exc} (yanked, so taken only when pinned exactly, ==VERSION: "
                                  f"{'; '.join(said)})") from None
        return {n: str(c.version) for n, c in chosen.items() if n not in base and n != "apt-kernel-api"}

    # the original API --------------------------------------------------------------------------------
    def check_updates(self, name: str) -> dict:
        name = canonicalize_name(name)
        installed = self.installed_versions()
        current = installed.pop(name, None)
        latest = self.marketplace.compatible(name, installed)["version"]
        return {"has_update": current is None or Version(latest) > Version(current), "current": current,
                "latest": latest}

    def install(self, specs: list[str]) -> int:
        wanted = _ranges(specs)
        with self.revisions.locked():
            plan = self.resolve_version_conflicts(wanted)
            return self._transaction(plan, f"install {' '.join(specs)}")

    def upgrade_plugin(self, name: str, target_version: str | None = None) -> int:
        name = canonicalize_name(name)
        if target_version is not None:
            try:
                Version(target_version)
            except InvalidVersion:
                raise TransactionError(f"--to {target_version!r} is not a version (e.g. 1.2.0)") from None
        if name not in self.managed():
            raise TransactionError(f"{name} was not installed by the marketplace (`apt-kernel plugins install {name}`)")
        with self.revisions.locked():
            rest = {n: f"=={v}" for n, v in self.managed().items() if n != name}
            wanted = {name: f"=={target_version}" if target_version else f">={self.managed()[name]}"}
            try:
                plan = self.resolve_version_conflicts({**rest, **wanted})
            except ResolutionError:  # the others may move to let this one move
                plan = self.resolve_version_conflicts({**{n: "*" for n in rest}, **wanted})
            return self._transaction(plan, f"upgrade {name} to {plan[name]}")

    def rollback_plugin(self, name: str) -> int:
        """Put ``name`` back as it was before its last change (removed, if that change installed it)."""
        name = canonicalize_name(name)
        current = self.revisions.current()
        now = current["plugins"].get(name)
        for number in reversed([n for n in self.revisions.numbers() if n < current["revision"]]):
            before = self.revisions.read(number)["plugins"].get(name)
            if before != now:
                plugins = {n: e["version"] for n, e in current["plugins"].items() if n != name}
                if before is not None:
                    plugins[name] = before["version"]
                with self.revisions.locked():
                    return self._transaction(plugins, f"rollback {name} to {before['version'] if before else 'absent'}")
        raise TransactionError(f"no earlier version of {name} to roll back to (see `apt-kernel plugins history`)")

    def rollback_to(self, number: int) -> int:
        with self.revisions.locked():
            self.revisions.read(number)
            return self.revisions.restore(number)

    # one transaction ---------------------------------------------------------------------------------
    def _transaction(self, plan: dict[str, str], action: str) -> int:
        staging = self.revisions.staging()
        try:
            lock, wheels, plugins = {}, [], set()
            for name, version in sorted(plan.items()):
                entry = self.marketplace.release_file(name, version)
                if entry.get("manifest") is not None:
                    plugins.add(name)  # a plugin, not a library some plugin needs: the doctor must find it
                wheels.append(self.marketplace.fetch(entry, dest=self.revisions.cache))
                lock[name] = {"version": version, "sha256": entry["sha256"], "filename": entry["filename"]}
            site = staging / "site"
            site.mkdir()
            if wheels:
                pip_install_target(wheels, site)
            _check_requirements(site)
            _doctor(site, plugins)
            return self.revisions.commit(lock, action, site, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when committed (renamed)


def _ranges(plugins: dict[str, str] | list[str]) -> dict[str, str]:
    if isinstance(plugins, dict):
        return {canonicalize_name(n): r for n, r in plugins.items()}
    ranges = {}
    for spec in plugins:
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as exc:
            raise TransactionError(f"{spec!r} is not a plugin requirement (NAME or NAME>=1.2): "
                                   f"{str(exc).splitlines()[0]}") from None
        if requirement.url or requirement.marker or requirement.extras:
            raise TransactionError(f"{spec!r}: the marketplace installs NAME or NAME with a version range from its "
                                   "index, without a URL, extras or an environment marker")
        ranges[canonicalize_name(requirement.name)] = str(requirement.specifier) or "*"
    return ranges


def _exact(spec: str) -> Version | None:
    """The version ``spec`` pins exactly (``==1.2`` or ``===1.2``, no wildcard), else None."""
    try:
        parts = list(SpecifierSet(spec))
    except InvalidSpecifier:
        return None  # a kernel-style range (^1.2, ~1.2): never an exact pin
    if len(parts) != 1 or parts[0].operator not in ("==", "===") or parts[0].version.endswith(".*"):
        return None
    try:
        return Version(parts[0].version)
    except InvalidVersion:
        return None


def _check_requirements(site: Path) -> None:
    """Every dependency of the new wheels is met by the new set or by the environment, or nothing changes."""
    staged = {canonicalize_name(d.metadata["Name"]): d for d in distributions(path=[str(site)])}
    have = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    have.update({n: d.version for n, d in staged.items()})
    for name, dist in staged.items():
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            found = have.get(canonicalize_name(requirement.name))
            if found is None or not requirement.specifier.contains(found, prereleases=True):
                where = f"this environment has {found}" if found else "this environment lacks it"
                raise TransactionError(f"{name} {dist.version} needs {requirement} ({where}); install that with "
                                       "pip first; nothing was changed")


def _doctor(site: Path, names: set[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "apt_kernel.cli", "plugins", "doctor", "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    try:
        report = {canonicalize_name(r["name"]): r for r in json.loads(done.stdout)}
    except ValueError:
        raise TransactionError(f"the doctor could not check the new set: {done.stderr.strip()[-1500:]}") from None
    bad = [f"{n}: {report[n]['status']}: {report[n].get('reason')}" for n in sorted(names)
           if n in report and report[n]["status"] != "installed"]
    missing = sorted(n for n in names if n not in report)
    if bad or missing:
        detail = "; ".join(bad + [f"{n}: not found as a plugin (no apt_kernel.plugins entry point)" for n in missing])
        raise TransactionError(f"the new plugin set failed its check, so nothing was changed: {detail}")

