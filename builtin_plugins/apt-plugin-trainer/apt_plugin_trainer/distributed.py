"""Where training runs: the device, and the process group under torchrun (DDP, FSDP)."""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

import torch
import torch.distributed as dist

from apt_sdk import OptionError, UserError

KNOWN_DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
# Modules whose functions take ``group=dist.group.WORLD`` as a default argument: imported after the group
# exists (DDP imports the first lazily), they pin it forever, so destroy_process_group cannot free it and
# gloo's threads outlive the run; at interpreter exit they then abort a rank now and then ("terminate
# called without an active exception"). Imported before the group exists, their default is None.
WORLD_DEFAULT_MODULES = ("torch.distributed.nn.functional", "torch.distributed.optim.zero_redundancy_optimizer",
                         "torch.distributed.fsdp.sharded_grad_scaler")


def check_device(name: str) -> None:
    """At build time, so a run that cannot start leaves nothing behind."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise OptionError("device", f"unknown device {name!r}; devices: {', '.join(KNOWN_DEVICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("device", f"{name!r} but no CUDA device is available (use \"auto\" or \"cpu\")")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise OptionError("device", f"{name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise OptionError("device", "'mps' but no MPS device is available")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"[trainer] device = {name!r} but no CUDA device is available")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device(name)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch tensor onto the training device without stalling the host: a CUDA copy from pageable memory
    waits for the copy to finish, one from pinned memory is queued behind the running step."""
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()  # from torch's caching host allocator: a memcpy, no cudaHostAlloc per step
    return tensor.to(device, non_blocking=True)


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2: shard every block of the model's layer lists, then the rest, across all ranks."""
    from torch.distributed.fsdp import fully_shard

    for child in model.modules():
        if isinstance(child, torch.nn.ModuleList):
            for block in child:
                fully_shard(block)
    fully_shard(model)


class Distributed:
    """The process group under torchrun (RANK/WORLD_SIZE set), or a single process."""

    def __init__(self, device_option: str) -> None:
        self.rank, self.world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = pick_device(device_option, self.local_rank)
        self.started_group = False
        # under torchrun (RANK set) the group exists even for one process: FSDP needs it
        if "RANK" in os.environ and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            for module in WORLD_DEFAULT_MODULES:
                importlib.import_module(module)
            dist.init_process_group(backend)
            self.started_group = True

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, obj: Any) -> list:
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.started_group:
            dist.destroy_process_group()
