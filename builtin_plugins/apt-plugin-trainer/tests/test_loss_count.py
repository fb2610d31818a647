"""A loss returns ``(loss_sum, count)``, its count a tensor or a plain ``int`` (the Loss protocol): an int count
trains and validates exactly as the tensor does. It trained, then crashed at the first validation
(``'int' object has no attribute 'float'``)."""

from __future__ import annotations

from apt_plugin_lm.loss import LMCrossEntropy
from apt_plugin_lm.testing import TINY_PIPELINE
from apt_sdk import hookimpl, run_pipeline
from apt_sdk.testing import IsolatedKernel


class IntCount(LMCrossEntropy):
    def __call__(self, logits, batch):
        loss_sum, count = super().__call__(logits, batch)
        return loss_sum, int(count)


def test_a_loss_counting_its_targets_as_an_int_trains_and_validates_as_a_tensor_count_does(tmp_path):
    class Plugin:
        @hookimpl
        def register_losses(self, register):
            register("int-count", lambda options, context: IntCount())

    kernel = IsolatedKernel()
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"loss": {"int-count": {}}}}, name="int-count")
    settings = ["trainer.max_steps=3", "trainer.eval_every=2", "trainer.export=false"]
    results = {}
    for loss in ("lm-cross-entropy", "int-count"):
        text = TINY_PIPELINE.format(out=(tmp_path / loss).as_posix()).replace("lm-cross-entropy", loss)
        results[loss] = run_pipeline(text, settings, kernel=kernel)[0]
    tensor, plain = results["lm-cross-entropy"], results["int-count"]
    assert plain["loss_history"] == tensor["loss_history"] and len(plain["loss_history"]) == 3
    assert plain["val_loss"] == tensor["val_loss"] and plain["best_val_loss"] == tensor["best_val_loss"]
