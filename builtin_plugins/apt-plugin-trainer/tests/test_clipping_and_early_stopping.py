"""Two training rules checked by their definitions: gradient clipping (grad_clip, HF's max_grad_norm)
scales the step's gradient to the limit when its norm is past it and leaves it alone otherwise; early
stopping's min_delta, as Lightning defines it, is the margin an improvement must exceed, in both modes."""

from __future__ import annotations

import pytest
import torch

from apt_plugin_lm.testing import TINY_PIPELINE
from apt_plugin_trainer.early_stopping import EarlyStopping
from apt_sdk import hookimpl, run_pipeline


class Gradients:
    """The gradients the optimizer is given at the first step (after unscaling and clipping)."""

    def __init__(self) -> None:
        self.first: list[torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, step):
        if step == 1:
            self.first = [p.grad.detach().clone() for p in trainer.model.parameters() if p.grad is not None]


def first_step_gradients(tmp_path, grad_clip: float) -> list[torch.Tensor]:
    from apt_sdk.testing import IsolatedKernel

    probe = Gradients()

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("gradients", lambda options, context: probe)

    kernel = IsolatedKernel()
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"callback": {"gradients": {}}}}, name="gradients")
    text = TINY_PIPELINE.format(out=(tmp_path / f"clip-{grad_clip}").as_posix())
    text += '\n[[callbacks]]\nuse = "gradients"\n'
    run_pipeline(text, ["trainer.max_steps=1", f"trainer.grad_clip={grad_clip!r}", "trainer.export=false"],
                 kernel=kernel)
    assert probe.first, "the first step's gradients were not seen"
    return probe.first


def norm(gradients: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients])).item()


def test_grad_clip_scales_a_larger_gradient_to_the_limit_and_leaves_a_smaller_one_alone(tmp_path):
    unclipped = first_step_gradients(tmp_path, 0.0)  # 0 = off
    full = norm(unclipped)
    # 1.53 for the tiny model: past the default limit (1.0), so this also shows that 0 turns clipping off
    assert full > 1.0, f"the first gradient's norm {full} no longer tells 'off' from the default limit"
    limit = full / 4
    clipped = first_step_gradients(tmp_path, limit)
    assert norm(clipped) == pytest.approx(limit, rel=1e-4)
    scale = limit / (full + 1e-6)  # torch's clip_grad_norm_: the same direction, shorter
    for got, raw in zip(clipped, unclipped, strict=True):
        torch.testing.assert_close(got, raw * scale, rtol=1e-4, atol=1e-9)
    under = first_step_gradients(tmp_path, full * 4)  # a limit above the norm changes nothing
    for got, raw in zip(under, unclipped, strict=True):
        torch.testing.assert_close(got, raw, rtol=1e-5, atol=0)


# -- early stopping's min_delta ---------------------------------------------------------------------
# Binary fractions, so that "exceeds by exactly min_delta" is exact in floating point.
@pytest.mark.parametrize(("mode", "values", "improved"), [
    ("max", [1.0, 1.25, 1.5, 1.5625, 1.875, 0.5], [True, False, True, False, True, False]),
    ("min", [1.0, 0.75, 0.5, 0.4375, 0.125, 2.0], [True, False, True, False, True, False]),
])
def test_an_improvement_must_exceed_min_delta(mode, values, improved):
    """min_delta = 0.25: a change of exactly 0.25 or less in the right direction is no improvement, and
    the best stays where it was (so two small steps do not add up to one)."""
    stopper = EarlyStopping(mode=mode, min_delta=0.25, patience=10)
    seen = []
    for value in values:
        before = stopper.best
        stopper.update(value)
        seen.append(stopper.best != before)
    assert seen == improved
    assert stopper.best == values[4] and stopper.wait == 1


@pytest.mark.parametrize(("mode", "values"), [("max", [0.5, 0.6, 0.7, 0.8]), ("min", [0.8, 0.7, 0.6, 0.5])])
def test_steady_improvements_smaller_than_min_delta_stop_the_run(mode, values):
    stopper = EarlyStopping(mode=mode, min_delta=0.25, patience=2)
    assert [stopper.update(v) for v in values[:3]] == [False, False, True]  # two validations without improvement
    assert stopper.best == values[0]
    assert not EarlyStopping(mode=mode, min_delta=0.05, patience=2).update(values[0])
    lenient = EarlyStopping(mode=mode, min_delta=0.05, patience=2)
    assert [lenient.update(v) for v in values] == [False] * 4  # each change of 0.1 exceeds 0.05
