"""The APT model as a ``transformers`` model: ``APTForCausalLM``, a ``PreTrainedModel`` with ``GenerationMixin``.

It is not a second copy of the model: its modules are the ones ``APTLargeModel`` builds (``model.py``: the
embeddings, the blocks with their autopoietic or SDPA attention, the final norm and the head), under the same
names, so an APT ``model.safetensors`` is its weights file as it is. What this module adds is what
``transformers`` asks of a causal LM: ``position_ids``, an ``attention_mask`` over the cached and the new
tokens, and the keys and values of earlier tokens in a ``transformers`` ``Cache`` (a ``DynamicCache`` unless
one is given), which each block reads and extends through the same dict ``KVBatch`` gives it.

Copied with ``configuration_apt.py`` and the modules they import into every exported model folder (``hub.py``),
where ``transformers`` loads it as remote code: only ``torch``, ``transformers`` and relative imports here.
"""

from __future__ import annotations

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_apt import APTLMConfig
from .model import APTLargeModel


class APTForCausalLM(PreTrainedModel, GenerationMixin):
    """The decoder-only APT model in ``transformers``: ``from_pretrained`` reads an APT model folder (a run's
    ``model/``), ``forward`` gives ``APTLargeModel``'s logits, ``generate`` decodes with a ``Cache``."""

    config_class = APTLMConfig
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"lm_head.weight": "tok.weight"}  # applied when config.tie_word_embeddings

    def __init__(self, config: APTLMConfig) -> None:
        super().__init__(config)
        apt = config.to_apt()
        if apt.num_encoder_layers:
            raise ValueError(f"num_encoder_layers = {apt.num_encoder_layers}: APTForCausalLM is the decoder-only APT "
                             "model (an encoder-decoder one generates from src_tokens; load it with APTLargeModel)")
        for name, module in APTLargeModel(apt).named_children():  # tok, pos, drop, encoder (empty), decoder, ...
            self.add_module(name, module)
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.tok

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.tok = value

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: torch.nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                **kwargs) -> CausalLMOutputWithPast:
        """Logits ``[B, T, V]`` of ``input_ids [B, T]`` after the ``past_key_values``' tokens (the last
        ``logits_to_keep`` positions only, when given); ``attention_mask [B, past + T]``: 1 = a real token."""
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("APTForCausalLM takes input_ids, not inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        length = past + input_ids.shape[1]
        if length > self.config.max_seq_len:
            raise ValueError(f"{length} tokens exceed the model's max_seq_len ({self.config.max_seq_len}): its "
                             "positions are learned up to there")
        if position_ids is None:
            position_ids = torch.arange(past, length, device=input_ids.device)[None]
        padding = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        x = self.drop(self.tok(input_ids) + self.pos(position_ids))
        for index, block in enumerate(self.decoder):
            cache = None
            if past_key_values is not None:  # the block's own cache dict, as KVBatch keeps it
                layer = past_key_values.layers[index] if index < len(past_key_values.layers) else None
                cache = {"self": {"k": layer.keys, "v": layer.values} if past else {}}
            x = block(x, padding=padding, cache=cache)
            if cache is not None:  # hand the new tokens' keys and values to the transformers cache
                past_key_values.update(cache["self"]["k"][:, :, past:], cache["self"]["v"][:, :, past:], index)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(self.ln_f(x[:, keep]))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None)


# transformers' save_pretrained of these classes writes their code beside the weights, with auto_map (as a Hub
# repository holds it): a model fine-tuned and saved with transformers stays loadable where APT is not installed
APTLMConfig.register_for_auto_class()
APTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
