"""The trainer plugin: train_model, CheckpointManager layout and safety, resume."""

import json
import logging
import math
import pickle
import subprocess

import pytest
import torch

from apt_plugin_lm.model import APTConfig, APTLargeModel
from apt_plugin_lm.testing import TINY_PIPELINE
from apt_plugin_trainer import CheckpointManager, train_model
from apt_plugin_trainer.optim import param_groups
from apt_sdk import UserError, hookimpl, run_pipeline

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
    state = torch.load(manager.resolve("latest"), weights_only=True)
    restored, saved = optimizer.state_dict()["state"], state["optimizer_state_dict"]["state"]
    assert restored.keys() == saved.keys() and len(restored) == len(list(fresh.parameters()))
    for index, moments in saved.items():  # the moments of the run, not merely some optimizer state
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(restored[index][key], moments[key]), (index, key)
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


def test_what_is_not_a_checkpoint_is_refused_saying_what_it_is(tmp_path):
    # a text file was "IndexError: list index out of range", a folder "IsADirectoryError", a bare state_dict a
    # KeyError later on, and random bytes torch's advice to load with weights_only=False
    (tmp_path / "notes.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 107)))
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "weights.pt")
    manager = CheckpointManager(tmp_path / "run")
    for name, words in (("notes.txt", "not a PyTorch checkpoint file"),
                        ("noise.pt", "torch's safe loader refused it"),
                        ("weights.pt", "not a checkpoint of this trainer (it has no model_state_dict)"),
                        (".", "it is a folder; give a checkpoint file")):
        with pytest.raises(UserError, match="cannot (load checkpoint|resume from)") as raised:
            manager.load_checkpoint(torch.nn.Linear(2, 2), checkpoint_path=tmp_path / name)
        assert words in str(raised.value) and "weights_only=False" not in str(raised.value)


def test_a_changed_checkpoint_is_refused_by_hash(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = manager.save_checkpoint(torch.nn.Linear(2, 2), None, None, 0, 1, [1.0])
    with open(path, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(UserError, match="does not match the hash"):
        manager.load_checkpoint(torch.nn.Linear(2, 2), checkpoint_path=path)


def test_partial_files_of_dead_writers_are_removed_live_ones_kept_and_neither_chosen(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save_checkpoint(torch.nn.Linear(2, 2), None, None, 0, 5, [1.0])
    dead = subprocess.Popen(["true"])
    dead.wait()  # its PID names no process now
    live = subprocess.Popen(["sleep", "60"])
    try:
        folder = tmp_path / "checkpoints"
        dead_file = folder / f".apt_model_epoch1_step9.pt.{dead.pid}.tmp"
        live_file = folder / f".apt_model_epoch1_step9.pt.{live.pid}.tmp"
        for leftover in (dead_file, live_file):
            leftover.write_bytes(b"half a checkpoint")
        assert manager.resolve("latest").name == "apt_model_epoch0_step5.pt"
        CheckpointManager(tmp_path)  # opening touches nothing
        assert dead_file.exists() and live_file.exists()
        CheckpointManager(tmp_path).save_checkpoint(torch.nn.Linear(2, 2), None, None, 0, 6, [1.0])
        assert not dead_file.exists() and live_file.exists()  # a live writer's file is its own
    finally:
        live.kill()
        live.wait()


def test_a_manager_that_only_loads_creates_no_folders(tmp_path):
    manager = CheckpointManager(tmp_path / "nothing")
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        manager.load_checkpoint(torch.nn.Linear(2, 2), latest=True)
    assert not (tmp_path / "nothing").exists()


def test_loading_into_a_model_of_another_shape_names_the_tensors(tmp_path):
    CheckpointManager(tmp_path).save_checkpoint(torch.nn.Linear(2, 3), None, None, 0, 1, [])
    with pytest.raises(UserError) as raised:
        CheckpointManager(tmp_path).load_checkpoint(torch.nn.Linear(2, 4), latest=True)
    message = str(raised.value)
    assert "does not fit this model: weight: (3, 2) in the checkpoint, (4, 2) in the model; " \
           "bias: (3,) in the checkpoint, (4,) in the model" in message


def test_metadata_is_strict_json_and_a_non_finite_loss_is_never_best(tmp_path):
    manager = CheckpointManager(tmp_path)
    model = torch.nn.Linear(2, 2)
    manager.save_checkpoint(model, None, None, 0, 1, [float("nan")], {"val_loss": float("nan")})
    text = (tmp_path / "metadata.json").read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"metadata.json holds {name}"))
    assert data["checkpoints"][0]["metrics"] == {"val_loss": None}


def test_a_validation_loss_of_nan_is_not_marked_best(tmp_path):
    from apt_plugin_lm.loss import LMCrossEntropy
    from apt_sdk.testing import IsolatedKernel

    class NaNWhenValidating(LMCrossEntropy):
        model = None

        def __call__(self, outputs, batch):
            loss_sum, count = super().__call__(outputs, batch)
            return (loss_sum * float("nan"), count) if not self.model.training else (loss_sum, count)

    loss = NaNWhenValidating()

    class Plugin:
        @hookimpl
        def register_losses(self, register):
            def build(options, context):
                loss.model = context.model
                return loss
            register("nan-val", build)

    kernel = IsolatedKernel()
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"loss": {"nan-val": {}}}}, name="nan-val")
    result, _ = run_pipeline(TINY_PIPELINE.format(out=(tmp_path / "run").as_posix()).replace(
        'use = "lm-cross-entropy"', 'use = "nan-val"'), kernel=kernel)
    entries = json.loads((tmp_path / "run" / "metadata.json").read_text())["checkpoints"]
    assert result["val_loss"] != result["val_loss"]  # NaN
    assert [c["is_best"] for c in entries] == [False] and entries[0]["metrics"]["val_loss"] is None


def test_keep_last_keeps_best_too(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    model = torch.nn.Linear(2, 2)
    manager.save_checkpoint(model, None, None, 0, 1, [], {"val_loss": 1.0}, is_best=True)
    manager.save_checkpoint(model, None, None, 1, 2, [], {"val_loss": 2.0})
    manager.save_checkpoint(model, None, None, 2, 3, [], {"val_loss": 3.0})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "apt_model_epoch0_step1.pt", "apt_model_epoch2_step3.pt"]


def test_three_epochs_leave_three_checkpoints_and_resuming_with_six_leaves_six(tmp_path):
    """The original signature: resume_from (a glob here), temp_checkpoint_freq, save_path, logger."""
    common = dict(batch_size=4, checkpoint_dir=tmp_path / "out", texts=TEXTS, early_stopping=False,
                  model={"d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64})
    train_model(epochs=3, temp_checkpoint_freq=1, **common)
    assert len(list((tmp_path / "out" / "checkpoints").iterdir())) == 3
    assert not (tmp_path / "out" / "temp").exists()  # temp checkpoints are gone after a clean finish
    lines = []
    logger = logging.getLogger("test.train_model")
    logger.addHandler(type("Collect", (logging.Handler,), {"emit": lambda self, r: lines.append(r.getMessage())})())
    logger.setLevel(logging.INFO)
    glob = str(tmp_path / "out" / "checkpoints" / "apt_model_epoch2_*.pt")
    model, tokenizer, _ = train_model(epochs=6, resume_from=glob, save_path=tmp_path / "saved", logger=logger,
                                      **common)
    names = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert names == [f"apt_model_epoch{e}_step{2 * (e + 1)}.pt" for e in range(6)]
    state = torch.load(tmp_path / "out" / "checkpoints" / names[-1], weights_only=True)
    assert len(state["loss_history"]) == 12
    assert any(line.startswith("resumed from") and "apt_model_epoch2_step6.pt" in line for line in lines)
    reloaded = APTLargeModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(reloaded.state_dict()["tok.weight"], model.state_dict()["tok.weight"])
    assert (tmp_path / "saved" / "tokenizer").is_dir()
    again = train_model(epochs=6, resume_from="latest", **common)[0]  # finished: nothing more is trained
    assert torch.equal(again.state_dict()["tok.weight"], model.state_dict()["tok.weight"])


def test_train_model_refuses_texts_that_are_not_a_list_of_strings(tmp_path):
    with pytest.raises(TypeError, match="texts must be a list of strings, not str; wrap a single text as"):
        train_model(texts="a string", checkpoint_dir=tmp_path)
    with pytest.raises(TypeError, match=r"texts\[0\] is int \(1\); texts must be strings"):
        train_model(texts=[1, 2, 3], checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="texts is an empty list"):
        train_model(texts=[], checkpoint_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_holds_the_whole_training_state(trained):
    out = trained[0]
    state = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict", "epoch",
            "global_step", "loss_history", "metrics", "position", "best_val", "callbacks", "rng", "world_size",
            "config", "pipeline", "pipeline_hash"} <= set(state)
    assert state["position"] == {"epoch": 1, "batches_done": 2, "epoch_complete": True}
    assert state["world_size"] == 1 and len(state["rng"]) == 1
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    (key, early_stopping), = state["callbacks"].items()  # keyed by use name and state_key
    assert key == "early-stopping:EarlyStopping(monitor='val_loss', mode='min')" and "wait" in early_stopping
    assert state["pipeline"]["trainer"]["epochs"] == 2 and len(state["pipeline_hash"]) == 64


class Probe:
    """Records the dtype of the first Linear's output in every training forward, and can ask the trainer
    to drop the update of one (finite) step."""

    def __init__(self, skip_step=None):
        self.dtypes, self.skip_step, self.params = [], skip_step, {}

    def on_fit_start(self, trainer):
        linear = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(lambda module, args, out: self.dtypes.append(out.dtype) if module.training
                                     else None)

    def on_before_optimizer_step(self, trainer, step):
        if step == self.skip_step:
            trainer.skip_next_step = True

    def on_train_batch_end(self, trainer, step, metrics):
        self.params[step] = [p.detach().clone() for p in trainer.model.parameters()]


def run_with_probe(tmp_path, probe, **trainer):
    from apt_sdk.testing import IsolatedKernel

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("probe", lambda options, context: probe)

    kernel = IsolatedKernel()
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"callback": {"probe": {}}}}, name="probe")
    text = TINY_PIPELINE.format(out=(tmp_path / "run").as_posix()) + '\n[[callbacks]]\nuse = "probe"\n'
    values = {k: str(v).lower() if isinstance(v, bool) else repr(v) for k, v in trainer.items()}  # TOML's true
    return run_pipeline(text, [f"trainer.{k}={v}" for k, v in values.items()], kernel=kernel)[0]


def test_bf16_autocast_really_computes_in_bf16_on_cpu(tmp_path):
    probe = Probe()
    run_with_probe(tmp_path, probe, precision="bf16")
    assert probe.dtypes and set(probe.dtypes) == {torch.bfloat16}
    plain = Probe()
    run_with_probe(tmp_path / "fp32", plain)
    assert set(plain.dtypes) == {torch.float32}


def test_skip_next_step_drops_a_finite_update(tmp_path):
    probe = Probe(skip_step=2)
    result = run_with_probe(tmp_path, probe)
    unchanged = [torch.equal(a, b) for a, b in zip(probe.params[1], probe.params[2], strict=True)]
    changed = [torch.equal(a, b) for a, b in zip(probe.params[2], probe.params[3], strict=True)]
    assert all(unchanged) and not any(changed)  # step 2 left every weight as it was; step 3 moved them
    assert all(map(math.isfinite, result["loss_history"]))


def test_bf16_autocast_trains_on_cpu(tmp_path):
    train_model(epochs=1, batch_size=4, checkpoint_dir=tmp_path, texts=TEXTS, trainer={"precision": "bf16"},
                model={"d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64})
    state = torch.load(next((tmp_path / "checkpoints").glob("*.pt")), weights_only=True)
    assert all(torch.isfinite(torch.tensor(state["loss_history"])))
    assert all(v.dtype == torch.float32 for v in state["model_state_dict"].values() if v.is_floating_point())


def test_a_compiled_model_is_compiled_once_though_each_epoch_ends_with_a_short_batch(tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    class Rows:  # no forward hook, which would break the compiled graph
        rows: list[int] = []

        def on_micro_batch_end(self, trainer, epoch, index, batch):
            self.rows.append(batch["input_ids"].shape[0])

    probe = Rows()
    # the tiny corpus gives 70 full batches of 8 and a last one of 4 in the first epoch: 75 steps cross it
    result = run_with_probe(tmp_path, probe, compile=True, max_steps=75, epochs=2)
    assert result["steps"] == 75 and all(map(math.isfinite, result["loss_history"]))
    assert sorted(set(probe.rows)) == [4, 8]
    assert counters["stats"]["unique_graphs"] == 1  # the short batch ran eager: no second graph


def test_fp16_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(UserError, match="fp16.*needs CUDA"):
        train_model(epochs=1, batch_size=4, checkpoint_dir=tmp_path, texts=TEXTS, trainer={"precision": "fp16"})


def test_early_stopping_on_a_metric_the_validation_does_not_report(tmp_path):
    # monitor = "val_acc" (no such metric) never stopped anything and never said so
    def pipeline(out: str, extra: str = "") -> str:
        return TINY_PIPELINE.format(out=(tmp_path / out).as_posix()).replace(
            "max_steps = 4", "max_steps = 6\neval_every = 2") + \
            f'\n[[callbacks]]\nuse = "early-stopping"\nmonitor = "val_acc"\n{extra}'

    with pytest.raises(UserError, match="early-stopping: the validation reports no 'val_acc'; it reports .*'val_loss'"):
        run_pipeline(pipeline("strict"))
    assert (tmp_path / "strict" / "checkpoints" / "apt_model_epoch0_step2.pt").exists()  # the validation's, kept
    said: list[str] = []
    result, _ = run_pipeline(pipeline("lenient", "strict = false\n"), log=said.append)
    assert result["steps"] == 6 and sum("reports no 'val_acc'" in line for line in said) == 1


def test_a_checkpoint_dir_under_a_file_is_refused_before_training(tmp_path):
    # it was a NotADirectoryError traceback at the first checkpoint, exit 1, the steps before it lost
    (tmp_path / "a-file").write_text("")
    text = TINY_PIPELINE.format(out=(tmp_path / "run").as_posix())
    refused = r"\[trainer\] checkpoint_dir .*: .*a-file/ck cannot be a folder: .*a-file is a file"
    with pytest.raises(UserError, match=refused):
        run_pipeline(text, [f'trainer.checkpoint_dir="{tmp_path / "a-file" / "ck"}"'])
