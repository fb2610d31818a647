"""The trainer plugin: train_model, CheckpointManager layout and safety, resume."""

import json
import pickle

import pytest
import torch

from apt_plugin_lm.model import APTConfig, APTLargeModel
from apt_plugin_trainer import CheckpointManager, train_model
from apt_plugin_trainer.optim import param_groups
from apt_sdk import UserError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Return the number of items in the container.",
    "Raise ValueError if the value is not present.",
    "A context manager that changes the working directory.",
    "Open the file and return a stream.",
    "Split the string at the first occurrence of sep.",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_model")
    model, tokenizer, config = train_model(epochs=2, batch_size=4, checkpoint_dir=out, texts=TEXTS,
                                           model={"d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64})
    return out, model, tokenizer, config


def test_train_model_returns_model_tokenizer_config_and_leaves_two_checkpoints(trained):
    out, model, tokenizer, config = trained
    assert isinstance(model, APTLargeModel) and isinstance(config, APTConfig)
    assert config.vocab_size == tokenizer.vocab_size and config.pad_token_id == tokenizer.pad_id
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert files == ["apt_model_epoch0_step2.pt", "apt_model_epoch1_step4.pt"]
    meta = json.loads((out / "metadata.json").read_text())
    assert [c["epoch"] for c in meta["checkpoints"]] == [0, 1]
    assert sum(c["is_best"] for c in meta["checkpoints"]) == 1
    assert all(len(c["sha256"]) == 64 and "val_loss" in c["metrics"] for c in meta["checkpoints"])
    assert (out / "model" / "model.safetensors").exists() and (out / "tokenizer" / "char_vocab.json").exists()


def test_load_checkpoint_round_trip(trained):
    out, model, _, config = trained
    fresh = APTLargeModel(config)
    optimizer = torch.optim.AdamW(param_groups(fresh, 0.1))
    manager = CheckpointManager(out)
    epoch, step, history, metrics = manager.load_checkpoint(fresh, optimizer, latest=True)
    assert (epoch, step, len(history)) == (1, 4, 4) and "val_loss" in metrics
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b)
    assert optimizer.state_dict()["state"]  # optimizer moments restored
    state = torch.load(manager.resolve("latest"), weights_only=True)
    assert {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "epoch", "global_step",
            "loss_history", "metrics", "config"} <= set(state)
    assert state["config"]["vocab_size"] == config.vocab_size
    best_epoch = manager.load_checkpoint(APTLargeModel(config), best=True)[0]
    assert best_epoch == next(c["epoch"] for c in manager.checkpoints() if c["is_best"])


def test_epochs_count_from_zero_and_last_is_latest(tmp_path):
    manager = CheckpointManager(tmp_path)
    model = torch.nn.Linear(2, 2)
    for epoch in range(3):
        manager.save_checkpoint(model, None, None, epoch, (epoch + 1) * 10, [0.5], {"val_loss": 3 - epoch},
                                is_best=True)
    assert manager.load_checkpoint(model)[0] == 2
    assert [c["is_best"] for c in manager.checkpoints()] == [False, False, True]  # the latest best only
    assert manager.resolve(str(tmp_path / "checkpoints" / "apt_model_epoch1_*.pt")).name == "apt_model_epoch1_step20.pt"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the foreign pickle it refuses
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model_state_dict": Evil()}, fh)
    manager = CheckpointManager(tmp_path / "run")
    with pytest.raises(UserError, match="cannot load checkpoint"):
        manager.load_checkpoint(torch.nn.Linear(2, 2), checkpoint_path=path)
    assert not marker.exists()


def test_a_changed_checkpoint_is_refused_by_hash(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = manager.save_checkpoint(torch.nn.Linear(2, 2), None, None, 0, 1, [1.0])
    with open(path, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(UserError, match="does not match the hash"):
        manager.load_checkpoint(torch.nn.Linear(2, 2), checkpoint_path=path)


def test_leftover_temp_files_are_removed_and_never_chosen(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save_checkpoint(torch.nn.Linear(2, 2), None, None, 0, 5, [1.0])
    leftover = tmp_path / "checkpoints" / ".apt_model_epoch1_step9.pt.123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert manager.resolve("latest").name == "apt_model_epoch0_step5.pt"
    CheckpointManager(tmp_path)
    assert not leftover.exists()


def test_keep_last_keeps_best_too(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    model = torch.nn.Linear(2, 2)
    manager.save_checkpoint(model, None, None, 0, 1, [], {"val_loss": 1.0}, is_best=True)
    manager.save_checkpoint(model, None, None, 1, 2, [], {"val_loss": 2.0})
    manager.save_checkpoint(model, None, None, 2, 3, [], {"val_loss": 3.0})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "apt_model_epoch0_step1.pt", "apt_model_epoch2_step3.pt"]


def test_three_epochs_leave_three_checkpoints_and_resuming_with_six_leaves_six(tmp_path):
    common = dict(batch_size=4, checkpoint_dir=tmp_path, texts=TEXTS, early_stopping=False,
                  model={"d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64})
    train_model(epochs=3, **common)
    assert len(list((tmp_path / "checkpoints").iterdir())) == 3
    train_model(epochs=6, trainer={"resume_from": "latest"}, **common)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [f"apt_model_epoch{e}_step{2 * (e + 1)}.pt" for e in range(6)]
    state = torch.load(tmp_path / "checkpoints" / names[-1], weights_only=True)
    assert len(state["loss_history"]) == 12


def test_a_checkpoint_holds_the_whole_training_state(trained):
    out = trained[0]
    state = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict", "epoch",
            "global_step", "loss_history", "metrics", "position", "best_val", "callbacks", "rng", "world_size",
            "config", "pipeline", "pipeline_hash"} <= set(state)
    assert state["position"] == {"epoch": 1, "batches_done": 2, "epoch_complete": True}
    assert state["world_size"] == 1 and len(state["rng"]) == 1
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert state["callbacks"][0]["class"] == "EarlyStopping" and "wait" in state["callbacks"][0]["state"]
    assert state["pipeline"]["trainer"]["epochs"] == 2 and len(state["pipeline_hash"]) == 64


def test_bf16_autocast_trains_on_cpu(tmp_path):
    train_model(epochs=1, batch_size=4, checkpoint_dir=tmp_path, texts=TEXTS, trainer={"precision": "bf16"},
                model={"d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64})
    state = torch.load(next((tmp_path / "checkpoints").glob("*.pt")), weights_only=True)
    assert all(torch.isfinite(torch.tensor(state["loss_history"])))
    assert all(v.dtype == torch.float32 for v in state["model_state_dict"].values() if v.is_floating_point())


def test_fp16_without_cuda_is_a_clear_error(tmp_path):
    from apt_sdk import UserError

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(UserError, match="fp16.*needs CUDA"):
        train_model(epochs=1, batch_size=4, checkpoint_dir=tmp_path, texts=TEXTS, trainer={"precision": "fp16"})
