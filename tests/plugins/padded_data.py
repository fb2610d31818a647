"""A test plugin: variable-length sequences padded per micro-batch, in a fixed order; under DDP rank r
reads rows r, r+W, ... of every global batch, so ranks see different numbers of real tokens."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"data": {"padded-sequences": {"options": {"batch_size": {"type": "int", "default": 8}}}}},
}

import types  # noqa: E402

import torch  # noqa: E402

from apt_sdk import hookimpl  # noqa: E402

LENGTHS = [3, 17, 8, 30, 5, 22, 12, 9, 27, 4, 15, 6, 19, 11, 25, 7, 2, 14, 29, 10,
           16, 5, 21, 8, 13, 26, 3, 18, 9, 24, 6, 12, 28, 4, 20, 7, 15, 10, 23, 11]


class PaddedSequences:
    block_size = 31

    def __init__(self, batch_size):
        g = torch.Generator().manual_seed(0)
        self.seqs = [torch.randint(4, 50, (n + 1,), generator=g) for n in LENGTHS]
        self.batch_size, self.rank, self.world_size = batch_size, 0, 1
        self.tokenizer = types.SimpleNamespace(vocab_size=50, pad_id=0, bos_id=1, eos_id=2,
                                               save=lambda directory: None)

    def configure_distributed(self, rank, world_size):
        self.rank, self.world_size = rank, world_size

    def steps_per_epoch(self, epoch=0):
        return len(self.seqs) // (self.batch_size * self.world_size)

    def train_batches(self, epoch, start=0):
        size = self.batch_size * self.world_size
        for i in range(start, self.steps_per_epoch()):
            rows = self.seqs[i * size:(i + 1) * size][self.rank::self.world_size]
            width = max(len(r) for r in rows) - 1
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            labels = torch.full((len(rows), width), -100)
            for j, row in enumerate(rows):
                ids[j, :len(row) - 1], labels[j, :len(row) - 1] = row[:-1], row[1:]
            yield {"input_ids": ids, "attention_mask": labels != -100, "labels": labels}

    def val_batches(self):
        return iter(())


@hookimpl
def register_data(register):
    register("padded-sequences", lambda options, context: PaddedSequences(**options))
