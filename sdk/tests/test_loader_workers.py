"""``apt_sdk.loader_worker_init``: DataLoader workers leave the training process's group, so a stop signal
to the group reaches only the trainer (which saves), and a data module's own ``worker_init_fn`` still runs.
``apt_sdk.start_loader``: a signal that comes while a worker starts, before it has left the group, does not
kill it either. The whole path (SIGTERM to the group mid-run, the temp checkpoint saved) is tested with the multimodal
plugin, the one builtin data module with workers."""

import os
import re
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from apt_sdk import loader_worker_init

SEEN: list[int] = []


class WhoAmI(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([os.getpid(), os.getpgrp(), *SEEN])


def _remember(worker_id: int) -> None:
    SEEN.append(100 + worker_id)


def test_workers_get_their_own_process_group_and_the_data_modules_init_still_runs():
    loader = DataLoader(WhoAmI(), batch_size=None, num_workers=1, worker_init_fn=loader_worker_init(_remember))
    pid, group, *seen = next(iter(loader)).tolist()
    assert pid != os.getpid()
    assert group == pid != os.getpgrp()  # the worker leads a group of its own
    assert seen == [100]
    assert SEEN == []  # ran in the worker, not here


def test_without_an_init_of_its_own_only_the_group_changes():
    loader = DataLoader(WhoAmI(), batch_size=None, num_workers=1, worker_init_fn=loader_worker_init())
    pid, group = next(iter(loader)).tolist()
    assert group == pid != os.getpgrp()


# A SIGTERM to the group that reaches a worker while it starts, before its worker_init_fn took it out of the
# group: torch's worker handler, like the default action, kills it for a SIGTERM not sent by its parent, and the
# loader fails mid-step. The worker sends the signal itself from inside that window, so nothing depends on timing.
STARTING = """
import multiprocessing.context as mpc, os, signal, sys
from torch.utils.data import DataLoader
from apt_sdk import loader_worker_init, start_loader

got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))

class Starting(mpc.ForkProcess):
    def run(self):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what torch's worker handler does with this signal
        os.killpg(0, signal.SIGTERM)  # as `timeout` or a batch scheduler would, to the whole group
        super().run()

class Context(mpc.ForkContext):
    Process = Starting

loader = DataLoader(list(range(6)), batch_size=2, num_workers=2, multiprocessing_context=Context(),
                    worker_init_fn=loader_worker_init())
batches = start_loader(loader) if sys.argv[1] == "start_loader" else iter(loader)
print([b.tolist() for b in batches], len(got) >= 1, flush=True)
"""


@pytest.mark.parametrize("start", ["start_loader", "iter"])
def test_a_signal_to_the_group_while_a_worker_starts_reaches_the_trainer_and_spares_the_worker(start):
    run = subprocess.run([sys.executable, "-c", STARTING, start], capture_output=True, text=True, timeout=120,
                         start_new_session=True)  # its own group: the signal stays inside the test
    if start == "iter":  # loader_worker_init alone, as data modules had it: the worker dies, the loader raises
        died = re.search(r"DataLoader worker \(pids?\(?s?\)? \d+\) (exited unexpectedly|is killed by signal)",
                         run.stderr)
        assert run.returncode != 0 and died, run.stdout + run.stderr
    else:
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "[[0, 1], [2, 3], [4, 5]] True"  # every batch, and the trainer's signal
