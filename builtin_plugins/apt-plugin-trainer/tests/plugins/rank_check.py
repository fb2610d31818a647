"""A test plugin: after every optimizer step, every rank hashes its parameters; rank 0 records whether
all ranks hold bit-identical parameters."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"callback": {"rank-check": {"options": {"log": {"type": "str"}}}}},
}

import hashlib  # noqa: E402

import torch.distributed as dist  # noqa: E402

from apt_sdk import Callback, hookimpl  # noqa: E402


class RankCheck(Callback):
    def __init__(self, log):
        self.log = log

    def on_train_batch_end(self, trainer, step, metrics):
        digest = hashlib.sha256()
        for tensor in trainer.model.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        world = dist.get_world_size() if dist.is_initialized() else 1
        digests = [None] * world
        if world > 1:
            dist.all_gather_object(digests, digest.hexdigest())
        else:
            digests = [digest.hexdigest()]
        if trainer.is_main:
            with open(self.log, "a") as fh:
                fh.write(f"{step} {world} {'same' if len(set(digests)) == 1 else 'DIFFERENT'}\n")


@hookimpl
def register_callbacks(register):
    register("rank-check", lambda options, context: RankCheck(**options))
