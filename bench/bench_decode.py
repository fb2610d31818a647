"""``bench_encoders.py --decode``: what reading a large file costs, decoded in full (as it was) and decoded only
as far as it is used (as it is now); and an epoch of clips decoded at every read against kept features.

Each measured read runs in a fresh process (``bench_encoders.py --read KIND:PATH``), which prints the read's
time and its peak resident memory above the process's own after its imports and a warm-up (Linux: the peak is
reset through /proc/self/clear_refs just before the read). Medians over the processes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).with_name("bench_encoders.py")
WINDOW, IMAGE_SIZE = 1.0, 64


def _status(field: str) -> float:
    """A /proc/self/status memory field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _readers(kind: str):
    """(the old read, the new read) of one file, each returning what the model would get."""
    if kind.startswith("audio"):
        import librosa

        from apt_plugin_audio import AudioPreprocessor

        pre = AudioPreprocessor.for_window(WINDOW)

        def whole(path):  # the preprocessor before: librosa.load of the whole file, then cut by the extractor
            wave = librosa.load(path, sr=16_000, mono=True)[0]
            return pre.feature_extractor([wave], sampling_rate=16_000, return_tensors="pt", padding="max_length",
                                         max_length=pre.max_samples, truncation=True)["input_features"]

        return whole, lambda path: pre([path])[0]
    from apt_plugin_vision import ImagePreprocessor, load_image

    pre = ImagePreprocessor.for_size(IMAGE_SIZE)
    return (lambda path: pre.processor(images=[load_image(path)], return_tensors="pt")["pixel_values"],
            lambda path: pre([path]))


def read_once(kind: str, path: str) -> None:
    """In a fresh process: one read of ``path`` the ``kind`` way ("audio-whole", "image-reduced", ...)."""
    read = _readers(kind)[0 if kind.endswith("whole") else 1]
    warm = Path(path).with_name("warm" + Path(path).suffix)
    warnings.simplefilter("ignore")  # the cut clip's warning
    read(str(warm))
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) from here on
    start = time.perf_counter()
    read(path)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": _status("VmHWM") - before}))


def _measure(kind: str, path: Path, rounds: int) -> tuple[float, float]:
    times, peaks = [], []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, str(SCRIPT), "--read", f"{kind}:{path}"], capture_output=True,
                             text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        found = json.loads(out.stdout.strip().splitlines()[-1])
        times.append(found["seconds"])
        peaks.append(found["peak_mb"])
    return statistics.median(times), statistics.median(peaks)


def _write_wav(path: Path, seconds: int, rate: int, channels: int) -> None:
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", rate, channels, "PCM_16") as file:
        for _ in range(seconds):
            file.write((0.1 * rng.standard_normal((rate, channels))).astype(np.float32))


def _write_png(path: Path, side: int) -> None:
    from PIL import Image

    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.empty((side, side, 3), np.uint8)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = ramp[:, None]
    pixels[..., 2] = 128 + 100 * np.sin(ramp / 9)[None, :]
    Image.fromarray(pixels).save(path, compress_level=1)


def _line(label: str, old: tuple[float, float], new: tuple[float, float], same: str) -> None:
    print(f"{label:<52} whole {old[0]:6.2f} s {old[1]:+7.0f} MB   now {new[0]:6.3f} s {new[1]:+7.0f} MB   {same}")


def _epoch(folder: Path, rounds: int) -> None:
    """An epoch of 300 one-second 8 kHz clips, every clip decoded at each read against the kept features."""
    from apt_plugin_audio import AudioPreprocessor
    from apt_plugin_lm.tokenization import CharTokenizer
    from apt_plugin_multimodal.dataset import MultimodalDataset

    records = []
    for i in range(300):
        _write_wav(folder / f"clip{i}.wav", 1, 8000, 1)
        records.append({"prompt": "digit? ", "text": "seven", "audio_path": str(folder / f"clip{i}.wav")})
    tokenizer = CharTokenizer.train(["digit? seven"])
    data = MultimodalDataset(records, tokenizer, audio_processor=AudioPreprocessor.for_window(WINDOW))
    uncached = MultimodalDataset(records, tokenizer, audio_processor=AudioPreprocessor.for_window(WINDOW))
    uncached._features.clear()  # decoded at every read, as before
    per_read, with_kept = [], []
    for _ in range(rounds):
        per_read.append(_timed(lambda: [uncached[i] for i in range(len(uncached))]))
        with_kept.append(_timed(lambda: [data[i] for i in range(len(data))]))
    print(f"{'an epoch of 300 x 1 s 8 kHz clips (MultimodalDataset)':<52} decoded per read "
          f"{statistics.median(per_read):6.3f} s   kept features {statistics.median(with_kept):6.3f} s")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wav, png = folder / "long.wav", folder / "large.png"
        _write_wav(wav, 30 * 60, 44_100, 2)
        _write_wav(folder / "warm.wav", 2, 44_100, 2)
        _write_png(png, 9400)
        _write_png(folder / "warm.png", 256)
        old, new = _readers("audio")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            same = "features identical" if bool((old(wav) == new(wav)).all()) else "FEATURES DIFFER"
        _line("first 1 s of a 30-min 44.1 kHz stereo WAV (318 MB)", _measure("audio-whole", wav, rounds),
              _measure("audio-window", wav, rounds), same)
        old, new = _readers("image")
        levels = (old(png) - new(png)).abs() / 0.0145  # one grey level, normalised by CLIP's std
        _line(f"a 9400x9400 PNG for a {IMAGE_SIZE} px tower", _measure("image-whole", png, rounds),
              _measure("image-reduced", png, rounds),
              f"{levels.mean():.2f} grey levels apart on average, {levels.max():.1f} at most")
        (folder / "clips").mkdir()
        _epoch(folder / "clips", rounds)
