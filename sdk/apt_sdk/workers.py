"""Loader worker processes that a stop signal does not kill mid-step."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TypeVar

T = TypeVar("T")
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def loader_worker_init(then: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A ``worker_init_fn`` for a ``torch.utils.data.DataLoader`` a data module runs with workers.

    ``timeout``, batch schedulers and Ctrl-C signal the whole process group. A worker killed by that
    signal makes the DataLoader raise in the training process in the middle of a step, so the step is
    neither finished nor saved. Workers started with this leave the group: the signal reaches only the
    training process, which finishes its step, saves, and stops its workers itself. An orphaned worker
    still exits, because torch's worker watchdog sees its parent go. Start the loader's workers with
    :func:`start_loader`, or a signal that comes while a worker starts, before it has left the group,
    still kills it.

    :param then: the data module's own ``worker_init_fn``, called after, with the worker's id.

    New in apt-kernel-sdk 0.1.1: a plugin that uses it requires ``apt-kernel-sdk>=0.1.1``.
    """
    return partial(_leave_process_group, then)


def start_loader(loader: Iterable[T]) -> Iterator[T]:
    """``iter(loader)``, with SIGINT and SIGTERM held while the loader's worker processes start.

    A worker inherits the held signals. One sent to the process group while the worker starts waits in
    it, and :func:`loader_worker_init` drops it once the worker has left the group; this process gets its
    own copy as soon as its workers have started. A loader with workers whose ``worker_init_fn`` is not
    :func:`loader_worker_init`'s gets it, chained to its own, so ``yield from start_loader(loader)`` is all
    a data module needs.

    New in apt-kernel-sdk 0.1.1.
    """
    if getattr(loader, "num_workers", 0) > 0 and not _leaves_group(getattr(loader, "worker_init_fn", None)):
        loader.worker_init_fn = loader_worker_init(loader.worker_init_fn)
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "sigtimedwait"):
        return iter(loader)  # signals go to the main thread; a worker drops held ones with sigtimedwait (not macOS)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _leaves_group(function: object) -> bool:
    return isinstance(function, partial) and function.func is _leave_process_group


def _leave_process_group(then: Callable[[int], None] | None, worker_id: int) -> None:
    os.setpgrp()
    if STOP_SIGNALS & signal.pthread_sigmask(signal.SIG_BLOCK, []):  # started by start_loader
        # a stop signal sent to the old group while this worker started was meant for the training process,
        # which has its own copy: take it here (torch's handlers stay as they are), then let signals in
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if then is not None:
        then(worker_id)
