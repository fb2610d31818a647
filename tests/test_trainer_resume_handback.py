"""The resume hand-back of the contract: a trainer whose own options continue the run says so in its ``resume``
attribute (``apt_sdk.Trainer``), the kernel reads it once the trainer is built, claims the run folder as a
continued run and hands it to ``fit`` in ``context.resume``; a ``--resume`` given to the kernel wins. Before,
the builtin trainer's factory set ``context.resume`` as a side effect, and a trainer that declared it was
refused: the folder "already holds a run"."""

from __future__ import annotations

import pytest

from apt_sdk import UserError, hookimpl
from apt_sdk.testing import IsolatedKernel

PIPELINE = """
[pipeline]
name = "handback"
output_dir = "{out}"

[data]
use = "nothing"

[model]
use = "linear"

[loss]
use = "mse"

[trainer]
use = "notes"
{resume}
"""


class Nothing:
    def steps_per_epoch(self, epoch: int) -> int:
        return 0

    def train_batches(self, epoch: int, start: int = 0):
        return iter(())

    def val_batches(self):
        return iter(())


class NoteTaker:
    """Leaves a note in the run folder; continues the folder's run when its options say ``resume_from``."""

    def __init__(self, resume_from: str | None) -> None:
        self.resume = resume_from
        self.given: str | None = None

    def fit(self, context) -> dict:
        self.given = context.resume
        (context.run_dir / "notes.txt").open("a").write(f"resume={context.resume}\n")
        return {}


def kernel_with_note_taker() -> IsolatedKernel:
    import torch

    class Plugin:
        @hookimpl
        def register_data(self, register):
            register("nothing", lambda options, context: Nothing())

        @hookimpl
        def register_models(self, register):
            register("linear", lambda options, context: torch.nn.Linear(1, 1))

        @hookimpl
        def register_losses(self, register):
            register("mse", lambda options, context: torch.nn.functional.mse_loss)

        @hookimpl
        def register_trainers(self, register):
            register("notes", lambda options, context: NoteTaker(options.get("resume_from")))

    kernel = IsolatedKernel(autoload=False)
    trainer = {"notes": {"options": {"resume_from": {"type": "str", "optional": True}}}}
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"data": {"nothing": {}}, "model": {"linear": {}},
                                                             "loss": {"mse": {}}, "trainer": trainer}}, name="notes")
    return kernel


def test_a_trainer_that_continues_the_run_by_its_options_says_so_and_the_kernel_takes_it(apt_isolated_env, tmp_path):
    from apt_sdk import run_pipeline

    out = tmp_path / "run"
    run_pipeline(PIPELINE.format(out=out.as_posix(), resume=""), kernel=kernel_with_note_taker())
    with pytest.raises(UserError, match="already holds a run"):  # without the hand-back: another run's folder
        run_pipeline(PIPELINE.format(out=out.as_posix(), resume=""), kernel=kernel_with_note_taker())
    _, context = run_pipeline(PIPELINE.format(out=out.as_posix(), resume='resume_from = "latest"'),
                              kernel=kernel_with_note_taker())
    assert context.resume == "latest" and context.trainer.given == "latest"
    # a --resume given to the kernel wins over the trainer's own
    _, context = run_pipeline(PIPELINE.format(out=out.as_posix(), resume='resume_from = "latest"'),
                              kernel=kernel_with_note_taker(), resume="best")
    assert context.trainer.given == "best"
    assert (out / "notes.txt").read_text().splitlines() == ["resume=None", "resume=latest", "resume=best"]
