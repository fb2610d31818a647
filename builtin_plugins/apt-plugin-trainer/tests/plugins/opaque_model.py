"""A test plugin: the APT language model behind a module that says nothing of how it is rebuilt (no ``config``,
no ``from_config``), as a third party's model may be."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"model": {"opaque-lm": {"options": {"d_model": {"type": "int"}, "num_heads": {"type": "int"},
                                                     "num_layers": {"type": "int"}, "d_ff": {"type": "int"}}}}},
}

import torch  # noqa: E402

from apt_plugin_lm.model import APTConfig, APTLargeModel  # noqa: E402
from apt_sdk import hookimpl  # noqa: E402


class OpaqueLM(torch.nn.Module):
    def __init__(self, vocab_size: int, **shape: int) -> None:
        super().__init__()
        self.layers = APTLargeModel(APTConfig(vocab_size=vocab_size, **shape))

    def forward(self, **batch):
        return self.layers(**batch)


@hookimpl
def register_models(register):
    register("opaque-lm", lambda options, context: OpaqueLM(context.data.tokenizer.vocab_size, **options))
