"""A data plugin for throughput benchmarks: batches of random tokens from a fixed pool, endless, so
a run through `apt-kernel run` measures the trainer and the model and not a tokenizer or a disk.
Loaded with `--plugins-dir bench/plugins`."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"data": {"random-tokens": {"summary": "endless random-token batches (benchmarks)", "options": {
        "batch_size": {"type": "int", "default": 16, "min": 1},
        "block_size": {"type": "int", "default": 1024, "min": 1},
        "vocab_size": {"type": "int", "default": 50304, "min": 4}}}}},
}

import types  # noqa: E402

import torch  # noqa: E402

from apt_sdk import hookimpl  # noqa: E402

POOL = 8  # distinct batches, cycled: generating 16 x 1025 tokens per step would cost more than it measures


class RandomTokens:
    def __init__(self, batch_size: int, block_size: int, vocab_size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.batches = [torch.randint(0, vocab_size, (batch_size, block_size + 1), generator=generator)
                        for _ in range(POOL)]
        self.block_size = block_size
        self.tokenizer = types.SimpleNamespace(vocab_size=vocab_size, pad_id=0, bos_id=1, eos_id=2,
                                               save=lambda directory: None)

    def configure_distributed(self, rank: int, world_size: int) -> None:
        """Every rank gets the same pool: throughput, not learning, is measured."""

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return 10**9

    def train_batches(self, epoch: int, start: int = 0):
        index = start
        while True:
            tokens = self.batches[index % POOL]
            index += 1
            yield {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}

    def val_batches(self):
        return iter(())


@hookimpl
def register_data(register):
    register("random-tokens", lambda options, context: RandomTokens(**options))
