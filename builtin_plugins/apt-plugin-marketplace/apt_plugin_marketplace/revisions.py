"""Plugin installs as numbered revisions (conda's ``--revision`` is the model): every change of the set of
marketplace-installed plugins is one transaction that cannot be seen half done.

Layout, under ``<environment>/apt-plugins``::

    revisions/<N>/lock.json   the set of revision N: {name: {version, sha256, filename}}, why, when, the
                              revision current before it, and every file pip put in site/ with its sha256
    revisions/<N>/site/       those wheels, installed there by ``pip install --target``
    cache/                    downloaded wheels (checked against the index's sha256)

and ``site-packages/apt-kernel-plugins.pth``, which names the current revision's ``site`` folder. Python
reads ``.pth`` files at start, so every new process sees exactly one revision. A transaction builds the
new revision's folder beside the old one, checks it with the doctor, and switches by replacing that one
file (``os.replace``, atomic): a ``kill -9`` at any moment leaves the old set or the new one, never a mix.
A revision that never became current (an install cut off after its folder was complete) is shown by
``history`` as not applied: the revisions that were current are the chain of "previous" from the current
one. ``rollback --to N`` reuses N's folder only if its files are still those N's lock records.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from apt_sdk import UserError

from .sitefiles import damage, installed

PTH = "apt-kernel-plugins.pth"


class TransactionError(UserError):
    """A change of the plugin set that was refused or failed; nothing was changed."""


def _fsync_write(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temp.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Revisions:
    """The revisions of one environment (default: this interpreter's)."""

    def __init__(self, prefix: str | Path | None = None, site_packages: str | Path | None = None) -> None:
        self.root = Path(prefix or sys.prefix) / "apt-plugins"
        self.site_packages = Path(site_packages or sysconfig.get_paths()["purelib"])
        self.pth = self.site_packages / PTH

    @property
    def folder(self) -> Path:
        return self.root / "revisions"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One transaction at a time per environment; a killed holder's lock is released by the OS."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TransactionError(f"another plugin install is running in this environment ({self.root})") \
                    from None
            yield

    def current_number(self) -> int:
        lines = self.pth.read_text().splitlines() if self.pth.exists() else []
        first = lines[0] if lines else ""
        number = first.removeprefix("# apt-kernel plugins revision ")
        if number == first or not number.isdigit():
            return 0  # no file, or not ours: the environment as pip left it
        return int(number)

    def read(self, number: int) -> dict:
        if number == 0:
            return {"revision": 0, "action": "the environment as pip left it", "plugins": {}, "site": None}
        path = self.folder / str(number) / "lock.json"
        if not path.exists():
            raise UserError(f"there is no revision {number} (see `apt-kernel plugins history`)")
        return json.loads(path.read_text())

    def current(self) -> dict:
        return self.read(self.current_number())

    def numbers(self) -> list[int]:
        if not self.folder.exists():
            return [0]
        return [0, *sorted(int(p.name) for p in self.folder.iterdir() if p.name.isdigit()
                           and (p / "lock.json").exists())]

    def applied(self) -> set[int]:
        """The revisions that were current at some time: the current one and, through each one's record of
        the revision current before it, all before it. One cut off before its switch is in no chain."""
        number, seen = self.current_number(), {0}
        while number not in seen:
            seen.add(number)
            previous = self.read(number).get("previous")
            if previous is None:  # recorded before "previous" was: all below it, as was assumed then
                seen.update(range(number))
                break
            number = previous
        return seen

    def history(self) -> list[dict]:
        current, applied = self.current_number(), self.applied()
        rows = []
        for number in self.numbers():
            row = self.read(number)
            row["current"] = number == current
            row["applied"] = number in applied
            rows.append(row)
        return rows

    def commit(self, plugins: dict[str, dict], action: str, site: Path | None, staging: Path | None,
               files: dict[str, dict[str, str]] | None = None) -> int:
        """Record a new revision whose set is ``plugins`` and whose files are ``site`` (a folder already
        complete, in ``staging`` or an earlier revision's, whose files are then ``files``), then make it
        current."""
        number = max(self.numbers()) + 1
        target = self.folder / str(number)
        if staging is not None and site is not None:
            files = installed(site)
        record = {"revision": number, "action": action, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "plugins": plugins, "site": str(site) if site else None, "previous": self.current_number(),
                  "files": files or {}}
        if staging is not None:
            _fsync_write(staging / "lock.json", json.dumps(record, indent=2))
            if site is not None and site.parent == staging:
                record["site"] = str(target / site.name)
                _fsync_write(staging / "lock.json", json.dumps(record, indent=2))
            os.replace(staging, target)
        else:
            target.mkdir(parents=True)
            _fsync_write(target / "lock.json", json.dumps(record, indent=2))
        self._point(number, record["site"])
        return number

    def restore(self, number: int) -> int:
        """A new revision equal to revision ``number``, its files reused once checked against its lock."""
        old = self.read(number)
        site = Path(old["site"]) if old["site"] else None
        if site is not None and not site.is_dir():
            raise TransactionError(f"revision {number}'s files ({site}) are gone; cannot restore it exactly")
        files = old.get("files")
        if site is not None:
            problems = damage(site, files) if files is not None else self._unrecorded(old, site)
            if problems:
                raise TransactionError(
                    f"revision {number}'s files in {site} are not those its lock records (removed or changed "
                    f"since, e.g. by `pip uninstall`), so it cannot be restored exactly: {'; '.join(problems)}; "
                    "nothing was changed; `apt-kernel plugins install NAME==VERSION` installs a plugin again")
            files = installed(site) if files is None else files  # checked just now: the new revision's record
        return self.commit(old["plugins"], f"rollback to revision {number}", site, None, files)

    @staticmethod
    def _unrecorded(old: dict, site: Path) -> list[str]:
        """A lock written before files were recorded: the RECORDs still there, and its plugins being there."""
        found = installed(site)
        absent = [f"{name} {entry['version']}: not installed there" for name, entry in sorted(old["plugins"].items())
                  if f"{name} {entry['version']}" not in found]
        return absent + damage(site, found)

    def _point(self, number: int, site: str | None) -> None:
        self.site_packages.mkdir(parents=True, exist_ok=True)
        _fsync_write(self.pth, f"# apt-kernel plugins revision {number}\n{site or ''}\n")

    def staging(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".staging-*"):  # left by a killed transaction; never current
            shutil.rmtree(stale, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.folder))


def pip_install_target(wheels: list[Path], site: Path, python: str = sys.executable) -> None:
    """Install exactly these wheels into ``site``, nothing from any index, no dependencies."""
    command = [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--target", str(site), *map(str, wheels)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise TransactionError(f"pip could not install {', '.join(w.name for w in wheels)}: "
                               f"{done.stderr.strip()[-1500:]}")
