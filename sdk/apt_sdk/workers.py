"""Loader worker processes that a stop signal does not kill mid-step."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial


def loader_worker_init(then: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A ``worker_init_fn`` for a ``torch.utils.data.DataLoader`` a data module runs with workers.

    ``timeout``, batch schedulers and Ctrl-C signal the whole process group. A worker killed by that
    signal makes the DataLoader raise in the training process in the middle of a step, so the step is
    neither finished nor saved. Workers started with this leave the group: the signal reaches only the
    training process, which finishes its step, saves, and stops its workers itself. An orphaned worker
    still exits, because torch's worker watchdog sees its parent go.

    :param then: the data module's own ``worker_init_fn``, called after, with the worker's id.

    New in apt-kernel-sdk 0.1.1: a plugin that uses it requires ``apt-kernel-sdk>=0.1.1``.
    """
    return partial(_leave_process_group, then)


def _leave_process_group(then: Callable[[int], None] | None, worker_id: int) -> None:
    os.setpgrp()
    if then is not None:
        then(worker_id)
