"""What a callback sees of the trainer is the kernel's TrainerState and nothing else: the trainer's parts (its
optimisation step, validation, checkpointing, options) are out of a callback's reach, so none can come to
depend on them."""

from apt_plugin_lm.testing import TINY_PIPELINE
from apt_sdk import Callback, TrainerState, hookimpl, run_pipeline
from apt_sdk.testing import IsolatedKernel


def test_a_callback_sees_the_trainer_state_and_nothing_else(tmp_path):
    seen: dict[str, object] = {}

    class Look(Callback):
        def on_train_batch_end(self, trainer, step, metrics):
            seen["names"] = {name for name in dir(trainer) if not name.startswith("_")}
            seen["is_state"] = isinstance(trainer, TrainerState)
            seen["values"] = (trainer.step, trainer.epoch, len(trainer.losses), trainer.optimizer is not None,
                              trainer.model is not None, trainer.run_dir)

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("look", lambda options, context: Look())

    kernel = IsolatedKernel()
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"callback": {"look": {}}}}, name="look")
    text = TINY_PIPELINE.format(out=(tmp_path / "run").as_posix()) + '\n[[callbacks]]\nuse = "look"\n'
    run_pipeline(text, ["trainer.max_steps=1", "trainer.export=false"], kernel=kernel)
    declared = set(TrainerState.__annotations__) | {name for name, value in vars(TrainerState).items()
                                                    if callable(value) and not name.startswith("_")}
    assert seen["names"] == declared and seen["is_state"]
    assert seen["values"] == (1, 0, 0, True, True, tmp_path / "run")  # losses are read back at the interval
