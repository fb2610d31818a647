"""Many records about one image (Sort-of-CLEVR asks 36 questions of each): a batch reads, stacks and
encodes each image once, the model's answers are those of one image per record, and ``group_by_image``
batches whole images in an order drawn from (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from apt_plugin_lm.model import APTConfig
from apt_plugin_lm.tokenization import CharTokenizer
from apt_plugin_multimodal import MultimodalAPTModel, MultimodalDataset, multimodal_collate_fn
from apt_plugin_multimodal.data_module import MultimodalDataModule
from apt_plugin_vision import ImagePreprocessor

QUESTIONS = ("colour? ", "where? ", "size? ")


@pytest.fixture()
def records(tmp_path) -> list[dict]:
    """Five images, three questions each, and one record with no image."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(5):
        path = tmp_path / f"scene{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        out += [{"prompt": q, "text": f"answer {i}", "image_path": str(path)} for q in QUESTIONS]
    return [*out, {"prompt": "colour? ", "text": "none"}]


def dataset(records: list[dict]) -> MultimodalDataset:
    tokenizer = CharTokenizer.train([r["prompt"] + r["text"] for r in records])
    return MultimodalDataset(records, tokenizer, ImagePreprocessor.for_size(32), max_length=32)


def test_a_batch_holds_each_image_once_and_each_record_points_at_its_own(records):
    data = dataset(records)
    order = [3, 0, 7, 15, 4, 1, 8]  # images 1, 0, 2, none, 1, 0, 2
    batch = multimodal_collate_fn(data.__getitems__(order), data.tokenizer.pad_id)
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["image_present"].tolist() == [True, True, True, False, True, True, True]
    spread = batch["image"][batch["image_index"]]
    for row, index in enumerate(order):
        if records[index].get("image_path"):
            torch.testing.assert_close(spread[row], data[index]["image"])  # the record's own image
    alone = multimodal_collate_fn([data[i] for i in order], data.tokenizer.pad_id)  # item by item: no sharing
    assert "image_index" not in alone and alone["image"].shape[0] == len(order)


def tiny_model(attention: str, vocab_size: int) -> MultimodalAPTModel:
    torch.manual_seed(0)
    config = APTConfig(vocab_size=vocab_size, max_seq_len=32, d_model=32, num_heads=4, num_layers=2, d_ff=64,
                       attention=attention)
    model = MultimodalAPTModel(config, vision_config={**dict(size="tiny", image_size=32), "stem": "conv"},
                               freeze_encoders=False)
    with torch.no_grad():  # the refinement on, so autopoietic attention is at work
        for name, p in model.named_parameters():
            if name.endswith(".gate"):
                p.fill_(1.0)
    return model.eval()


@pytest.mark.parametrize("attention", ["autopoietic", "sdpa"])
def test_shared_images_give_the_logits_gradients_and_answers_of_one_image_per_record(records, attention):
    data = dataset(records)
    order = [3, 0, 7, 15, 4, 1, 8]
    batch = multimodal_collate_fn(data.__getitems__(order), data.tokenizer.pad_id)
    batch.pop("labels")
    model = tiny_model(attention, data.tokenizer.vocab_size)
    model.tokenizer = data.tokenizer
    seen: list[int] = []
    encode = model.vision.encode  # what the model calls of an encoder: the Encoder contract's encode
    model.vision.encode = lambda pixels, mask=None: seen.append(pixels.shape[0]) or encode(pixels, mask)

    shared = model(**batch)
    per_record = {**batch, "image": batch["image"][batch["image_index"]]}
    per_record.pop("image_index")
    alone = model(**per_record)
    assert seen == [3, 7]  # three distinct images encoded, not seven
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-5)

    grads = []
    for inputs in (batch, per_record):
        model.zero_grad()
        model(**inputs).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)

    prompts = [records[i]["prompt"] for i in order]
    media = {k: batch[k] for k in ("image", "image_present", "image_index")}
    for cache in (True, False):
        answers = model.generate_batch(prompts, max_length=6, use_cache=cache, **media)
        assert answers == model.generate_batch(prompts, image=per_record["image"], image_present=batch["image_present"],
                                               max_length=6, use_cache=cache)


def options(path, **overrides) -> dict:
    return {"train_manifest": str(path), "batch_size": 4, "num_workers": 0, "image_size": 32, "max_audio_seconds": 1.0,
            "max_length": 32, "tokenizer": "char", "on_bad_record": "fail", "image_shift": 0,
            "group_by_image": True, **overrides}


def test_group_by_image_batches_whole_images_in_an_order_drawn_from_seed_and_epoch(records, tmp_path):
    import json

    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = MultimodalDataModule(options(manifest), seed=3)

    def images_of(order: list[int]) -> list[str]:
        return [records[i].get("image_path", f"none {i}") for i in order]

    first = data._order(0)
    assert sorted(first) == list(range(len(records)))
    seen = images_of(first)
    runs = [seen[0]] + [b for a, b in zip(seen, seen[1:], strict=False) if a != b]
    assert len(runs) == len(set(runs)) == 6  # each image's records together, each image once
    assert first == MultimodalDataModule(options(manifest), seed=3)._order(0)  # the same draw again
    assert data._order(1) != first and MultimodalDataModule(options(manifest), seed=4)._order(0) != first

    batches = list(data.train_batches(0))
    assert len(batches) == data.steps_per_epoch(0) == 4
    for k, batch in enumerate(batches):  # each distinct image of the batch's records once
        paths = {records[i]["image_path"] for i in first[4 * k:4 * k + 4] if "image_path" in records[i]}
        assert batch["image"].shape[0] == len(paths) < batch["text_input_ids"].shape[0]
    resumed = list(data.train_batches(0, start=2))  # a resumed run continues with the same batches
    for a, b in zip(batches[2:], resumed, strict=True):
        assert torch.equal(a["text_input_ids"], b["text_input_ids"]) and torch.equal(a["image"], b["image"])

    ranks = []
    for rank in range(2):
        data.configure_distributed(rank, 2)
        ranks.append(data._order(0))
    assert len(ranks[0]) == len(ranks[1]) == len(records) // 2 and not set(ranks[0]) & set(ranks[1])
    assert ranks[0] + ranks[1] == first[:len(records) // 2 * 2]


def test_a_saved_conv_stem_model_loads_back_with_its_stem(records, tmp_path):
    data = dataset(records)
    model = tiny_model("sdpa", data.tokenizer.vocab_size)
    model.tokenizer = data.tokenizer
    batch = multimodal_collate_fn(data.__getitems__([0, 1, 3, 15]), data.tokenizer.pad_id)
    batch.pop("labels")
    model.save_pretrained(tmp_path / "saved")
    loaded = MultimodalAPTModel.from_pretrained(tmp_path / "saved").eval()
    assert type(loaded.vision.model.vision_model.embeddings.patch_embedding).__name__ == "ConvStem"
    torch.testing.assert_close(loaded(**batch), model(**batch))
