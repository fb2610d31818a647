"""The multimodal model and its parts: the original shapes, causality with and without an image,
modalities present in only some records, real generation, and saving and loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from apt_plugin_lm.model import APTConfig
from apt_plugin_lm.tokenization import CharTokenizer
from apt_plugin_multimodal import CrossModalAttention, MultimodalAPTModel, MultimodalFusion

TINY = {"size": "tiny"}  # a 32 px tower of two layers: the tests' (the default is VisionEncoder()'s ViT-B/32)


def small_model(**kwargs) -> MultimodalAPTModel:
    torch.manual_seed(0)
    config = APTConfig(vocab_size=100, d_model=64, num_heads=4, num_layers=2, max_seq_len=128)
    model = MultimodalAPTModel(config, **{"vision_config": TINY, **kwargs})
    with torch.no_grad():  # the refinement on, so the test sees autopoietic attention at work
        for name, p in model.named_parameters():
            if name.endswith(".gate"):
                p.fill_(1.0)
    return model.eval()


def test_original_shapes():
    attention = CrossModalAttention(d_model=512, num_heads=8)
    fused, weights = attention(torch.randn(10, 2, 512), torch.randn(49, 2, 512))
    assert fused.shape == (10, 2, 512) and weights.shape == (2, 8, 10, 49)
    first, _ = CrossModalAttention(64, 4, batch_first=True)(torch.randn(2, 10, 64), torch.randn(2, 5, 64))
    assert first.shape == (2, 10, 64)

    model = small_model()
    ids = torch.randint(0, 100, (2, 128))
    assert model(ids).shape == (2, 128, 100)  # text only
    images = [Image.new("RGB", (224, 224)), Image.new("RGB", (60, 40), "red")]
    assert model(ids, image=images).shape == (2, 128, 100)


def test_masks_on_both_sides_and_records_without_the_other_modality():
    attention = CrossModalAttention(32, 4, batch_first=True).eval()
    text, other = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    other_pad = torch.tensor([[False] * 3 + [True] * 2, [True] * 5])  # record 1 has nothing
    text_pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    fused, weights = attention(text, other, text_pad, other_pad)
    assert torch.isfinite(fused).all()
    assert weights[0, :, :, 3:].abs().max() == 0 and torch.allclose(weights[0].sum(-1), torch.ones(4, 6))
    assert weights[1].abs().max() == 0  # nothing to attend to: no weight anywhere
    assert fused[1, 4:].abs().max() == 0  # padded text positions are zeros
    alone, _ = attention(text[1:, :4], other[1:], None, other_pad[1:])
    torch.testing.assert_close(fused[1:, :4], attention.norm(text[1:, :4]))  # the residual alone
    torch.testing.assert_close(alone, fused[1:, :4])
    truncated, _ = attention(text[:1], other[:1, :3])  # padding changes nothing against the shorter input
    torch.testing.assert_close(truncated, fused[:1], atol=1e-6, rtol=1e-5)

    fusion = MultimodalFusion(text_dim=16, image_dim=24, audio_dim=8, output_dim=32, num_heads=4)
    image, audio = torch.randn(2, 5, 24), torch.randn(2, 7, 8)
    tokens, mask = fusion.memory(image=image, audio=audio, image_present=torch.tensor([True, False]),
                                 audio_mask=torch.tensor([[True] * 7, [True] * 2 + [False] * 5]))
    assert tokens.shape == (2, 12, 32) and mask.sum(1).tolist() == [12, 2]
    assert fusion(text=torch.randn(2, 3, 16), image=image).shape == (2, 3, 32)
    assert fusion(audio=audio).shape == (2, 32)  # any subset
    with pytest.raises(ValueError, match="at least one of image_dim and audio_dim"):
        MultimodalFusion(text_dim=16)


@pytest.mark.parametrize("with_image", [False, True])
def test_causal_with_and_without_an_image(with_image):
    model = small_model()
    ids = torch.randint(4, 100, (2, 96))
    image = [Image.new("RGB", (32, 32), "blue"), Image.new("RGB", (32, 32), "green")] if with_image else None
    base = model(ids, image=image)
    for t in (0, 40, 90):
        edited = ids.clone()
        edited[:, t + 1] = (edited[:, t + 1] + 7) % 100
        out = model(edited, image=image)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=0, rtol=0)
        assert (out[:, t + 1:] - base[:, t + 1:]).abs().max() > 1e-3
    if with_image:  # every position sees the image
        other = model(ids, image=[Image.new("RGB", (32, 32), "white")] * 2)
        assert (other[:, 0] - base[:, 0]).abs().max() > 1e-4


def test_a_record_without_its_image_ignores_the_pixels():
    model = small_model(use_audio=True)
    ids = torch.randint(4, 100, (2, 20))
    pixels = torch.randn(2, 3, 32, 32)
    present = torch.tensor([True, False])
    out = model(ids, image=pixels, image_present=present)
    noise = pixels.clone()
    noise[1] = torch.randn(3, 32, 32)
    torch.testing.assert_close(model(ids, image=noise, image_present=present), out, atol=0, rtol=0)
    torch.testing.assert_close(out[1:], model(ids[1:]), atol=1e-5, rtol=1e-5)  # as text only
    features, mask = model.audio.preprocess([np.zeros(4000, np.float32), np.zeros(16000, np.float32)])
    mask[1] = False  # the second record has no audio
    both = model(ids, image=pixels, image_present=present, audio=features, audio_mask=mask)
    torch.testing.assert_close(both[1:], out[1:], atol=1e-5, rtol=1e-5)


def test_generation_greedy_and_sampled_and_saving(tmp_path):
    tokenizer = CharTokenizer.train(["what colour? red blue"])
    config = APTConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_heads=2, num_layers=1, max_seq_len=64)
    model = MultimodalAPTModel(config, vision_config=TINY).eval()
    model.tokenizer = tokenizer
    red = Image.new("RGB", (32, 32), "red")
    greedy = model.generate_from_multimodal("what colour? ", image=red, max_length=20)
    assert greedy == model.generate_from_multimodal("what colour? ", image=red, max_length=20)
    assert len(greedy) <= 20 and set(greedy) <= set(tokenizer.itos)
    sampled = [model.generate_from_multimodal("what colour? ", image=red, max_length=20, do_sample=True,
                                              generator=torch.Generator().manual_seed(s)) for s in range(3)]
    assert len(set(sampled)) > 1  # untrained: sampling differs from run to run

    model.save_pretrained(tmp_path / "saved")
    loaded = MultimodalAPTModel.from_pretrained(tmp_path / "saved")
    ids = torch.randint(0, tokenizer.vocab_size, (1, 12))
    torch.testing.assert_close(loaded(ids, image=[red]), model(ids, image=[red]), atol=0, rtol=0)
    assert loaded.generate_from_multimodal("what colour? ", image=red, max_length=20) == greedy
    with pytest.raises(Exception, match="no saved multimodal model"):
        MultimodalAPTModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("attention", ["autopoietic", "sdpa"])
def test_kv_cache_gives_the_logits_of_the_full_pass(attention):
    tokenizer = CharTokenizer.train(["abcdefghij what colour? "])
    config = APTConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_heads=2, num_layers=2, max_seq_len=24,
                       attention=attention)
    torch.manual_seed(1)
    model = MultimodalAPTModel(config, vision_config=TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gate"):
                p.fill_(1.0)
    model.tokenizer = tokenizer
    image = [Image.new("RGB", (32, 32), "red")]
    ids = torch.randint(4, tokenizer.vocab_size, (1, 20))
    memory, mask = model.memory(1, image)
    full = model._decode(ids, memory, mask)
    caches = [{} for _ in model.blocks]
    pieces = [model._decode(ids[:, :7], memory, mask, caches=caches)]  # a prompt, then one token at a time
    pieces += [model._decode(ids[:, t:t + 1], memory, mask, caches=caches, start=t) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    # generation past max_seq_len slides the window (recomputing); cached and uncached agree token for token
    tokenizer.eos_id = -1  # never stop early: 14 prompt tokens + 30 new ones pass max_seq_len = 24
    calls, decode = [], model._decode
    model._decode = lambda ids, *args, **kw: calls.append((ids.shape[1], "caches" in kw)) or decode(ids, *args, **kw)
    cached = model.generate_from_multimodal("what colour? ", image=image[0], max_length=30)
    # <bos> + 13 prompt tokens at once, then one new token per step while it fits, then full windows
    assert calls == [(14, True)] + [(1, True)] * 10 + [(24, False)] * 19
    assert cached == model.generate_from_multimodal("what colour? ", image=image[0], max_length=30, use_cache=False)


def test_image_shift_moves_each_image_by_at_most_n_pixels_the_same_way_for_a_seed_epoch_and_image(tmp_path):
    from apt_plugin_multimodal import MultimodalDataset
    from apt_plugin_vision import ImagePreprocessor

    picture = np.zeros((8, 8, 3), dtype=np.uint8)
    picture[3:5, 3:5] = 255  # a white square on black
    for i in range(24):
        Image.fromarray(picture).save(tmp_path / f"square{i}.png")
    records = [{"prompt": "where? ", "text": "middle", "image_path": str(tmp_path / f"square{i}.png")}
               for i in range(24)]
    common = dict(text_tokenizer=CharTokenizer.train(["where? middle"]), image_processor=ImagePreprocessor.for_size(8))

    def square(data, index):  # the top-left corner of the bright pixels of item ``index``
        bright = (data[index]["image"][0] > 0).nonzero()
        return tuple(bright.min(0).values.tolist())

    plain = MultimodalDataset(records, **common)
    assert {square(plain, i) for i in range(24)} == {(3, 3)}
    shifted = MultimodalDataset(records, **common, image_shift=1, seed=5)
    first = [square(shifted, i) for i in range(24)]
    assert first == [square(shifted, i) for i in range(24)]  # the same draw for the same seed, epoch and image
    assert all(abs(y - 3) <= 1 and abs(x - 3) <= 1 for y, x in first) and len(set(first)) > 3
    assert all((shifted[i]["image"] < 0).sum() == (plain[i]["image"] < 0).sum() for i in range(24))  # black border
    shifted.epoch = 1
    assert [square(shifted, i) for i in range(24)] != first  # a new draw each epoch
    assert [square(MultimodalDataset(records, **common, image_shift=1, seed=6), i) for i in range(24)] != first

    # two questions about one image see it moved the same way, or their answers could disagree
    asked_twice = [r for record in records[:6] for r in (record, {**record, "prompt": "again? "})]
    common["text_tokenizer"] = CharTokenizer.train(["where? again? middle"])
    twice = MultimodalDataset(asked_twice, **common, image_shift=1, seed=5)
    assert [square(twice, i) for i in range(0, 12, 2)] == [square(twice, i) for i in range(1, 12, 2)]
    assert len({square(twice, i) for i in range(12)}) > 1
