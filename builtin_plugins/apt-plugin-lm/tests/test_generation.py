"""Generation with a KV cache: the same tokens as recomputing every position, in both attention modes; and
batches of sequences of different lengths (left-padded caches, rows joining and leaving) that give each row
what it gives alone, so padding never changes a result."""

import pytest
import torch

from apt_plugin_lm.generation import Decoder, KVBatch
from apt_plugin_lm.model import APTConfig, APTLargeModel

MODES = ["autopoietic", "sdpa"]


def model_of(mode: str, max_seq_len: int = 24, **kw) -> APTLargeModel:
    torch.manual_seed(0)
    config = APTConfig(vocab_size=40, d_model=32, num_heads=4, num_layers=2, d_ff=64, max_seq_len=max_seq_len,
                       attention=mode, **kw)
    model = APTLargeModel(config).eval()
    with torch.no_grad():  # away from init: the refinement and the temperature really act
        for name, p in model.named_parameters():
            if name.endswith(".gate"):
                p.fill_(1.5)
            if name.endswith(".tau"):
                p.fill_(1.3)
            if name.endswith((".q.weight", ".k.weight")):
                p.mul_(10)  # scores of order 1, where the refinement's MLP is far from its value at 0
            if name == "tok.weight":
                p.mul_(40)  # far from uniform logits, so a greedy choice is never a near tie
    return model


@pytest.mark.parametrize("mode", MODES)
def test_the_cache_gives_the_tokens_of_recomputing_every_position(mode):
    model = model_of(mode)
    prompt = torch.randint(4, 40, (3, 5))
    cached = model.generate(prompt, max_length=20, do_sample=False)
    recomputed = model.generate(prompt, max_length=20, do_sample=False, use_cache=False)
    assert cached.shape == (3, 20) and torch.equal(cached, recomputed)
    # past max_seq_len the window slides: every position changes, so from there it recomputes, as before
    long = model.generate(prompt, max_length=40, do_sample=False)
    assert torch.equal(long, model.generate(prompt, max_length=40, do_sample=False, use_cache=False))
    # sampling draws the same tokens from the same generator
    sampled = [model.generate(prompt, max_length=20, top_k=8, generator=torch.Generator().manual_seed(5),
                              use_cache=cache) for cache in (True, False)]
    assert torch.equal(*sampled)


def test_the_cache_of_an_encoder_decoder_keeps_the_sources_keys():
    torch.manual_seed(0)
    model = APTLargeModel(APTConfig(vocab_size=40, d_model=32, num_heads=4, num_layers=2, num_encoder_layers=1,
                                    max_seq_len=24)).eval()
    src, prompt = torch.randint(4, 40, (2, 9)), torch.randint(4, 40, (2, 3))
    cached = model.generate(prompt, max_length=15, do_sample=False, src_tokens=src)
    assert torch.equal(cached, model.generate(prompt, max_length=15, do_sample=False, src_tokens=src,
                                              use_cache=False))
    with pytest.raises(ValueError, match="pass src_tokens"):
        model.generate(prompt, max_length=15)


def alone(model: APTLargeModel, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and the logits before each, for one sequence by itself."""
    batch, logits = KVBatch.prefill(Decoder.of(model), [prompt])
    tokens, seen = [], [logits[0]]
    for _ in range(steps):
        tokens.append(int(logits[0].argmax()))
        logits = batch.step(torch.tensor(tokens[-1:]))
        seen.append(logits[0])
    return tokens, seen


@pytest.mark.parametrize("mode", MODES)
def test_rows_of_different_lengths_joining_and_leaving_give_what_each_gives_alone(mode):
    """Three prompts of 2, 7 and 4 tokens; the third joins after two steps, the first leaves after four.
    Each row's logits at every step equal its own (to float rounding) and its greedy tokens are its own;
    when the longest row leaves, the columns that are now padding for every row are dropped."""
    model = model_of(mode)
    prompts = [[5, 9], [7, 3, 11, 4, 20, 6, 8], [12, 30, 2, 17]]
    expected = [alone(model, p, 10) for p in prompts]
    decoder = Decoder.of(model)
    batch, logits = KVBatch.prefill(decoder, prompts[:2])
    rows, made, seen = [0, 1], {0: [], 1: [], 2: []}, {0: [logits[0]], 1: [logits[1]], 2: []}
    for step in range(10):
        if step == 2:
            joining, first = KVBatch.prefill(decoder, prompts[2:])
            batch.extend(joining)
            logits = torch.cat([logits, first])
            rows.append(2)
            seen[2].append(first[0])
        if step == 4:
            batch.keep([1, 2])  # row 0 (prompt 0) leaves
            logits, rows = logits[1:], rows[1:]
        chosen = logits.argmax(-1)
        for row, token in zip(rows, chosen.tolist(), strict=True):
            made[row].append(token)
        logits = batch.step(chosen)
        for i, row in enumerate(rows):
            seen[row].append(logits[i])
    assert batch.mask.shape[1] == max(len(prompts[i]) + len(made[i]) for i in (1, 2))  # no all-padding column
    for row, (tokens, logits_alone) in enumerate(expected):
        n = len(made[row])
        assert made[row] == tokens[:n], f"row {row}"
        for t in range(n):
            torch.testing.assert_close(seen[row][t], logits_alone[t], atol=2e-5, rtol=1e-5, msg=f"row {row} step {t}")


@pytest.mark.parametrize("mode", MODES)
def test_padded_keys_never_count_in_attention_or_in_the_refinements_entropy(mode):
    """Rows padded by 1 to 15 columns, their padded keys filled with large values: each row's logits are
    those of the row alone. (Counting the padded keys as visible in the entropy's normalisation, or letting
    the softmax see them, changes the logits by far more than the tolerance.)"""
    model = model_of(mode)
    short, long = [3, 8, 5], list(range(4, 22))
    _, expected = alone(model, short, 3)
    batch, logits = KVBatch.prefill(Decoder.of(model), [short, long])
    for cache in batch.caches:  # the padding's keys and values must not matter, whatever they hold
        for name in ("k", "v"):
            cache["self"][name][0, :, : len(long) - len(short)] = 50.0
    got = [logits[0]]
    for token in alone(model, short, 3)[0]:
        got.append(batch.step(torch.tensor([token, 1]))[0])
    for mine, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=1e-5)


def test_a_batch_refuses_what_it_cannot_hold():
    model = model_of("sdpa", max_seq_len=8)
    decoder = Decoder.of(model)
    with pytest.raises(ValueError, match="exceeds max_seq_len 8"):
        KVBatch.prefill(decoder, [list(range(4, 13))])
    with pytest.raises(ValueError, match="at least one token"):
        KVBatch.prefill(decoder, [[5], []])
    batch, _ = KVBatch.prefill(decoder, [list(range(4, 12))])
    with pytest.raises(ValueError, match="already 8 tokens long"):
        batch.step(torch.tensor([5]))
    with pytest.raises(TypeError, match="no APT decoder blocks"):
        Decoder.of(torch.nn.Linear(2, 2))
