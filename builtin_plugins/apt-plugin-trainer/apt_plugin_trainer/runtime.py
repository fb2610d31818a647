"""Where and how the model runs: the device, the process group, the module that trains (the model itself,
compiled, DDP-wrapped or FSDP-sharded), the precision's autocast, the forward and loss of one batch, the
model's weights whole (gathered under FSDP), and the agreement of the ranks on a failure."""

from __future__ import annotations

import gc
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from apt_sdk import BuildContext, UserError

from .distributed import Distributed, shard_model, to_device
from .failures import DistributedErrorHandler
from .options import TrainerOptions
from .state_dicts import dcp, load_model_state


class Runtime:
    def __init__(self, options: TrainerOptions, context: BuildContext) -> None:
        self.dist = Distributed(options.device)
        self.device = self.dist.device
        self.errors = DistributedErrorHandler(device=self.device)  # a failing rank must not leave the others hanging
        if options.deterministic:
            torch.use_deterministic_algorithms(True)
        if options.precision == "fp16" and self.device.type != "cuda":
            raise UserError("[trainer] precision = \"fp16\" needs CUDA (GradScaler); use \"bf16\" on CPU")
        self.precision, self.loss = options.precision, context.loss
        self.model = context.model.to(self.device)
        self.model_class = type(self.model)  # FSDP makes the model an instance of a subclass it creates
        if hasattr(context.data, "configure_distributed"):
            context.data.configure_distributed(self.dist.rank, self.dist.world_size)
        self.fsdp = options.strategy == "fsdp"
        self.train_module: Any
        if self.fsdp:
            if not torch.distributed.is_initialized():
                raise UserError("[trainer] strategy = \"fsdp\" runs under torchrun: add --nproc-per-node N")
            shard_model(self.model)
            self.train_module = self.model
        else:
            self.train_module = torch.compile(self.model) if options.compile else self.model
            if self.dist.enabled:
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.train_module = torch.nn.parallel.DistributedDataParallel(self.train_module, device_ids=ids)
        # a short last batch of an epoch would change the compiled graph's batch size and recompile it
        # (~7 s on CPU for a small model, more than the whole epoch's tail is worth): it runs eager instead
        self.eager_short_batches = options.compile and not self.fsdp and not self.dist.enabled
        self.compiled_rows: int | None = None
        self.seq_len: int | None = None  # of the first batch, for MFU

    def autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def forward_loss(self, module: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss_sum, count)`` of one batch on ``module``, both float tensors on the device: a loss may count its
        targets as a tensor or as an int (the Loss protocol)."""
        batch = {k: to_device(v, self.device) for k, v in batch.items()}
        if self.seq_len is None:
            self.seq_len = next((v.shape[1] for v in batch.values() if v.dim() >= 2), None)
        with self.autocast():
            outputs = module(**{k: v for k, v in batch.items() if k != "labels"})
        loss_sum, count = self.loss(outputs, batch)
        return loss_sum.float(), torch.as_tensor(count, device=self.device).float()

    def module_for(self, batch: dict) -> Any:
        """The module that trains on ``batch``: the uncompiled model for a batch with fewer rows than the first
        one compiled, the training module otherwise."""
        if not self.eager_short_batches:
            return self.train_module
        rows = next((v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim()), None)
        if self.compiled_rows is None:
            self.compiled_rows = rows
            return self.train_module
        return self.model if rows is not None and rows < self.compiled_rows else self.train_module

    def model_state(self, copy: bool = False) -> dict:
        """The model's weights, whole (gathered on rank 0 under FSDP, a collective; the other ranks get an empty
        dict); ``copy``: on the CPU, detached from the training run's tensors."""
        if self.fsdp:
            helpers = dcp()
            return helpers.get_model_state_dict(self.model, options=helpers.StateDictOptions(
                full_state_dict=True, cpu_offload=True))
        weights = self.model.state_dict()
        return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()} if copy else weights

    def load_model_state(self, weights: dict, path: Path) -> None:
        """Whole weights, as ``model_state`` gives them, into the model (broadcast from rank 0 under FSDP)."""
        if self.fsdp:
            helpers = dcp()
            helpers.set_model_state_dict(self.model, weights, options=helpers.StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=True))
        else:
            load_model_state(self.model, weights, path)

    def close(self) -> None:
        """Let go of the DDP wrapper, then of the process group. DDP holds the group: left alive until the
        interpreter exits, gloo's threads may still hold work with Python tensors during finalisation
        and abort the process ("terminate called without an active exception")."""
        self.train_module = None
        if self.dist.started_group:
            gc.collect()
        self.dist.close()
