"""When the trainer validates, checkpoints and what it exports: eval_every, checkpoint_every, eval_batches
and export = "best" | "last"."""

import json

import pytest
import torch

from apt_plugin_lm.model import APTLargeModel
from apt_plugin_lm.testing import TINY_PIPELINE
from apt_plugin_trainer.validation import sampled
from apt_sdk import UserError, hookimpl, run_pipeline
from apt_sdk.testing import IsolatedKernel


class Recorder:
    """Records validations (step, loss, weights), checkpoints, the inputs of evaluation forwards, and from
    ``corrupt_after`` on adds noise to every weight after each step (validation then gets worse)."""

    def __init__(self, corrupt_after: int | None = None) -> None:
        self.validations, self.weights, self.checkpoints, self.eval_inputs = [], {}, [], []
        self.corrupt_after = corrupt_after

    def on_fit_start(self, trainer):
        self.trainer = trainer
        trainer.model.register_forward_pre_hook(
            lambda module, args, kwargs: None if module.training else self.eval_inputs.append(
                kwargs["input_ids"][:, :4].clone()), with_kwargs=True)

    def on_validation_end(self, trainer, metrics):
        self.validations.append((metrics["step"], metrics["val_loss"]))
        self.weights[metrics["step"]] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def on_checkpoint_saved(self, trainer, path):
        self.checkpoints.append(path)

    def on_train_batch_end(self, trainer, step, metrics):
        if self.corrupt_after is not None and step > self.corrupt_after:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.add_(torch.randn_like(p))


def run(tmp_path, recorder, overrides=(), folder="run"):
    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("recorder", lambda options, context: recorder)

    kernel = IsolatedKernel()
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"callback": {"recorder": {}}}}, name="recorder")
    text = TINY_PIPELINE.format(out=(tmp_path / folder).as_posix()) + '\n[[callbacks]]\nuse = "recorder"\n'
    return run_pipeline(text, ["data.max_chars=4000", "trainer.epochs=20", *overrides], kernel=kernel)[0]


def steps_of(paths):
    return [int(str(p).rsplit("_step", 1)[1].removesuffix(".pt")) for p in paths]


def test_eval_every_validates_every_n_steps_only_and_checkpoints_follow_it(tmp_path):
    recorder = Recorder()
    result = run(tmp_path, recorder, ["trainer.max_steps=30", "trainer.eval_every=8"])
    assert result["epochs"] >= 3  # epoch ends at other steps passed without a validation or a checkpoint
    assert [step for step, _ in recorder.validations] == [8, 16, 24, 30]  # 30: the end of the run
    assert steps_of(recorder.checkpoints) == [8, 16, 24, 30]
    entries = json.loads((tmp_path / "run" / "metadata.json").read_text())["checkpoints"]
    best = min(recorder.validations, key=lambda v: v[1])[0]
    assert [c["global_step"] for c in entries if c["is_best"]] == [best]


def test_checkpoint_every_sets_its_own_step_cadence(tmp_path):
    recorder = Recorder()
    run(tmp_path, recorder, ["trainer.max_steps=22", "trainer.eval_every=8",
                             "trainer.checkpoint_every=5"])
    assert [step for step, _ in recorder.validations] == [8, 16, 22]
    assert steps_of(recorder.checkpoints) == [5, 10, 15, 20, 22]
    assert sorted(steps_of((tmp_path / "run" / "checkpoints").iterdir())) == [5, 10, 15, 20, 22]


def test_eval_batches_are_spread_evenly_over_the_split_and_the_same_each_time(tmp_path):
    assert sampled(145, 4) == {18, 54, 90, 126} and sampled(10, 10) is None and sampled(10, 0) is None
    recorder = Recorder()
    run(tmp_path, recorder, ["data.max_chars=20000", "data.batch_size=2", "trainer.max_steps=4",
                             "trainer.eval_every=2", "trainer.eval_batches=3"])
    everything = [b["input_ids"][:, :4] for b in recorder.trainer.data.val_batches()]
    chosen = sorted(sampled(len(everything), 3))
    assert len(everything) > 20 and chosen[0] > 0 and chosen[-1] > len(everything) // 2
    assert len(recorder.eval_inputs) == 6  # two validations of three batches
    for seen, index in zip(recorder.eval_inputs, chosen * 2, strict=True):
        assert torch.equal(seen, everything[index])


def exported(tmp_path, folder="run"):
    return APTLargeModel.from_pretrained(tmp_path / folder / "model").state_dict()


def same(a, b):
    return all(torch.equal(a[k].cpu(), b[k].cpu()) for k in b)


def test_export_holds_the_best_validations_weights_by_default_or_the_last_steps(tmp_path):
    recorder = Recorder(corrupt_after=8)  # validation at 12 and 16 is worse than at 8
    result = run(tmp_path, recorder, ["trainer.max_steps=16", "trainer.eval_every=4"])
    losses = dict(recorder.validations)
    assert min(losses, key=losses.get) == 8 and losses[16] > losses[8]
    assert result["exported_step"] == 8 and "best validation: step 8" in dict(result["summary"])["model"]
    assert same(exported(tmp_path), recorder.weights[8]) and not same(exported(tmp_path), recorder.weights[16])

    last = Recorder(corrupt_after=8)
    result = run(tmp_path, last, ["trainer.max_steps=16", "trainer.eval_every=4", "trainer.export='last'"], "last")
    assert result["exported_step"] == 16 and same(exported(tmp_path, "last"), last.weights[16])


def test_after_a_resume_the_best_weights_come_from_their_checkpoint(tmp_path):
    first = Recorder()
    run(tmp_path, first, ["trainer.max_steps=8", "trainer.eval_every=4"])
    best = min(first.validations, key=lambda v: v[1])[0]
    second = Recorder(corrupt_after=8)
    result = run(tmp_path, second, ["trainer.max_steps=16", "trainer.eval_every=4", "trainer.resume_from='latest'"])
    assert [step for step, _ in second.validations] == [12, 16]
    assert result["exported_step"] == best and same(exported(tmp_path), first.weights[best])


def test_the_former_option_name_and_export_false_still_work(tmp_path):
    result = run(tmp_path, Recorder(), ["trainer.save_every_epoch=false", "trainer.export=false"])
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "model").exists()
    assert result["checkpoint"] is None and "export_dir" not in result


def test_a_best_that_no_checkpoint_holds_is_kept_in_memory_for_the_export(tmp_path):
    recorder = Recorder(corrupt_after=8)  # best at 8; checkpoints at 5, 10, 15 and 16 only
    result = run(tmp_path, recorder, ["trainer.max_steps=16", "trainer.eval_every=4", "trainer.checkpoint_every=5"])
    assert 8 not in steps_of(recorder.checkpoints) and min(recorder.validations, key=lambda v: v[1])[0] == 8
    assert result["exported_step"] == 8 and same(exported(tmp_path), recorder.weights[8])


class ExportWatcher(Recorder):
    """A Recorder that, after every step, notes the step of the validation whose weights model/ holds (None: no
    model/), as a reader of the run folder (`apt-kernel serve --watch`) would find it then."""

    def __init__(self, corrupt_after: int | None = None) -> None:
        super().__init__(corrupt_after)
        self.seen: dict[int, int | None] = {}

    def on_train_batch_end(self, trainer, step, metrics):
        folder = trainer.run_dir / "model"
        now = exported(folder.parent.parent, folder.parent.name) if folder.exists() else None
        self.seen[step] = None if now is None else next(s for s, w in self.weights.items() if same(now, w))
        super().on_train_batch_end(trainer, step, metrics)


def test_export_on_improvement_writes_model_at_every_new_best_while_the_run_trains(tmp_path):
    watcher = ExportWatcher(corrupt_after=8)  # validations at 4 and 8 improve, 12 and 16 do not
    run(tmp_path, watcher, ["trainer.max_steps=16", "trainer.eval_every=4", "trainer.export_on_improvement=true"])
    assert [watcher.seen[s] for s in (3, 5, 9, 13, 15)] == [None, 4, 8, 8, 8]
    assert same(exported(tmp_path), watcher.weights[8])  # and the end exports the best, as without the option
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".model")) == []

    without = ExportWatcher()
    run(tmp_path, without, ["trainer.max_steps=8", "trainer.eval_every=4"], "without")
    assert set(without.seen.values()) == {None}  # model/ only at the end


def test_an_export_keeps_the_files_a_user_added_to_model(tmp_path):
    run(tmp_path, Recorder(), ["trainer.max_steps=4"])
    (tmp_path / "run" / "model" / "README.md").write_text("my model card")
    run(tmp_path, Recorder(), ["trainer.max_steps=8", "trainer.resume_from='latest'"])
    assert (tmp_path / "run" / "model" / "README.md").read_text() == "my model card"
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".model")]


def test_export_on_improvement_without_an_export_is_refused_before_training(tmp_path):
    with pytest.raises(UserError, match="export_on_improvement.*export = false"):
        run(tmp_path, Recorder(), ["trainer.export=false", "trainer.export_on_improvement=true"])
    assert not (tmp_path / "run" / "checkpoints").exists()
