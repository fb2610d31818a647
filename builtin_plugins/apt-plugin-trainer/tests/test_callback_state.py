"""Callback state in checkpoints is keyed by each callback's ``state_key`` (its ``use`` name and the options
that tell it apart), not by its place in the pipeline: a callback inserted before the others, or callbacks
reordered, between a save and a resume keep each one's state; a key that finds no partner is said, by name.
Checkpoints of the list-positioned format still load."""

from __future__ import annotations

import torch

from apt_plugin_lm.testing import TINY_PIPELINE
from apt_sdk import Callback, hookimpl, run_pipeline
from apt_sdk.testing import IsolatedKernel


class Counter(Callback):
    """Counts the optimizer steps it saw, over resumes (its count is its checkpointed state)."""

    def __init__(self, label: str) -> None:
        self.label, self.steps, self.restored = label, 0, None

    def on_train_batch_end(self, trainer, step, metrics):
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps, "label": self.label}

    def load_state_dict(self, state: dict) -> None:
        self.restored = dict(state)
        self.steps = state["steps"]


class Tally(Counter):
    """The same, with a step size in its options that tells two of them apart."""

    def __init__(self, label: str, every: int = 1) -> None:
        super().__init__(label)
        self.every = every

    @property
    def state_key(self) -> str:
        return self.generate_state_key(every=self.every)


def run(tmp_path, uses: list[str], steps: int, resume: str | None = None, log=None) -> dict[str, Counter]:
    built: dict[str, Counter] = {}

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            for name in ("alpha", "beta", "gamma"):
                register(name, lambda options, context, name=name: built.setdefault(name, Counter(name)))
            register("tally", lambda options, context: built.setdefault(f"tally{options['every']}",
                                                                        Tally("tally", options["every"])))

    kernel = IsolatedKernel()
    manifest = {"alpha": {}, "beta": {}, "gamma": {},
                "tally": {"options": {"every": {"type": "int", "default": 1}}}}
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"callback": manifest}}, name="counters")
    text = TINY_PIPELINE.format(out=(tmp_path / "run").as_posix())
    for use in uses:
        name, _, every = use.partition(":")
        text += f'\n[[callbacks]]\nuse = "{name}"\n' + (f"every = {every}\n" if every else "")
    run_pipeline(text, [f"trainer.max_steps={steps}", "trainer.export=false"], kernel=kernel, resume=resume,
                 log=log or (lambda line: None))
    return built


def test_a_callback_inserted_before_the_others_and_a_reordering_keep_each_ones_state(tmp_path):
    run(tmp_path, ["alpha", "beta", "tally:2", "tally:3"], steps=2)
    said: list[str] = []
    resumed = run(tmp_path, ["gamma", "tally:3", "beta", "alpha", "tally:2"], steps=3, resume="latest",
                  log=said.append)
    # each continued its own count: 2 steps before, 1 after (by position, all but the first lost theirs)
    assert {name: c.steps for name, c in resumed.items()} == {"gamma": 1, "alpha": 3, "beta": 3, "tally2": 3,
                                                              "tally3": 3}
    assert {name: (c.restored or {}).get("label") for name, c in resumed.items()} == {
        "gamma": None, "alpha": "alpha", "beta": "beta", "tally2": "tally", "tally3": "tally"}
    # the newcomer's missing state is said, by its key; nothing else is
    warnings = [line for line in said if "callback state" in line]
    assert warnings == ["warning: callback state: the checkpoint holds none for 'gamma:Counter'; it starts afresh"]


def test_a_saved_state_without_its_callback_is_said_by_its_key(tmp_path):
    run(tmp_path, ["alpha", "beta"], steps=2)
    said: list[str] = []
    resumed = run(tmp_path, ["beta"], steps=3, resume="latest", log=said.append)
    assert resumed["beta"].steps == 3
    assert [line for line in said if "callback state" in line] == [
        "warning: callback state: the checkpoint's 'alpha:Counter' belongs to no callback of this pipeline; "
        "it is dropped"]


def test_a_checkpoint_with_callback_states_by_position_still_loads(tmp_path):
    run(tmp_path, ["alpha", "beta"], steps=2)
    checkpoint = next((tmp_path / "run" / "checkpoints").glob("*_step2.pt"))
    state = torch.load(checkpoint, weights_only=True)
    # the format before state keys: a list in pipeline order, each with its use name and class
    state["callbacks"] = [{"name": "alpha", "class": "Counter", "state": {"steps": 2, "label": "alpha"}},
                          {"name": "beta", "class": "Counter", "state": {"steps": 2, "label": "beta"}}]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    resumed = run(tmp_path, ["alpha", "beta"], steps=3, resume=str(old))
    assert (resumed["alpha"].steps, resumed["beta"].steps) == (3, 3)
