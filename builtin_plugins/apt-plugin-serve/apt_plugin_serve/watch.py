"""``--watch``: when a new export appears in the model folder, load it and hand it to the engine.

The folder is polled (sizes and modification times of its files). A change is loaded once the files have
stood still for one more poll, so a model being written is not read half-way; loading happens in this
thread, while the engine goes on serving, and the engine switches between two decode steps (running
requests continue on the new model). A model that cannot be loaded, or whose kind or tokenizer differs
(the running requests' tokens would mean something else), is reported and the old one kept.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from apt_sdk import UserError

from .engine import Engine
from .models import load, tokenizer_signature, watch_signature

log = logging.getLogger("apt_plugin_serve")


class Watcher:
    def __init__(self, engine: Engine, folder: Path, interval: float = 0.5) -> None:
        self.engine, self.folder, self.interval = engine, Path(folder), interval
        self._stop = threading.Event()
        self._seen = watch_signature(self.folder)
        self._thread = threading.Thread(target=self._loop, name="apt-serve-watch", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        changed = None
        while not self._stop.wait(self.interval):
            now = watch_signature(self.folder)
            if now is None or now == self._seen:
                changed = None
                continue
            if now != changed:  # still being written, perhaps: look again at the next poll
                changed = now
                continue
            self._seen, changed = now, None
            self._reload()

    def _reload(self) -> None:
        current = self.engine.served
        try:
            new = load(self.folder)
        except (UserError, OSError, ValueError, RuntimeError) as exc:
            log.warning("serve --watch: %s changed but cannot be loaded (%s); still serving %s", self.folder, exc,
                        current.fingerprint)
            return
        if new.fingerprint == current.fingerprint:
            return
        if tokenizer_signature(new) != tokenizer_signature(current):
            log.warning("serve --watch: the new model in %s is a %s with another tokenizer; running requests could "
                        "not continue on it, so %s stays (restart the server to serve it)", self.folder, new.kind,
                        current.fingerprint)
            return
        self.engine.replace(new)
        log.warning("serve --watch: switching to the new export in %s (%s -> %s)", self.folder, current.fingerprint,
                    new.fingerprint)
