"""``apt_sdk.loader_worker_init``: DataLoader workers leave the training process's group, so a stop signal
to the group reaches only the trainer (which saves), and a data module's own ``worker_init_fn`` still runs.
The whole path (SIGTERM to the group mid-run, the temp checkpoint saved) is tested with the multimodal
plugin, the one builtin data module with workers."""

import os

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
