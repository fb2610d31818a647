"""The APT language model: a decoder-only causal transformer with autopoietic attention, plus an
optional encoder for sequence-to-sequence, read top to bottom. Its two autograd functions are in
``functions.py``; generation (the KV cache, sampling, batches of sequences of different lengths) in
``generation.py``.

Autopoietic attention refines attention logits with a learned transform of the logits themselves:
the head-mean of the scores goes through an elementwise 1->h->1 MLP, is scaled by a learned gate and
by the normalised entropy of each query's head-mean attention (diffuse rows are refined more), added
back, and everything is divided by a learnable temperature clamped to [1, 2]. The gate starts at 0 and
the temperature at 1, so at initialisation it equals standard attention and can only learn to help.

It is batched tensor algebra with no loop over batch or heads: the head-mean is taken from the
per-head scores, the refinement is one additive bias shared by the heads, and the temperature is
folded into q. Scores, refinement and softmax run in float32 so bf16 stays stable; masked positions
get -inf after refinement and the entropy uses masked probabilities, so no position sees the future.
With attention = "sdpa" the same weights run through fused scaled_dot_product_attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import APTConfig  # also imported from here: apt_plugin_lm.model.APTConfig is the public path
from .functions import ClampWithGradient, ElementwiseMLP
from .saving import Saving

# causal explicit attention is computed in up to MAX_QUERY_BLOCKS blocks of query rows of at least
# MIN_BLOCK_ROWS, each against only the keys it can see: 4 blocks compute 62.5% of the [T, S] scores
MIN_BLOCK_ROWS, MAX_QUERY_BLOCKS = 64, 4


class Attention(nn.Module):
    """Multi-head attention, plain (SDPA) or autopoietic; self- or cross-attention."""

    def __init__(self, config: APTConfig, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.h, self.dk = config.num_heads, config.d_model // config.num_heads
        self.causal, self.cross, self.mode = causal, cross, config.attention
        self.q = nn.Linear(config.d_model, config.d_model)
        # no key bias: it adds the same q.b to every logit of a row, which softmax ignores, so its true
        # gradient is zero and an optimizer would only amplify rounding noise in it (Whisper drops it too)
        self.k = nn.Linear(config.d_model, config.d_model, bias=False)
        self.v = nn.Linear(config.d_model, config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout
        if self.mode == "autopoietic":
            hidden = config.refine_hidden
            self.refine_in = nn.Parameter(torch.randn(hidden) * 0.5)
            self.refine_in_bias = nn.Parameter(torch.zeros(hidden))
            self.refine_out = nn.Parameter(torch.randn(hidden) / hidden)
            # 1-element rather than scalar parameters: FSDP cannot shard 0-d tensors
            self.gate = nn.Parameter(torch.zeros(1))  # 0: identical to standard attention at init
            self.tau = nn.Parameter(torch.full((1,), float(config.init_tau)))
            self.tau_min, self.tau_max = config.tau_min, config.tau_max
        self.last_attention: torch.Tensor | None = None  # set when record_attention is on
        self.record_attention = False

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                key_padding: torch.Tensor | None = None, cache: dict | None = None,
                memory_index: torch.Tensor | None = None) -> torch.Tensor:
        """``cache``: a dict kept across calls while generating; keys and values of the tokens seen so
        far (self-attention) or of the memory (cross-attention) are kept there, so ``x`` need hold only
        the new tokens. Exact: the refinement of a query row depends only on that row's scores.

        ``memory_index [B]``: row b of ``x`` attends to ``memory[memory_index[b]]``, so rows that share a
        memory (many questions about one image) have its keys and values projected once."""
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.h, self.dk).transpose(1, 2)
        if cache is not None and self.cross and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            source = memory if self.cross else x
            k, v = (t.view(source.shape[0], -1, self.h, self.dk).transpose(1, 2)
                    for t in (self.k(source), self.v(source)))
            if memory_index is not None:
                k, v = k.index_select(0, memory_index), v.index_select(0, memory_index)  # backward: index_add
            if cache is not None:
                if "k" in cache:
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        if self.mode == "autopoietic" or self.record_attention:
            y = self._explicit_attention(q, k, v, self._mask(T, k.shape[2], key_padding, x.device))
        else:
            # plain causal attention (no padding, no cache offset) as is_causal rather than a mask: with any
            # attn_mask, CUDA SDPA cannot use its flash kernel, and the CPU kernel computes the masked half too
            causal = self.causal and key_padding is None and T == k.shape[2]
            mask = None if causal else self._mask(T, k.shape[2], key_padding, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, C))

    def _explicit_attention(self, q, k, v, mask):
        """Causal attention by blocks of query rows, each against the keys up to its last row only.

        Exact: softmax, the entropy and the refinement are all per query row, and the keys a block
        leaves out are masked for every row in it. Explicit attention cannot skip the masked half of
        [T, S] as fused SDPA does; this skips most of it (the hidden part of the diagonal blocks stays)."""
        T, S = q.shape[2], k.shape[2]
        blocks = min(MAX_QUERY_BLOCKS, T // MIN_BLOCK_ROWS) if self.causal and not self.record_attention else 1
        if blocks < 2:
            return self._attend(q, k, v, mask)
        rows, outs = -(-T // blocks), []
        for start in range(0, T, rows):
            end = min(T, start + rows)
            keys = S - T + end  # the T queries are the last T of the S positions
            outs.append(self._attend(q[:, :, start:end], k[:, :, :keys], v[:, :, :keys], mask[..., start:end, :keys]))
        return torch.cat(outs, dim=2)

    def _attend(self, q, k, v, mask):
        """Attention with the probabilities in hand: needed for the refinement and for recording maps.

        A learned logit bias needs its gradient, which fused SDPA cannot give (it falls back to an
        unfused path); doing it here lets the head-mean reuse the per-head scores instead of a
        second Q.K^T product."""
        scale = 1.0 / math.sqrt(self.dk)
        if self.mode == "autopoietic":
            tau = ClampWithGradient.apply(self.tau, self.tau_min, self.tau_max)
            scale = scale / tau  # (scores + refinement) / tau: tau folded into q and into the bias
        scores = ((q * scale) @ k.transpose(-2, -1)).float()  # [B, H, T, S], scaled on the small side
        # -inf where masked, added rather than masked_fill'ed: a broadcast add is vectorised, a broadcast
        # boolean fill is not (5-10x slower on CPU), and softmax gives masked logits exactly 0 gradient
        hidden = None if mask is None else torch.zeros(mask.shape, device=scores.device).masked_fill_(
            ~mask, float("-inf"))
        if self.mode == "autopoietic":
            # the head-mean of the scores before the 1/tau: a sum, so its backward is a broadcast view
            bias = self._refinement(scores.sum(dim=1, keepdim=True) * (tau / self.h), hidden, mask, tau)
            if hidden is not None:  # masked after dividing by tau: d(-inf / tau)/d tau would be NaN
                bias = bias + hidden
            scores = scores.add_(bias)  # in place: nothing saved for backward reads the raw scores
        elif hidden is not None:
            scores = scores.add_(hidden)
        probs = scores.softmax(dim=-1)
        if self.record_attention:
            self.last_attention = probs.detach()
        if self.training and self.dropout > 0:
            probs = F.dropout(probs, self.dropout)
        return probs.to(v.dtype) @ v

    def _mask(self, T: int, S: int, key_padding: torch.Tensor | None, device) -> torch.Tensor | None:
        mask = None
        if self.causal:  # the T queries are the last T of the S positions (all of them, without a cache)
            mask = torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)[None, None]
        if key_padding is not None:  # [B, S], True = real token
            pad = key_padding[:, None, None, :].bool()
            mask = pad if mask is None else mask & pad
            if not self.cross:  # a query may always see itself, so no row is empty (padding rows)
                mask = mask | torch.eye(S, dtype=torch.bool, device=device)[S - T:][None, None]
        return mask

    def _refinement(self, mean: torch.Tensor, hidden: torch.Tensor | None, mask: torch.Tensor | None,
                    tau: torch.Tensor) -> torch.Tensor:
        """Logit bias / tau, [B, 1, T, S], shared by the heads, from the head-mean scores (float32)."""
        refinement = ElementwiseMLP.apply(mean, self.refine_in.float(), self.refine_in_bias.float(),
                                          self.refine_out.float())
        with torch.no_grad():  # the entropy only weighs the refinement: no gradient, half the cost
            masked = mean if hidden is None else mean + hidden
            p = masked.softmax(-1)
            # H = logsumexp(x) - sum(p * x) and logsumexp(x) = max(x) - log(max(p)): no per-element log
            # (torch.special.entr is 4x slower than softmax here); p = 0 where masked, and x is finite
            entropy = masked.amax(-1, keepdim=True) - p.amax(-1, keepdim=True).log()
            entropy -= torch.linalg.vecdot(p, mean).unsqueeze(-1)  # [B, 1, T, 1]
            visible = mask.sum(-1, keepdim=True) if mask is not None else torch.tensor(mean.shape[-1])
            weight = entropy / torch.log(visible.float().clamp(min=2))  # 0 = focused, 1 = uniform
        return (self.gate / tau * weight) * refinement  # the small factors first: one pass over [T, S]


class MLP(nn.Module):
    def __init__(self, config: APTConfig) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(config.d_model, config.d_ff), nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-norm transformer block; decoder blocks of a seq2seq model add cross-attention."""

    def __init__(self, config: APTConfig, causal: bool, cross: bool) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(config.d_model), Attention(config, causal)
        self.cross = Attention(config, causal=False, cross=True) if cross else None
        self.ln_cross = nn.LayerNorm(config.d_model) if cross else None
        self.ln2, self.mlp = nn.LayerNorm(config.d_model), MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, padding=None, memory=None, memory_padding=None, cache: dict | None = None,
                memory_index: torch.Tensor | None = None):
        """``cache``: ``{}`` to start generating with a KV cache, then the same dict for each new token.
        ``memory_index``: row b reads ``memory[memory_index[b]]`` (``Attention.forward``)."""
        self_cache = cross_cache = None
        if cache is not None:
            self_cache, cross_cache = cache.setdefault("self", {}), cache.setdefault("cross", {})
        x = x + self.dropout(self.attn(self.ln1(x), key_padding=padding, cache=self_cache))
        if self.cross is not None:
            x = x + self.dropout(self.cross(self.ln_cross(x), memory, key_padding=memory_padding, cache=cross_cache,
                                            memory_index=memory_index))
        return x + self.mlp(self.ln2(x))


class APTLargeModel(Saving, nn.Module):
    """Decoder-only causal LM; with ``num_encoder_layers > 0`` and ``src_tokens`` an encoder-decoder. Saved and
    rebuilt by ``saving.py``: ``save_pretrained``, ``from_pretrained``, ``from_config``."""

    def __init__(self, config: APTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        seq2seq = config.num_encoder_layers > 0
        self.encoder = nn.ModuleList(Block(config, causal=False, cross=False)
                                     for _ in range(config.num_encoder_layers))
        self.ln_enc = nn.LayerNorm(config.d_model) if seq2seq else None
        self.decoder = nn.ModuleList(Block(config, causal=True, cross=seq2seq) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self.init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok.weight

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        """The LM's initialisation of one module, for ``apply``: linear and embedding weights N(0, 0.02), biases 0
        (the multimodal model starts its decoder as the LM does)."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_seq_len {self.config.max_seq_len}")
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.drop(self.tok(ids) + self.pos(positions))

    def encode(self, src_tokens: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.encoder:
            raise ValueError("this APT model has no encoder (num_encoder_layers = 0); src_tokens cannot be used")
        x = self._embed(src_tokens)
        for block in self.encoder:
            x = block(x, padding=src_mask)
        return self.ln_enc(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                src_tokens: torch.Tensor | None = None, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V]; position t depends only on tokens <= t (and on all of ``src_tokens``)."""
        memory = self.encode(src_tokens, src_mask) if src_tokens is not None else None
        if memory is None and self.encoder:
            raise ValueError("this APT model is an encoder-decoder: pass src_tokens")
        x = self._embed(input_ids)
        for block in self.decoder:
            x = block(x, padding=attention_mask, memory=memory, memory_padding=src_mask)
        return self.lm_head(self.ln_f(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, forward and backward (PaLM appendix B, as nanoGPT's estimate_mfu):
        6 per weight (position embeddings are a lookup, not a matmul) plus 12 * layers * d_model * T for
        the attention scores and their weighted sum. The autopoietic refinement's extra work is not
        counted: MFU measures useful model FLOPs, not the method's overhead."""
        weights = self.num_parameters() - self.pos.weight.numel()
        layers = self.config.num_layers + self.config.num_encoder_layers
        return 6.0 * weights + 12.0 * layers * self.config.d_model * seq_len

    def generate(self, input_ids: torch.Tensor, max_length: int = 100, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                 do_sample: bool = True, eos_token_id: int | None = None,
                 src_tokens: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Extend ``input_ids`` [B, T] to at most ``max_length`` tokens in total (``apt_plugin_lm.generation``).

        :param use_cache: keep the keys and values of earlier tokens instead of recomputing them for every
            new token; the same tokens, faster (``bench/bench_serve.py`` measures it)."""
        from .generation import generate

        return generate(self, input_ids, max_length, temperature, top_k, top_p, repetition_penalty, do_sample,
                        eos_token_id, src_tokens, generator, use_cache)

    def set_record_attention(self, on: bool = True) -> None:
        for module in self.modules():
            if isinstance(module, Attention):
                module.record_attention = on
