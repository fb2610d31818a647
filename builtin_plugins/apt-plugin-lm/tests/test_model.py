"""The APT model: causality in both attention modes, equality with SDPA at init, bf16, generation, I/O."""

import pytest
import torch

from apt_plugin_lm import model as model_module
from apt_plugin_lm.model import APTConfig, APTLargeModel, Attention

MODES = ["autopoietic", "sdpa"]


def small(mode="autopoietic", **kw):
    torch.manual_seed(0)
    config = APTConfig(vocab_size=40, d_model=32, num_heads=4, num_layers=2, d_ff=64, max_seq_len=24,
                       attention=mode, **kw)
    model = APTLargeModel(config).eval()
    with torch.no_grad():  # move away from init so the refinement really contributes
        for name, p in model.named_parameters():
            if name.endswith(".gate"):
                p.fill_(1.5)
            if name.endswith(".tau"):
                p.fill_(1.3)
    return model


@pytest.fixture
def query_blocks(request, monkeypatch):
    """Blocks of 4 query rows, so the 16-token sequences here run the blocked path."""
    if request.param:
        monkeypatch.setattr(model_module, "MIN_BLOCK_ROWS", 4)
    return request.param


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("query_blocks", [False, True], indirect=True)
def test_editing_token_t_plus_1_leaves_logits_up_to_t_unchanged(mode, padded, query_blocks):
    model = small(mode)
    ids = torch.randint(4, 40, (3, 16))
    mask = torch.ones(3, 16, dtype=torch.bool)
    if padded:
        mask[1, 11:] = False  # right padding
        mask[2, 5:] = False
        ids[~mask] = 0
    base = model(ids, attention_mask=mask if padded else None)
    for t in range(15):
        edited = ids.clone()
        edited[:, t + 1] = (edited[:, t + 1] + 7) % 40
        out = model(edited, attention_mask=mask if padded else None)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"position <= {t} saw token {t + 1}"
        assert not torch.allclose(out[0, t + 1:], base[0, t + 1:]), "the edit should matter later on"


def test_refinement_is_active_and_differs_from_plain_attention():
    auto, plain = small("autopoietic"), small("sdpa")
    plain.load_state_dict(auto.state_dict(), strict=False)
    ids = torch.randint(4, 40, (2, 16))
    assert not torch.allclose(auto(ids), plain(ids), atol=1e-4)


def test_equal_to_standard_attention_at_initialisation():
    torch.manual_seed(1)
    auto = APTLargeModel(APTConfig(vocab_size=40, d_model=32, num_heads=4, num_layers=2, max_seq_len=24))
    plain = APTLargeModel(APTConfig(vocab_size=40, d_model=32, num_heads=4, num_layers=2, max_seq_len=24,
                                    attention="sdpa"))
    missing, unexpected = plain.load_state_dict(auto.state_dict(), strict=False)
    assert not missing and all(k.split(".")[-1] in {"gate", "tau", "refine_in", "refine_in_bias", "refine_out"}
                               for k in unexpected)
    ids = torch.randint(0, 40, (2, 20))
    torch.testing.assert_close(auto.eval()(ids), plain.eval()(ids), atol=1e-5, rtol=1e-5)


def test_sdpa_without_padding_takes_the_causal_kernel_and_gives_the_masked_result(monkeypatch):
    """Unpadded causal SDPA passes is_causal instead of a mask (a mask keeps CUDA off its flash kernel)."""
    torch.manual_seed(3)
    model = APTLargeModel(APTConfig(vocab_size=40, d_model=32, num_heads=4, num_layers=2, max_seq_len=24,
                                    attention="sdpa")).eval()
    ids = torch.randint(0, 40, (2, 20))
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: masks.append(k.get("attn_mask")) or sdpa(*a, **k))
    plain = model(ids)
    assert masks == [None, None]
    padded = model(ids, attention_mask=torch.ones(2, 20, dtype=torch.bool))  # all real: the mask path
    assert all(m is not None for m in masks[2:])
    torch.testing.assert_close(plain, padded, atol=1e-5, rtol=1e-5)


def test_gradients_are_finite_and_reach_the_refinement():
    model = small().train()
    ids = torch.randint(4, 40, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 10:] = False
    logits = model(ids, attention_mask=mask)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    gate = model.decoder[0].attn.gate
    assert gate.grad.abs() > 0 and model.decoder[0].attn.refine_in.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", MODES)
def test_bf16_forward_and_backward_are_finite(mode):
    model = small(mode).train()
    ids = torch.randint(4, 40, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    assert torch.isfinite(logits).all()
    logits.float().logsumexp(-1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_gradients_match_fp32_through_the_refinement():
    """Under bf16 autocast the scores, the refinement and the softmax stay in float32, so every gradient of
    the autopoietic model, the refinement's own parameters, gate and temperature included, points the
    same way as in fp32 (cosine > 0.99) and has the same size within 5%."""
    model = small().train()
    ids = torch.randint(4, 40, (4, 16))
    grads = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
        grads[precision] = {name: p.grad.flatten().clone() for name, p in model.named_parameters()}
    for name, exact in grads["fp32"].items():
        low = grads["bf16"][name]
        assert torch.nn.functional.cosine_similarity(low, exact, dim=0) > 0.99, name
        assert abs(low.norm() / exact.norm() - 1) < 0.05, name


def test_generate_options():
    model = small()
    prompt = torch.randint(4, 40, (2, 3))
    greedy = model.generate(prompt, max_length=12, do_sample=False)
    assert greedy.shape == (2, 12) and torch.equal(greedy[:, :3], prompt)
    assert torch.equal(greedy, model.generate(prompt, max_length=12, do_sample=False))
    g = torch.Generator().manual_seed(0)
    sampled = model.generate(prompt, max_length=30, temperature=0.7, top_k=5, top_p=0.9,
                             repetition_penalty=1.3, generator=g)
    assert sampled.shape == (2, 30)  # longer than max_seq_len: the context is cropped
    eos = int(greedy[0, 3])
    stopped = model.generate(prompt[:1], max_length=12, do_sample=False, eos_token_id=eos)
    assert stopped.shape[1] == 4 and stopped[0, -1] == eos


def test_each_sampling_option_does_what_it_says():
    model = small()
    prompt = torch.randint(4, 40, (2, 3))
    greedy = model.generate(prompt, max_length=12, do_sample=False)

    def sample(seed, **options):
        return model.generate(prompt, max_length=12, generator=torch.Generator().manual_seed(seed), **options)

    # top_k = 1, a tiny top_p and a near-zero temperature each leave only the most likely token
    for seed in range(3):
        assert torch.equal(sample(seed, top_k=1), greedy)
        assert torch.equal(sample(seed, top_p=1e-6), greedy)
        assert torch.equal(sample(seed, temperature=1e-4), greedy)
    # plain sampling depends on the generator, and is reproducible with it
    assert torch.equal(sample(1), sample(1)) and not all(torch.equal(sample(s), greedy) for s in range(3))
    # top_k = 2: every sampled token is one of the two most likely at its position
    ids = sample(4, top_k=2, temperature=5.0)
    with torch.no_grad():
        logits = model(ids[:, :-1])
    top2 = logits.topk(2, dim=-1).indices[:, 2:]
    assert (top2 == ids[:, 3:, None]).any(-1).all()
    # a strong repetition penalty makes the greedy continuation avoid tokens it has already produced
    penalised = model.generate(prompt, max_length=12, do_sample=False, repetition_penalty=1e6)
    for row in penalised:
        assert len(set(row[3:].tolist())) == len(row[3:])


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = small()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "config.json").exists()
    loaded = APTLargeModel.from_pretrained(tmp_path / "m").eval()
    ids = torch.randint(0, 40, (1, 10))
    assert torch.equal(model(ids), loaded(ids))
    assert loaded.lm_head.weight is loaded.tok.weight  # tying survives safetensors


def test_config_round_trip_and_errors():
    config = APTConfig(vocab_size=10, d_model=16, num_heads=2)
    assert APTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="divisible"):
        APTConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown APTConfig keys"):
        APTConfig.from_dict({"wat": 1})


def test_seq2seq_encoder_decoder():
    torch.manual_seed(0)
    model = APTLargeModel(APTConfig(vocab_size=40, d_model=32, num_heads=4, num_layers=2, num_encoder_layers=2,
                                    max_seq_len=24)).eval()
    src, tgt = torch.randint(0, 40, (2, 12)), torch.randint(0, 40, (2, 9))
    out = model(tgt, src_tokens=src)
    assert out.shape == (2, 9, 40)
    other_src = src.clone()
    other_src[:, -1] = (other_src[:, -1] + 1) % 40
    assert not torch.allclose(model(tgt, src_tokens=other_src)[:, 0], out[:, 0])  # decoder sees all of src
    with pytest.raises(ValueError, match="pass src_tokens"):
        model(tgt)
    with pytest.raises(ValueError, match="no encoder"):
        small()(tgt, src_tokens=src)


def test_attention_maps_can_be_recorded():
    model = small()
    model.set_record_attention(True)
    model(torch.randint(0, 40, (1, 8)))
    probs = model.decoder[0].attn.last_attention
    assert probs.shape == (1, 4, 8, 8)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4, 8))
    assert probs.triu(1).abs().max() == 0


@pytest.mark.parametrize("attention", ["autopoietic", "sdpa"])
def test_a_padded_row_sees_itself_under_a_kv_cache_as_in_the_full_pass(attention):
    """A query whose own key is padding may still see itself (no empty softmax row). With a cache the T new
    queries are the last T of S keys, so "itself" is column S - T + t, not t."""
    torch.manual_seed(0)
    layer = Attention(APTConfig(d_model=16, num_heads=2, attention=attention), causal=True).eval()
    x = torch.randn(1, 6, 16)
    padding = torch.tensor([[True, True, True, True, False, False]])  # the last two tokens are padding
    full = layer(x, key_padding=padding)
    cache: dict = {}
    first = layer(x[:, :4], key_padding=padding[:, :4], cache=cache)
    rest = layer(x[:, 4:], key_padding=padding, cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_query_blocks_give_the_same_attention_and_gradients_as_one_block(monkeypatch, dtype):
    """Blocked causal attention (15 rows in 4 blocks, the last one short) against the whole [T, S] at once,
    with padding, a row whose own key is padding, and a cache continuing a prefix (the S - T offset)."""
    torch.manual_seed(0)
    layer = Attention(APTConfig(d_model=32, num_heads=4), causal=True).train()
    with torch.no_grad():
        layer.gate.fill_(0.8)
        layer.tau.fill_(1.4)
    x = torch.randn(3, 19, 32)
    padding = torch.ones(3, 19, dtype=torch.bool)
    padding[1, 12:], padding[2, :3] = False, False

    def run(min_rows: int):
        monkeypatch.setattr(model_module, "MIN_BLOCK_ROWS", min_rows)
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            cache: dict = {}
            layer(x[:, :4], key_padding=padding[:, :4], cache=cache)
            out = layer(x[:, 4:], key_padding=padding, cache=cache)  # T = 15 new queries, S = 19 keys
        out.float().square().mean().backward()
        return out.float(), {name: p.grad.clone() for name, p in layer.named_parameters()}

    whole, whole_grads = run(min_rows=1000)
    blocked, blocked_grads = run(min_rows=4)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(blocked, whole, **tolerance)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(blocked_grads[name], grad, atol=1e-6 if dtype == torch.float32 else 1e-3,
                                   rtol=1e-4 if dtype == torch.float32 else 5e-2, msg=name)


def test_the_clamped_temperature_passes_its_gradient_linearly():
    x = torch.tensor([0.9, 1.5, 2.2], requires_grad=True)
    out = model_module.ClampWithGradient.apply(x, 1.0, 2.0)
    assert out.tolist() == [1.0, 1.5, 2.0]
    out.backward(torch.tensor([0.5, -1.0, 2.0]))
    assert x.grad.tolist() == [0.5, -1.0, 2.0]  # linear: micro-batches and ranks may sum their gradients


def test_a_temperature_stepped_below_its_bound_still_gets_gradients():
    """tau starts on its lower bound; its first gradients (or weight decay) step it just below. With a plain
    clamp its gradient was then 0 for good."""
    torch.manual_seed(0)
    layer = Attention(APTConfig(d_model=32, num_heads=4), causal=True)
    with torch.no_grad():
        layer.gate.fill_(0.5)
        layer.tau.fill_(0.98)
    x, direction = torch.randn(2, 12, 32), torch.randn(2, 12, 32)
    (layer(x) * direction).sum().backward()
    assert layer.tau.grad.abs() > 0


def test_the_temperature_may_go_below_one_when_its_bound_allows_and_bad_bounds_are_refused():
    torch.manual_seed(0)
    ids = torch.randint(0, 40, (2, 12))
    outputs = {}
    for low in (1.0, 0.5):
        model = APTLargeModel(APTConfig(vocab_size=40, d_model=32, num_heads=4, num_layers=1, tau_min=low)).eval()
        model.load_state_dict(outputs.get("state", model.state_dict()))
        outputs["state"] = model.state_dict()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".tau"):
                    p.fill_(0.7)
        outputs[low] = model(ids)
    assert not torch.allclose(outputs[1.0], outputs[0.5])  # clamped to 1 there, 0.7 here
    with pytest.raises(ValueError, match="tau_min 2.0 and tau_max 1.5"):
        APTConfig(tau_min=2.0, tau_max=1.5)
    with pytest.raises(ValueError, match="init_tau 0.5 outside"):
        APTConfig(init_tau=0.5)
