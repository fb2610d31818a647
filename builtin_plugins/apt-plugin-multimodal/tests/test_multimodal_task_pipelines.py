"""Each task's pipeline in its tiny configuration (the full one's file with these overrides) trains on
CPU and learns: accuracy far above chance. The full configurations are benchmarks (bench/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from apt_plugin_multimodal.cli import multimodal

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]
FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
TINY = ["trainer.log_every=0", "trainer.export=false", "data.num_workers=0", "model.d_model=32", "model.d_ff=64",
        "model.num_heads=2", "model.num_layers=1"]
TASKS = {  # pipeline, tiny overrides, the metric and the least it must reach (chance: 10% / 10% / ~0%)
    "digits": ("multimodal-digits.toml", ["data.image_size=8", "trainer.epochs=10", "trainer.learning_rate=3e-3",
                                          "model.vision={patch_size=2, hidden_size=32, intermediate_size=64, "
                                          "num_hidden_layers=1, num_attention_heads=2}"], "test_accuracy", 0.6),
    "fsdd": ("multimodal-spoken-digits.toml", ["trainer.epochs=10", "trainer.learning_rate=3e-3", "model.audio={"
                                               "d_model=32, encoder_layers=1, encoder_attention_heads=2, "
                                               "encoder_ffn_dim=64}"], "test_accuracy", 0.6),
}


def subset(manifest: Path, every: int) -> None:
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[::every]) + "\n")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_tiny_configuration_learns(task, run_pipeline, tmp_path, monkeypatch):
    name, overrides, metric, least = TASKS[task]
    data = tmp_path / "data"
    if task == "fsdd":
        if not FSDD.is_dir():
            pytest.skip("needs the FSDD recordings in ../shared/data")
        args = ["fsdd", "--source", str(FSDD), "--out", str(data / "fsdd")]
    else:
        args = [task, "--out", str(data / task)]
    assert CliRunner().invoke(multimodal, ["prepare", *args]).exit_code == 0
    if task == "fsdd":  # a third of the recordings
        for split in ("train", "test"):
            subset(data / "fsdd" / f"{split}.jsonl", 3)
    monkeypatch.chdir(tmp_path)  # the pipelines name data/... relative to the working folder
    result, _ = run_pipeline((REPO / "pipelines" / name).read_text(), overrides=TINY + overrides)
    assert result[metric] >= least, json.dumps({k: v for k, v in result.items() if k.startswith("test")})
