"""Training you can trust, in one process: accumulation normalised by real tokens (with a negative
control), early stopping semantics and resume, inf/NaN steps skipped and reported."""

import pytest
import torch
import torch.nn.functional as F

from apt_plugin_lm.testing_runs import PaddedSequences as PaddedData
from apt_plugin_lm.testing_runs import run_with_nan_step
from apt_plugin_trainer.early_stopping import EarlyStopping
from apt_sdk import hookimpl, run_pipeline
from apt_sdk.testing import IsolatedKernel


class MeanOfMeans:
    """The 2024 bug: each micro-batch's mean loss, counted as one. Used only as a negative control."""

    def __call__(self, logits, batch):
        labels = batch["labels"]
        mean = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return mean, torch.tensor(1)


class TestPlugin:
    @hookimpl
    def register_data(self, register):
        register("padded", lambda options, context: PaddedData(options["batch_size"]))

    @hookimpl
    def register_losses(self, register):
        register("mean-of-means", lambda options, context: MeanOfMeans())


MANIFEST = {"kernel_api": "^1.0", "provides": {
    "data": {"padded": {"options": {"batch_size": {"type": "int", "default": 8}}}},
    "loss": {"mean-of-means": {}}}}


def accumulate(tmp_path, batch_size, steps_per_window, loss="lm-cross-entropy"):
    kernel = IsolatedKernel()
    kernel.add(TestPlugin(), MANIFEST, name="test-data")
    pipeline = {
        "pipeline": {"name": "accum", "seed": 0, "output_dir": str(tmp_path / f"{batch_size}x{steps_per_window}")},
        "data": {"use": "padded", "batch_size": batch_size},
        "model": {"use": "apt-lm", "d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64},
        "loss": {"use": loss},
        "trainer": {"use": "apt-trainer", "epochs": 1, "learning_rate": 1e-2, "warmup_steps": 0, "log_every": 0,
                    "accumulate_grad_batches": steps_per_window, "save_checkpoints": False, "export": False,
                    "temp_checkpoint_freq": 0},
    }
    result, context = run_pipeline(pipeline, kernel=kernel)
    return result["loss_history"], context.model.state_dict()


def assert_same_training(a, b):
    losses_a, params_a = a
    losses_b, params_b = b
    assert len(losses_a) == len(losses_b) == 5
    assert max(abs(x - y) for x, y in zip(losses_a, losses_b, strict=True)) < 1e-6
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], atol=1e-6, rtol=0, msg=name)


def test_accumulation_is_normalised_by_real_tokens_over_the_window(tmp_path):
    whole = accumulate(tmp_path, 8, 1)
    assert_same_training(whole, accumulate(tmp_path, 4, 2))
    assert_same_training(whole, accumulate(tmp_path, 2, 4))


class GradientCapture:
    """Keeps the model's weights at the start, each micro-batch of the first window and the gradient the
    trainer is about to apply at step 1."""

    def on_fit_start(self, trainer):
        self.initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self.batches = []

    def on_micro_batch_end(self, trainer, epoch, index, batch):
        if trainer.step == 0:
            self.batches.append({k: v.clone() for k, v in batch.items()})

    def on_before_optimizer_step(self, trainer, step):
        if step == 1:
            self.grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}


def test_the_applied_gradient_is_that_of_the_token_mean_over_the_whole_window(tmp_path):
    """Clipping off: the gradient at the optimizer step equals autograd of sum(token losses) / (tokens in
    the window), the micro-batches holding different numbers of real tokens."""
    capture = GradientCapture()

    class Capture:
        @hookimpl
        def register_callbacks(self, register):
            register("capture", lambda options, context: capture)

    kernel = IsolatedKernel()
    kernel.add(TestPlugin(), MANIFEST, name="test-data")
    kernel.add(Capture(), {"kernel_api": "^1.0", "provides": {"callback": {"capture": {}}}}, name="capture")
    pipeline = {
        "pipeline": {"name": "grad", "seed": 0, "output_dir": str(tmp_path / "run")},
        "data": {"use": "padded", "batch_size": 2},
        "model": {"use": "apt-lm", "d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64, "dropout": 0.0},
        "loss": {"use": "lm-cross-entropy"},
        "trainer": {"use": "apt-trainer", "max_steps": 1, "grad_clip": 0.0, "accumulate_grad_batches": 4,
                    "log_every": 0, "save_checkpoints": False, "export": False, "temp_checkpoint_freq": 0},
        "callbacks": [{"use": "capture"}],
    }
    _, context = run_pipeline(pipeline, kernel=kernel)
    counts = [int((b["labels"] != -100).sum()) for b in capture.batches]
    assert len(counts) == 4 and len(set(counts)) > 1  # uneven micro-batches: a mean of means would differ
    model = context.model
    model.load_state_dict(capture.initial)
    model.zero_grad()
    total = sum(F.cross_entropy(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).flatten(0, 1),
                                b["labels"].flatten(), ignore_index=-100, reduction="sum") for b in capture.batches)
    (total / sum(counts)).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(capture.grads[name], param.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_negative_control_mean_of_means_fails_the_same_assertion(tmp_path):
    whole = accumulate(tmp_path, 8, 1, loss="mean-of-means")
    with pytest.raises(AssertionError):
        assert_same_training(whole, accumulate(tmp_path, 2, 4, loss="mean-of-means"))


# -- early stopping -------------------------------------------------------------------------------
@pytest.mark.parametrize(("patience", "stops_at"), [(0, 3), (1, 3), (3, 5)])
def test_early_stopping_table(patience, stops_at):
    """val losses per epoch; the epoch (0-based) whose validation stops training."""
    values = [3.0, 2.0, 1.5, 1.6, 1.55, 1.58, 1.2, 1.1]
    stopper = EarlyStopping(patience=patience)
    stopped = next(epoch for epoch, value in enumerate(values) if stopper.update(value))
    assert stopped == stops_at


@pytest.mark.parametrize(("mode", "min_delta", "values", "stops_at"), [
    ("min", 0.1, [1.0, 0.95, 0.93, 0.5], 2),   # improvements smaller than min_delta do not count
    ("max", 0.0, [0.1, 0.2, 0.2, 0.2], 3),      # max mode: equal is no improvement
])
def test_early_stopping_mode_and_min_delta(mode, min_delta, values, stops_at):
    stopper = EarlyStopping(mode=mode, min_delta=min_delta, patience=2)
    assert next(i for i, v in enumerate(values) if stopper.update(v)) == stops_at


def es_pipeline(tmp_path, name, epochs, resume=None):
    # max_steps fixes the LR schedule, so the split run follows the same one as the whole run
    trainer = {"use": "apt-trainer", "epochs": epochs, "max_steps": 1000, "log_every": 0, "export": False,
               "eval_batches": 2}
    if resume:
        trainer["resume_from"] = resume
    return {
        "pipeline": {"name": name, "seed": 1, "output_dir": str(tmp_path / name)},
        "data": {"use": "text", "corpus": "python-stdlib-docs", "max_chars": 6000, "block_size": 16,
                 "batch_size": 8},
        "model": {"use": "apt-lm", "d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64},
        "loss": {"use": "lm-cross-entropy"},
        "trainer": trainer,
        # min_delta larger than any change: only the first validation improves, so stopping is exact
        "callbacks": [{"use": "early-stopping", "patience": 3, "min_delta": 100.0}],
    }


def test_early_stopping_state_survives_resume(tmp_path):
    whole, context = run_pipeline(es_pipeline(tmp_path, "whole", epochs=20))
    stopper = context.callbacks[0]
    assert stopper.stopped_step == whole["steps"] and whole["epochs"] == 4  # validations 2, 3, 4 did not improve
    first, _ = run_pipeline(es_pipeline(tmp_path, "split", epochs=3))  # ends with wait = 2
    assert first["steps"] < whole["steps"]
    resumed, context = run_pipeline(es_pipeline(tmp_path, "split", epochs=20, resume="latest"))
    assert context.callbacks[0].wait == 3 and resumed["steps"] == whole["steps"]
    assert resumed["loss_history"] == whole["loss_history"]


def test_train_model_stops_early_by_default(tmp_path):
    from apt_plugin_lm.corpus import stdlib_docstrings
    from apt_plugin_trainer import train_model

    texts = stdlib_docstrings(12_000)  # a small real corpus: held-out docstrings differ, so it overfits
    model, _, _ = train_model(epochs=100, batch_size=8, checkpoint_dir=tmp_path, texts=texts,
                              model={"d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64},
                              trainer={"learning_rate": 3e-3})
    epochs = len(list((tmp_path / "checkpoints").glob("*.pt")))
    assert epochs < 30, f"ran {epochs} epochs"


# -- inf/NaN steps --------------------------------------------------------------------------------
def test_a_non_finite_step_is_skipped_and_reported(tmp_path):
    recorder, result, context = run_with_nan_step(tmp_path / "nan", trainer={"learning_rate": 1e-2})
    for name, value in recorder.params[3].items():
        assert torch.equal(value, recorder.params[2][name]), f"{name} changed on the skipped step"
    assert not all(torch.equal(v, recorder.params[3][k]) for k, v in recorder.params[4].items())
    assert [e["global_step"] for e in recorder.errors] == [3]
    assert recorder.errors[0]["type"] == "NonFiniteGradients"
    assert recorder.optimizer.state_dict()["state"][0]["step"].item() == 4  # 5 steps, one skipped
    assert all(torch.isfinite(v).all() for v in context.model.state_dict().values())
