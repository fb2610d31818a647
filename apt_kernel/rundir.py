"""A run folder belongs to one run at a time.

Two runs writing one folder would interleave checkpoints and metadata; a new run into a folder that
holds an old one would mix them (the worse new checkpoint marked best, ``--resume latest`` picking
the old run). So the process that writes a run's files (rank 0) holds an OS lock on
``<run dir>/.apt-run.lock`` for the run's life: the OS releases it when the process dies, however it
dies, so a stale lock cannot exist. A second run into a locked folder is refused, naming the PID
that holds it; a folder that already holds a run is refused unless the run continues it
(``--resume``) or replaces it (``--overwrite``, which moves the old run aside, never deletes it).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from .errors import UserError

LOCK_FILE = ".apt-run.lock"
BEFORE_ENV = "APT_RUN_DIR_BEFORE"  # JSON list: the folder's contents when the launcher started the workers
RECORD = "pipeline.json"  # the kernel's record of the run; alone, it is a run that failed before writing anything


def run_contents(path: Path) -> list[str]:
    """What in the folder a new run would mix with or overwrite (checkpoints, logs, a model, ...)."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.name not in (LOCK_FILE, RECORD))


def holds_run(path: Path, among: set[str] | None = None) -> bool:
    """``among``: only these names count (what was there before this run built its components)."""
    return any(among is None or name in among for name in run_contents(path))


def check_path(path: Path) -> None:
    """A run folder that cannot exist (a file in the way) is the user's error, found before anything runs."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"is below {parent}, which is a file"
                raise UserError(f"output_dir {path} {where}: choose a folder for the run")
            return


def _refuse_existing(path: Path, among: set[str] | None) -> UserError:
    contents = [name for name in run_contents(path) if among is None or name in among]
    shown = ", ".join(contents[:4]) + (f" and {len(contents) - 4} more" if len(contents) > 4 else "")
    return UserError(f"{path} already holds a run ({shown}); continue it with --resume latest, replace it with "
                     f"--overwrite (the old run is moved aside, not deleted), or choose another output_dir")


class RunFolder:
    """``claim()`` the folder (create it, lock it, check it), ``release()`` at the end of the run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.moved_to: Path | None = None  # where --overwrite put the old run
        # what the folder held at check(): a component that writes into the run folder while it is built
        # (an error log opening its database) does not make this run's own folder look like another run
        self.before: set[str] | None = None

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse a folder that is in use, or that holds a run without --resume/--overwrite; takes no lock."""
        launched = os.environ.get(BEFORE_ENV)  # under `apt-kernel run --nproc-per-node`, the launcher looked first
        self.before = set(json.loads(launched)) if launched is not None else set(run_contents(self.path))
        self.claim(resume, overwrite, dry_run=True)  # checks the path too

    def claim(self, resume: bool = False, overwrite: bool = False, dry_run: bool = False) -> RunFolder:
        if resume and overwrite:
            raise UserError("--resume continues the run in the folder and --overwrite replaces it: give one")
        check_path(self.path)
        if not self.path.exists() and dry_run:
            return self
        self._lock()
        try:
            if holds_run(self.path, self.before) and not resume:
                if not overwrite:
                    raise _refuse_existing(self.path, self.before)
                if not dry_run:
                    self._move_aside()
        except BaseException:
            self.release()
            raise
        finally:
            if dry_run:
                self.release()
        if not dry_run:  # the holder's PID, for the message a refused run prints
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def _lock(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot create the run folder {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.path} is in use by another run (PID {holder}); wait for it to finish or "
                            f"choose another output_dir") from None
        self._fd = fd

    def _move_aside(self) -> None:
        """The old run goes to ``<name>.replaced-<time>`` beside it; this run starts in an empty folder."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
        suffix = 1
        while target.exists():
            target, suffix = self.path.with_name(f"{self.path.name}.replaced-{stamp}-{suffix}"), suffix + 1
        old_fd = self._fd
        os.rename(self.path, target)  # our lock travels with it and keeps the old run ours until we hold the new
        self._fd = None
        self._lock()
        os.close(old_fd)
        self.moved_to = target

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (unlinking it would race a waiter)
            self._fd = None
