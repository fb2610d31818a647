"""The Whisper encoder: the original API, equivalence with transformers, max_seconds, every file format
and bad file, frozen means frozen, preprocessing in DataLoader workers."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperModel

from apt_plugin_audio import AudioEncoder, AudioPreprocessor, load_audio
from apt_sdk import Encoder, PipelineError, UserError

TINY = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
            decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=99, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=1, max_target_positions=16)


def tone(seconds: float, rate: int = 16_000, hz: float = 440.0, channels: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory):
    """A tiny random Whisper (encoder and decoder, 30 s of positions) and its feature extractor, hub layout."""
    folder = tmp_path_factory.mktemp("tiny-whisper")
    torch.manual_seed(0)
    WhisperForConditionalGeneration(WhisperConfig(**TINY, max_source_positions=1500)).save_pretrained(folder)
    WhisperFeatureExtractor().save_pretrained(folder)
    return folder


def test_the_default_encoder_builds_offline_with_whisper_base_shape():
    encoder = AudioEncoder(max_seconds=1.0)
    frames = encoder.encode_audio(tone(0.5))
    assert frames.shape == (1, 50, 512) and encoder.output_dim == 512


def test_frames_equal_transformers_whisper_encoder(whisper_folder):
    reference = WhisperModel.from_pretrained(whisper_folder).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(whisper_folder)
    clips = [tone(1.0), tone(2.5, hz=220.0), np.zeros(8000, dtype=np.float32)]
    features = extractor(clips, sampling_rate=16_000, return_tensors="pt")["input_features"]
    with torch.no_grad():
        expected = reference.encoder(features).last_hidden_state

    encoder = AudioEncoder(model_name_or_path=whisper_folder)
    frames, mask = encoder.encode_batch(clips)
    assert frames.shape == (3, 1500, 32)
    torch.testing.assert_close(frames, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder(features), expected, atol=1e-5, rtol=0)
    assert mask.sum(1).tolist() == [50, 125, 25]  # 50 frames per second of audio
    torch.testing.assert_close(encoder.encode_audio(clips[1]), expected[1:2], atol=1e-5, rtol=0)


def test_max_seconds_sizes_features_and_positions_together(whisper_folder, tmp_path):
    short = AudioEncoder(model_name_or_path=whisper_folder, max_seconds=2.0)
    features, mask = short.preprocess([tone(1.0)])
    assert features.shape == (1, 80, 200) and mask.shape == (1, 100)  # 2 s, not 30 s of compute
    full = WhisperModel.from_pretrained(whisper_folder).encoder
    torch.testing.assert_close(short.encoder.embed_positions.weight, full.embed_positions.weight[:100])
    assert short.encode_audio(tone(1.0)).shape == (1, 100, 32)

    short.save_pretrained(tmp_path / "saved")  # an encoder-only folder, 2 s of positions
    again = AudioEncoder(model_name_or_path=tmp_path / "saved", max_seconds=2.0)
    torch.testing.assert_close(again.encode_batch([tone(1.5)])[0], short.encode_batch([tone(1.5)])[0], atol=0, rtol=0)
    with pytest.raises(UserError, match="positions for 2 s of audio; max_seconds = 4 needs 200"):
        AudioEncoder(model_name_or_path=tmp_path / "saved", max_seconds=4.0)
    with pytest.raises(UserError, match="not a whole number of 20 ms encoder frames"):
        AudioEncoder(size="tiny", max_seconds=0.015)
    with pytest.warns(UserWarning, match="3.00 s is longer than max_seconds = 2; the rest is cut"):
        short.encode_batch([tone(3.0)])
    assert AudioEncoder(size="tiny", max_seconds=0.5).encode_audio(tone(0.2)).shape == (1, 25, 32)


def test_presets_configs_and_bad_arguments(tmp_path):
    assert AudioEncoder(size="small", max_seconds=1.0).output_dim == 256
    assert AudioEncoder(config=WhisperConfig(**TINY), max_seconds=1.0).encode_audio(tone(1.0)).shape == (1, 50, 32)
    for kwargs, message in [(dict(size="huge"), "size 'huge' is not a preset"),
                            (dict(model_type="wav2vec2"), "model_type 'wav2vec2' is not supported"),
                            (dict(size="tiny", config={"d_model": 33}), "invalid Whisper config"),
                            (dict(size="tiny", config={"encoder_layer": 2}),
                             r"unknown WhisperConfig field 'encoder_layer' \(did you mean 'encoder_layers'\?\)"),
                            (dict(model_name_or_path="x", config={}), "not both")]:
        with pytest.raises(UserError, match=message):
            AudioEncoder(**kwargs)
    with pytest.raises(UserError, match="no folder by that name.*hf download openai/whisper-base.*size='tiny'"):
        AudioEncoder(model_name_or_path="openai/whisper-base")


def test_every_format_and_rate_loads_as_16khz_mono(tmp_path):
    files = {"pcm8.wav": (tone(1.0, 8000), 8000, "PCM_U8"), "pcm24.wav": (tone(1.0, 48_000), 48_000, "PCM_24"),
             "stereo.wav": (tone(1.0, 44_100, channels=2), 44_100, "PCM_16"),
             "clip.flac": (tone(1.0, 22_050), 22_050, None), "clip.ogg": (tone(1.0, 16_000), 16_000, None),
             "silence.wav": (np.zeros(4000, np.float32), 8000, "PCM_16")}
    for name, (wave, rate, subtype) in files.items():
        sf.write(tmp_path / name, wave, rate, subtype=subtype)
    for name in files:
        samples = load_audio(tmp_path / name)
        assert samples.dtype == np.float32 and samples.ndim == 1, name
        assert abs(len(samples) - (8000 if name == "silence.wav" else 16_000)) <= 1, (name, len(samples))
    stereo = load_audio(tmp_path / "stereo.wav")
    assert 0.3 < np.abs(stereo).max() < 0.45  # the mean of 0.5 and 0.25 amplitude channels
    assert not load_audio(tmp_path / "silence.wav").any()
    # arrays: integer PCM scaled, [samples, channels] and [channels, samples] both mono, any rate resampled
    ints = (tone(1.0, 8000) * 32767).astype(np.int16)
    assert abs(np.abs(load_audio(ints, 8000)).max() - 0.5) < 0.02 and len(load_audio(ints, 8000)) == 16_000
    assert load_audio(tone(0.5, channels=2)).shape == load_audio(tone(0.5, channels=2).T).shape == (8000,)
    encoder = AudioEncoder(size="tiny", max_seconds=1.0)
    frames, mask = encoder.encode_batch([tmp_path / name for name in files])
    assert frames.shape == (6, 50, 32) and torch.isfinite(frames).all()
    assert mask.sum(1).tolist() == [50, 50, 50, 50, 50, 25]


def test_bad_audio_is_named_with_its_record(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(300))
    (tmp_path / "notes.flac").write_text("these are my notes, not a recording\n" * 20)
    sf.write(tmp_path / "no-samples.wav", np.zeros(0, np.float32), 16_000)
    encoder = AudioEncoder(size="tiny", max_seconds=1.0)
    for name, message in [("empty.wav", "the file is empty"), ("corrupt.wav", "not audio that can be decoded"),
                          ("notes.flac", "not audio that can be decoded"), ("no-samples.wav", "contains no samples"),
                          ("missing.wav", "no such file")]:
        with pytest.raises(UserError, match=message) as caught:
            encoder.preprocess([tone(0.5), tmp_path / name], where=[None, "record 4 of test.jsonl"])
        assert name in str(caught.value) and "record 4 of test.jsonl" in str(caught.value), caught.value
    for clip, message in [(np.full(100, np.nan, np.float32), r"clip 1 of the batch\): contains NaN"),
                          (np.zeros((2, 2, 2), np.float32), "expected \\[samples\\] or \\[channels, samples\\]")]:
        with pytest.raises(UserError, match=message):
            encoder.encode_batch([tone(0.5), clip])
    with pytest.raises(UserError, match="sampling_rate must be a positive whole number"):
        encoder.encode_audio(tone(0.5), sampling_rate=0)
    with pytest.raises(UserError, match="sampling_rate is for arrays"):
        load_audio(tmp_path / "empty.wav", sampling_rate=8000)


def test_nan_in_a_file_is_named_as_such_and_a_corrupt_file_says_why(tmp_path):
    # librosa's "Audio buffer is not finite everywhere" and audioread's "NoBackendError" were what users saw
    samples = tone(0.5, 8000)
    samples[100] = np.nan
    sf.write(tmp_path / "nan.wav", samples, 8000, subtype="FLOAT")
    with pytest.raises(UserError, match=r"nan.wav'.*: contains NaN or infinite samples$"):
        load_audio(tmp_path / "nan.wav", where="line 3 of train.jsonl")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)))
    with pytest.raises(UserError, match=r"corrupt.wav': not audio that can be decoded \(Error in WAV.*chunk") as caught:
        load_audio(tmp_path / "corrupt.wav")
    assert "NoBackendError" not in str(caught.value)


class _Reads:
    """Counts the frames asked of libsndfile (-1: the whole file)."""

    def __init__(self, monkeypatch) -> None:
        self.frames: list[int] = []
        read = sf.SoundFile.read

        def counted(file, frames=-1, *args, **kwargs):
            self.frames.append(frames)
            return read(file, frames, *args, **kwargs)

        monkeypatch.setattr(sf.SoundFile, "read", counted)


@pytest.mark.parametrize("rate, channels, seconds", [(44_100, 2, 3.0), (8000, 1, 2.5), (16_000, 1, 1.8)])
def test_only_the_window_is_decoded_and_it_equals_the_whole_file_cut(tmp_path, monkeypatch, rate, channels, seconds):
    """A 30-minute file cost its whole decode and resampling at every read for the first second; now only the
    window (and the resampler's margin) is read, and the features are exactly those of the whole file."""
    rng = np.random.default_rng(rate)
    wave = (0.3 * rng.standard_normal((int(rate * seconds), channels))).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, wave, rate, subtype="PCM_16")
    import librosa

    whole = librosa.load(path, sr=16_000, mono=True)[0]  # what was decoded before: all of it
    preprocessor = AudioPreprocessor.for_window(1.0)
    old = preprocessor.feature_extractor([whole], sampling_rate=16_000, return_tensors="pt", padding="max_length",
                                         max_length=16_000, truncation=True)["input_features"]
    reads = _Reads(monkeypatch)
    with pytest.warns(UserWarning, match=f"{seconds:.2f} s is longer than max_seconds = 1; the rest is cut"):
        features, mask = preprocessor([path])
    assert reads.frames and all(0 < n < 1.2 * rate + 1024 for n in reads.frames), reads.frames
    assert torch.equal(features, old) and mask.all()
    assert np.array_equal(load_audio(path, max_seconds=1.0), whole[:16_000])


def _head_step(encoder: AudioEncoder) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.ModuleDict({"encoder": encoder, "head": torch.nn.Linear(encoder.output_dim, 3)})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frames, mask = model["encoder"].encode_batch([tone(0.4), tone(0.8, hz=300.0)])
    model["head"](frames[mask]).square().mean().backward()
    optimizer.step()
    return model, optimizer


def test_a_pipeline_builds_the_whisper_encoder_and_names_its_bad_options(build_encoders, monkeypatch):
    section = '[encoders.audio]\nuse = "whisper"\nsize = "tiny"\nmax_seconds = 1.0\n'
    encoder = build_encoders(section)["audio"]  # the kernel checked it against apt_sdk.Encoder when it built it
    frames, mask = encoder.encode(*encoder.preprocessor([tone(0.5)]))
    assert isinstance(encoder, AudioEncoder) and encoder.frozen and frames.shape == (1, 50, 32)
    assert mask.sum() == 25 and not any(p.requires_grad for p in encoder.parameters())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id fails at once
    for override, message in (("encoders.audio.max_seconds=0.03",
                               r"\[encoders.audio\] max_seconds.*not a whole number of 20 ms"),
                              ("encoders.audio.model_name_or_path='no/such-whisper'",
                               r"\[encoders.audio\] model_name_or_path.*hf download no/such-whisper --local-dir "
                               r"models/such-whisper\)")):
        with pytest.raises(PipelineError, match=message):
            build_encoders(section, overrides=[override])


def test_it_is_a_kernel_encoder_and_rebuilds_from_its_config_with_its_own_features():
    """What a multimodal model saves of the encoder (its config, as JSON) rebuilds the same encoder, window and
    feature extractor; its preprocessor gives (features, mask) and encode the frames with that mask."""
    encoder = AudioEncoder(size="tiny", config={"num_mel_bins": 128}, max_seconds=0.5)
    encoder.preprocessor.feature_extractor.padding_value = 0.25  # settings a saved folder may have
    assert isinstance(encoder, Encoder) and encoder.modality == "audio" and encoder.frozen
    rebuilt = AudioEncoder.from_config(json.loads(json.dumps(encoder.config.to_dict())))
    rebuilt.load_state_dict(encoder.state_dict())
    assert rebuilt.max_seconds == 0.5 and rebuilt.preprocessor == encoder.preprocessor
    assert AudioPreprocessor.for_window(0.5, mel_bins=128) != AudioPreprocessor.for_window(1.0, mel_bins=128)
    features, mask = rebuilt.preprocessor([tone(0.2), tone(0.5)])
    frames, frame_mask = rebuilt.eval().encode(features, mask)
    assert frames.shape == (2, 25, encoder.output_dim) and frame_mask.sum(1).tolist() == [10, 25]
    torch.testing.assert_close(frames, encoder.encode(features, mask)[0])
    assert encoder.encode(features)[1] is None  # no mask given: every frame is audio


def test_frozen_means_frozen():
    encoder = AudioEncoder(config={**TINY, "dropout": 0.5, "attention_dropout": 0.5}, max_seconds=1.0)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model, optimizer = _head_step(encoder)
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.encoder.training
    assert all(p.grad is None for p in encoder.parameters())
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == set(map(id, model["head"].parameters()))
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    first = encoder.encode_audio(tone(0.3))
    assert first.grad_fn is None and torch.equal(first, encoder.encode_audio(tone(0.3)))


def test_unfrozen_encoder_trains():
    encoder = AudioEncoder(size="tiny", max_seconds=1.0, freeze_encoder=False)
    before = encoder.encoder.conv1.weight.detach().clone()
    _head_step(encoder)
    assert encoder.encoder.training and not torch.equal(before, encoder.encoder.conv1.weight.detach())


class _WorkerCollate:
    def __init__(self, preprocessor: AudioPreprocessor):
        self.preprocessor = preprocessor

    def __call__(self, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # nothing is cut in this data
            return *self.preprocessor(paths), os.getpid()


@pytest.mark.slow  # worker processes start by importing torch
def test_preprocessing_runs_in_dataloader_workers(tmp_path):
    encoder = AudioEncoder(size="tiny", max_seconds=1.0)
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.wav"))
        sf.write(paths[-1], tone(0.25 * (i + 1), 8000, hz=200.0 + 50 * i), 8000)
    collate = _WorkerCollate(encoder.preprocessor)
    loader = torch.utils.data.DataLoader(paths, batch_size=2, num_workers=1, collate_fn=collate,
                                         multiprocessing_context="spawn")
    outputs, masks, pids = [], [], set()
    for features, mask, pid in loader:
        outputs.append(encoder(features))
        masks.append(mask)
        pids.add(pid)
    assert os.getpid() not in pids
    frames, mask = encoder.encode_batch(paths)
    torch.testing.assert_close(torch.cat(outputs), frames, atol=1e-6, rtol=0)
    assert torch.equal(torch.cat(masks), mask) and mask.sum(1).tolist() == [13, 25, 38, 50]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it on one)")
def test_on_cuda_in_bf16_as_on_cpu():
    encoder = AudioEncoder(size="small", max_seconds=2.0)
    clips = [tone(1.0), tone(1.7, hz=300.0)]
    expected, mask = encoder.encode_batch(clips)
    encoder.cuda()
    on_gpu, gpu_mask = encoder.encode_batch(clips)
    assert on_gpu.device.type == gpu_mask.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), expected, atol=2e-3, rtol=2e-3)  # TF32 convolutions
    assert torch.equal(gpu_mask.cpu(), mask)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = encoder.encode_batch(clips)[0].float()
    assert torch.nn.functional.cosine_similarity(half.cpu().flatten(1), expected.flatten(1)).min() > 0.99
