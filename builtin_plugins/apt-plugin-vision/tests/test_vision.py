"""The CLIP encoder: the original API, equivalence with transformers, weight sources, any image mode,
bad files named, frozen means frozen, preprocessing in DataLoader workers."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from apt_plugin_vision import ImagePreprocessor, VisionEncoder, load_image
from apt_sdk import Encoder, PipelineError, UserError

TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   image_size=32, patch_size=8)


def images(n: int, seed: int = 0, size: tuple[int, int] = (48, 40)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random CLIP (text and image towers) and its processor, saved as a hub folder is laid out."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=99)
    CLIPModel(CLIPConfig(text_config=text, vision_config=TINY_VISION, projection_dim=24)).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_the_default_encoder_builds_offline_with_the_original_shape():
    encoder = VisionEncoder()
    assert encoder.encode_image(Image.new("RGB", (224, 224))).shape == (1, 512)
    assert (encoder.embed_dim, encoder.output_dim, encoder.num_tokens) == (512, 768, 50)  # ViT-B/32
    assert encoder.vision_dim == encoder.output_dim  # the width of the tokens encode() gives


def test_encode_batch_equals_transformers_clip_image_features(clip_folder):
    reference = CLIPModel.from_pretrained(clip_folder).eval()
    processor = CLIPImageProcessorPil.from_pretrained(clip_folder)
    batch = images(3)
    with torch.no_grad():
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
        expected = reference.get_image_features(pixel_values=pixels).pooler_output
        expected_patches = reference.vision_model(pixel_values=pixels).last_hidden_state

    encoder = VisionEncoder(model_name_or_path=clip_folder)
    assert encoder.embed_dim == 24  # the projection width of the whole CLIP, not the tower's default 512
    torch.testing.assert_close(encoder.encode_batch(batch), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder(pixels), expected, atol=1e-5, rtol=0)  # a pixel tensor works too
    torch.testing.assert_close(encoder.encode_image(batch[1]), expected[1:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.patch_features(batch), expected_patches, atol=1e-5, rtol=0)
    assert encoder.patch_features(batch).shape == (3, 17, 32)  # class token + 4x4 patches
    features, mask = encoder.encode(pixels)  # the Encoder contract: the tokens, all of them real
    torch.testing.assert_close(features, expected_patches, atol=1e-5, rtol=0)
    assert mask is None and features.shape[-1] == encoder.output_dim


SECTION = '[encoders.image]\nuse = "clip"\nsize = "tiny"\n'


def test_a_pipeline_builds_the_clip_encoder_from_its_section(build_encoders):
    encoder = build_encoders(SECTION)["image"]  # the kernel checked it against apt_sdk.Encoder when it built it
    assert isinstance(encoder, VisionEncoder) and encoder.frozen and encoder.preprocessor.image_size == 32
    assert not any(p.requires_grad for p in encoder.parameters())  # freeze_encoder = true, the default
    assert encoder.encode(encoder.preprocessor([Image.new("RGB", (40, 30))]))[0].shape == (1, 17, 32)


@pytest.mark.parametrize("override, message", [
    ("encoders.image.size='huge'", r"\[encoders.image\] size.*'tiny', 'small' or 'base'"),
    # what to run and what to set in the pipeline, not the Python API's "model_name_or_path=None"
    ("encoders.image.model_name_or_path='no/such-model'",
     r"\[encoders.image\] model_name_or_path.*cannot load 'no/such-model': there is no folder by that name, and as "
     r"a hub id .*\. Download it where there is a network \(hf download no/such-model --local-dir models/such-model\), "
     r"bring that folder here and set model_name_or_path = \"models/such-model\"; or leave model_name_or_path out "
     r"to train a new encoder of size = \"tiny\", \"small\" or \"base\"$"),
    ("encoders.image.image_size=36", r"\[encoders.image\] image_size.*must divide by"),
    ("encoders.image.freeze_encoder='yes'", r"\[encoders.image\] freeze_encoder"),
])
def test_bad_clip_options_are_named_with_the_pipelines_table_and_key(build_encoders, monkeypatch, override, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id fails at once
    with pytest.raises(PipelineError, match=message):
        build_encoders(SECTION, overrides=[override])


def test_it_is_a_kernel_encoder_and_rebuilds_from_its_config_with_its_own_preprocessing():
    """What a multimodal model saves of the encoder (its config, as JSON) rebuilds the same tower and the same
    image processor, a saved folder's own settings included (they were lost: from-config used CLIP's standard)."""
    encoder = VisionEncoder(size="tiny", config={"image_size": 16, "patch_size": 4}, stem="conv")
    encoder.preprocessor.processor.image_mean = [0.0, 0.0, 0.0]  # as a saved folder's processor may differ
    assert isinstance(encoder, Encoder) and encoder.modality == "image" and encoder.frozen
    rebuilt = VisionEncoder.from_config(json.loads(json.dumps(encoder.config.to_dict())))
    rebuilt.load_state_dict(encoder.state_dict())
    pixels = encoder.preprocessor(images(2))
    torch.testing.assert_close(rebuilt.preprocessor(images(2)), pixels, atol=0, rtol=0)
    features, mask = rebuilt.eval().encode(pixels)
    assert features.shape == (2, 17, encoder.output_dim) and mask is None
    torch.testing.assert_close(features, encoder.encode(pixels)[0])
    with pytest.raises(UserError, match=r"pixel values are 32x32 but this vision tower takes 16x16 \(pass PIL"):
        encoder.encode(torch.zeros(1, 3, 32, 32))


def test_save_pretrained_round_trip(tmp_path):
    encoder = VisionEncoder(size="tiny", config={"image_size": 48, "patch_size": 16})
    encoder.save_pretrained(tmp_path / "saved")
    loaded = VisionEncoder(model_name_or_path=tmp_path / "saved")
    batch = images(2, size=(100, 60))
    torch.testing.assert_close(loaded.encode_batch(batch), encoder.encode_batch(batch), atol=0, rtol=0)
    assert loaded.preprocessor.image_size == 48


def test_presets_and_configs():
    tiny = VisionEncoder(size="tiny")
    assert tiny.encode_batch(images(2)).shape == (2, 16)
    small = VisionEncoder(size="small")
    assert (small.embed_dim, small.output_dim, small.num_tokens) == (256, 256, 65)
    built = VisionEncoder(config=CLIPVisionConfig(**TINY_VISION, projection_dim=8))
    assert built.encode_batch(images(1)).shape == (1, 8)
    whole = VisionEncoder(config=CLIPConfig(vision_config=TINY_VISION, projection_dim=12))
    assert whole.embed_dim == 12


@pytest.mark.parametrize("kwargs, message", [
    (dict(size="huge"), "size 'huge' is not a preset"),
    (dict(model_type="vit"), "model_type 'vit' is not supported"),
    (dict(size="tiny", config={"hidden_size": 33}), "invalid CLIP vision config.*not a multiple"),
    # transformers keeps an unknown field as an attribute and the preset's value would be used instead
    (dict(size="tiny", config={"hiden_size": 64}), r"unknown CLIPVisionConfig field 'hiden_size' \(did you mean "
                                                   r"'hidden_size'\?\)"),
    (dict(size="tiny", config={"image_size": 36}), r"image_size 36 must divide by patch_size 8$"),
    (dict(model_name_or_path="x", config={}), "not both"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(UserError, match=message):
        VisionEncoder(**kwargs)


def test_weight_sources_offline_and_wrong_folders(tmp_path):
    with pytest.raises(UserError) as caught:
        VisionEncoder(model_name_or_path="openai/clip-vit-base-patch32")
    assert "no folder by that name" in str(caught.value) and "hf download openai/clip-vit-base-patch32" in str(
        caught.value)
    assert "size='tiny'|'small'|'base' or config" in str(caught.value)

    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file: pass the folder"):
        VisionEncoder(model_name_or_path=tmp_path / "weights.bin")
    CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).save_pretrained(tmp_path / "no-projection")
    with pytest.raises(UserError, match=r"lacks \d+ weights of a CLIP image tower"):
        VisionEncoder(model_name_or_path=tmp_path / "no-projection")
    CLIPVisionConfig(**TINY_VISION).save_pretrained(tmp_path / "other")
    config = (tmp_path / "other" / "config.json").read_text().replace('"clip_vision_model"', '"vit"')
    (tmp_path / "other" / "config.json").write_text(config)
    with pytest.raises(UserError, match="holds a 'vit' model, not CLIP"):
        VisionEncoder(model_name_or_path=tmp_path / "other")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load CLIP weights from folder"):
        VisionEncoder(model_name_or_path=tmp_path / "empty")


def test_any_mode_and_size_becomes_rgb():
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # fully transparent red: shows as the white behind it
    assert load_image(rgba).getpixel((3, 3)) == (255, 255, 255)
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert sixteen.mode.startswith("I;16") and load_image(sixteen).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (7, 3))
    palette.info["transparency"] = 0
    modes = [Image.new(m, s) for m, s in [("L", (5, 900)), ("LA", (64, 64)), ("P", (33, 17)), ("RGBA", (1, 1)),
                                          ("CMYK", (300, 200)), ("1", (50, 50)), ("I", (40, 40)), ("F", (40, 41))]]
    batch = [palette, sixteen, *modes]
    assert all(load_image(image).mode == "RGB" for image in batch)
    assert VisionEncoder(size="tiny").encode_batch(batch).shape == (len(batch), 16)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_images_are_named_with_their_record(tmp_path, monkeypatch):
    good = _png(images(1, size=(64, 64))[0])
    files = {
        "corrupt.png": good[:16] + os.urandom(400),
        "truncated.png": good[: len(good) // 2],
        "truncated.jpg": b"",
        "notes.png": b"these are my notes, not a picture\n" * 20,
    }
    jpeg = io.BytesIO()
    images(1, size=(64, 64))[0].save(jpeg, format="JPEG")
    files["truncated.jpg"] = jpeg.getvalue()[: len(jpeg.getvalue()) // 2]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    preprocess = VisionEncoder(size="tiny").preprocess
    for name, message in [("corrupt.png", "cannot be read as an image"), ("truncated.png", "corrupt or truncated"),
                          ("truncated.jpg", "corrupt or truncated"), ("notes.png", "cannot be read as an image"),
                          ("missing.png", "no such file")]:
        with pytest.raises(UserError, match=message) as caught:
            preprocess([images(1)[0], str(tmp_path / name)],
                       where=[None, "record 7 of train.jsonl"])
        assert name in str(caught.value) and "record 7 of train.jsonl" in str(caught.value)

    with pytest.raises(UserError, match=r"image 1 of the batch\): has zero size \(0x0\)"):
        preprocess([images(1)[0], Image.new("RGB", (0, 0))])

    # PIL's limit, lowered so the test needs no gigapixel file: above it refused, above twice it refused too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)
    (tmp_path / "bomb.png").write_bytes(good)
    (tmp_path / "bigger-bomb.png").write_bytes(_png(images(1, size=(128, 128))[0]))
    for name, pixels in (("bomb.png", "4,096 pixels"), ("bigger-bomb.png", "16,384 pixels")):
        with pytest.raises(UserError, match=f"{name}': {pixels} .* is more than Pillow's limit of 4,095 .*"
                                            f"MAX_IMAGE_PIXELS, its guard against decompression bombs\\): scale the "
                                            f"image down$"):
            preprocess([str(tmp_path / name)])


def test_sixteen_bit_levels_are_scaled_by_the_format_not_by_the_brightest_pixel():
    """Level 200 of a 16-bit image became grey 200 in a dark image and grey 1 in one with a bright pixel."""
    dark = np.full((4, 4), 200, dtype=np.uint16)
    bright = dark.copy()
    bright[0, 0] = 65535
    for values in (dark, bright):
        for image in (Image.fromarray(values), Image.fromarray(values.astype(np.int32))):  # I;16 and I
            assert image.mode in ("I;16", "I")
            rgb = load_image(image)
            assert rgb.getpixel((2, 2)) == (1, 1, 1), (image.mode, values.max())
    assert load_image(Image.fromarray(bright)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.fromarray(np.full((2, 2), 100.4, np.float32))).getpixel((0, 0)) == (100, 100, 100)


def test_a_uint8_pixel_tensor_is_taken_as_pixels_and_normalised():
    """A uint8 tensor went into the tower as it was: values 0-255 where CLIP expects about -2..2."""
    encoder = VisionEncoder(size="tiny")
    batch = images(2, size=(40, 40))
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in batch])).permute(0, 3, 1, 2)
    assert pixels.dtype == torch.uint8
    torch.testing.assert_close(encoder(pixels), encoder.encode_batch(batch), atol=0, rtol=0)
    with pytest.raises(UserError, match="dtype int64: give uint8 pixels"):
        encoder(pixels.long())


def _smooth(size: tuple[int, int]) -> Image.Image:
    y, x = np.mgrid[0:size[1], 0:size[0]]
    red, green = 255 * x / size[0], 255 * (0.5 + 0.5 * np.sin(y / size[1] * 6))
    return Image.fromarray(np.stack([red, green, 255 - red], -1).round().astype(np.uint8))


def test_a_large_file_is_decoded_at_about_twice_the_size_it_is_resized_to(tmp_path):
    """A 9400x9400 PNG was carried at full size through every conversion (1.6 GB) for a 64-pixel model."""
    preprocessor = ImagePreprocessor.for_size(32)
    _smooth((640, 480)).save(tmp_path / "large.png")
    _smooth((800, 600)).save(tmp_path / "large.jpg", quality=95)
    _smooth((60, 50)).save(tmp_path / "small.png")
    assert load_image(tmp_path / "large.png", size=32).size == (92, 69)  # reduced by 7: short side >= 64
    assert load_image(tmp_path / "large.jpg", size=32).size == (100, 75)  # the JPEG decoder's 1/8 scale
    assert load_image(tmp_path / "small.png", size=32).size == (60, 50)  # under 4x: as it is

    def whole(name: str) -> torch.Tensor:  # decoded in full and resized once, as before
        with Image.open(tmp_path / name) as image:
            return preprocessor.processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]

    assert torch.equal(preprocessor([tmp_path / "small.png"]), whole("small.png"))
    for name in ("large.png", "large.jpg"):
        levels = (preprocessor([tmp_path / name]) - whole(name)).abs() / 0.0145  # one grey level, normalised
        assert levels.mean() < 2 and levels.max() < 7, (name, levels.mean(), levels.max())


def _head_step(encoder: VisionEncoder, batch: list[Image.Image]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model that owns the encoder and a head, trained for one step as a trainer would build it."""
    model = torch.nn.ModuleDict({"encoder": encoder, "head": torch.nn.Linear(encoder.embed_dim, 3)})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model["head"](model["encoder"].encode_batch(batch)).square().mean()
    loss.backward()
    optimizer.step()
    return model, optimizer


def test_frozen_means_frozen():
    config = {**TINY_VISION, "projection_dim": 16, "attention_dropout": 0.5}  # CLIP's only dropout
    encoder = VisionEncoder(config=config)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    batch = images(2)
    model, optimizer = _head_step(encoder, batch)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.model.training  # the parent's .train() left it in eval mode
    assert all(p.grad is None for p in encoder.parameters())  # no gradient memory
    head_params = set(map(id, model["head"].parameters()))
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == head_params  # no optimizer state
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    first = encoder.encode_batch(batch)
    assert first.grad_fn is None and torch.equal(first, encoder.encode_batch(batch))  # no dropout


def test_unfrozen_encoder_trains():
    encoder = VisionEncoder(size="tiny", freeze_encoder=False)
    before = encoder.model.vision_model.embeddings.patch_embedding.weight.detach().clone()
    _head_step(encoder, images(2))
    assert encoder.model.training
    after = encoder.model.vision_model.embeddings.patch_embedding.weight
    assert after.grad is not None and not torch.equal(before, after.detach())


class _WorkerCollate:
    """Preprocesses in the DataLoader worker and says which process did it."""

    def __init__(self, preprocessor: ImagePreprocessor):
        self.preprocessor = preprocessor

    def __call__(self, paths: list[str]) -> tuple[torch.Tensor, int]:
        return self.preprocessor(paths), os.getpid()


@pytest.mark.slow  # worker processes start by importing torch
def test_preprocessing_runs_in_dataloader_workers(tmp_path):
    encoder = VisionEncoder(size="tiny")
    paths = []
    for i, image in enumerate(images(6, size=(90, 70))):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    collate = _WorkerCollate(encoder.preprocessor)
    loader = torch.utils.data.DataLoader(paths, batch_size=3, num_workers=1, collate_fn=collate,
                                         multiprocessing_context="spawn")
    outputs, pids = [], set()
    for pixels, pid in loader:
        outputs.append(encoder(pixels))
        pids.add(pid)
    assert os.getpid() not in pids
    torch.testing.assert_close(torch.cat(outputs), encoder.encode_batch(paths), atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it on one)")
def test_on_cuda_in_bf16_as_on_cpu():
    encoder = VisionEncoder(size="small")
    batch = images(4, size=(120, 90))
    expected = encoder.encode_batch(batch)
    encoder.cuda()
    on_gpu = encoder.encode_batch(batch)  # PIL in, preprocessed on the CPU, moved to the tower's device
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), expected, atol=2e-3, rtol=2e-3)  # TF32 convolutions
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = encoder.encode_batch(batch).float()
    assert torch.nn.functional.cosine_similarity(half.cpu(), expected).min() > 0.99


def test_position_std_sets_a_new_towers_position_embeddings(tmp_path):
    wide = VisionEncoder(size="tiny", config={"image_size": 32}, position_std=1.0)
    default = VisionEncoder(size="tiny", config={"image_size": 32})
    std = [e.model.vision_model.embeddings.position_embedding.weight.std().item() for e in (wide, default)]
    assert 0.8 < std[0] < 1.2 and std[1] < 0.05
    wide.save_pretrained(tmp_path / "tower")  # loaded weights are kept as saved
    loaded = VisionEncoder(model_name_or_path=tmp_path / "tower")
    assert loaded.model.vision_model.embeddings.position_embedding.weight.std().item() == pytest.approx(std[0])


@pytest.mark.parametrize(("image_size", "patch_size", "convolutions"),
                         [(75, 15, 4), (64, 8, 3), (75, 5, 2), (16, 1, 1)])
def test_a_conv_stem_gives_the_patch_grid_and_a_saved_tower_rebuilds_it(tmp_path, image_size, patch_size, convolutions):
    config = {**TINY_VISION, "image_size": image_size, "patch_size": patch_size}
    torch.manual_seed(0)
    encoder = VisionEncoder(config=config, stem="conv", freeze_encoder=False).eval()
    stem = encoder.model.vision_model.embeddings.patch_embedding
    assert sum(isinstance(m, torch.nn.Conv2d) for m in stem.layers) == convolutions
    pixels = torch.randn(2, 3, image_size, image_size)
    features = encoder.patch_features(pixels)
    assert features.shape == (2, 1 + (image_size // patch_size) ** 2, 32) == (2, encoder.num_tokens, encoder.vision_dim)
    patches = VisionEncoder(config=config, freeze_encoder=False).patch_features(pixels)
    assert patches.shape == features.shape  # the same tokens a patch embedding gives, from another stem

    encoder.save_pretrained(tmp_path)
    loaded = VisionEncoder(model_name_or_path=tmp_path)
    assert loaded.model.config.stem == "conv"
    torch.testing.assert_close(loaded.patch_features(pixels), features)
    features.sum().backward()  # the stem trains: its first convolution gets a gradient
    assert stem.layers[0].weight.grad.abs().sum() > 0


def test_a_stem_is_named_and_only_for_a_new_tower(tmp_path):
    with pytest.raises(UserError, match="stem 'convolution' is not one of patches, conv"):
        VisionEncoder(config=TINY_VISION, stem="convolution")
    VisionEncoder(config=TINY_VISION).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="saved weights bring their own"):
        VisionEncoder(model_name_or_path=tmp_path, stem="conv")
