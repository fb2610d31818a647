"""The ``apt-trainer`` component: AdamW with warmup + cosine decay, gradient accumulation normalised by real
tokens, clipping, mixed precision, validation, checkpoints you can resume from exactly, callbacks, and DDP/FSDP
under torchrun. Model, data and loss come from the pipeline's other components, through the kernel's protocols
(``apt_sdk.DataModule``, ``Model``, ``Loss``).

``Trainer`` composes parts that each own their state, Lightning style, and import nothing of it:

- ``Position`` (position.py): where the run is; ``RunState`` (run_state.py): what callbacks see of it;
- ``Runtime`` (runtime.py): device, process group, the module that trains, autocast, forward and loss;
- ``Optimization`` (optimization.py): one optimizer step over a window, and the schedule;
- ``Validation`` (validation.py): the validation loss, and the best one;
- ``Checkpointing`` (checkpointing.py): the whole state into a checkpoint and back (files: ``checkpoint.py``);
- ``FitLoop`` (fit_loop.py): epochs and steps, the cadence of validation and checkpoints, the stops;
- ``EndOfRun`` (end_of_run.py): the result, model/, ``on_fit_end``, the run's ``end_of_run`` record;
- ``ModelExport`` (export.py): model/, at the end and, with ``export_on_improvement``, at every new best.
"""

from __future__ import annotations

import math
import time

from apt_sdk import BuildContext

from .checkpointing import Checkpointing
from .end_of_run import EndOfRun
from .export import ModelExport
from .fit_loop import FitLoop
from .optimization import Optimization
from .options import TrainerOptions
from .position import Position
from .run_state import Events, RunState
from .runtime import Runtime
from .validation import Validation


class Trainer:
    """``fit(context)`` trains ``context.model`` on ``context.data`` with ``context.loss`` (``apt_sdk.Trainer``).

    :param options: the ``[trainer]`` options.
    """

    def __init__(self, options: TrainerOptions) -> None:
        self.options = options
        self.resume: str | None = options.resume_from
        """The contract's resume hand-back: the checkpoint ``resume_from`` continues from (or None). The kernel
        reads it once the trainer is built and hands it back in ``context.resume`` (``--resume`` wins)."""

    def fit(self, context: BuildContext) -> dict:
        """Train, validate and checkpoint; resume first when ``context.resume`` names a checkpoint. Returns the
        result: the losses, steps, tokens, the last checkpoint, model/ and a ``summary`` of them."""
        options, position = self.options, Position()
        state = RunState(context, position)  # all that callbacks see
        events = Events(context, state)
        runtime = Runtime(options, context)
        total_steps = options.total_steps(math.ceil(context.data.steps_per_epoch(0) /
                                                    options.accumulate_grad_batches))
        optimization = Optimization(options, runtime, position, state, events, total_steps)
        validation = Validation(options, runtime, position, context.data, events)
        checkpointing = Checkpointing(options, context, runtime, position, optimization, validation, events)
        export = ModelExport(context, runtime)
        end = EndOfRun(options, context, runtime, position, optimization, validation, checkpointing, events, export)
        loop = FitLoop(options, context, runtime, position, optimization, validation, checkpointing, state, events,
                       total_steps, export)

        start_epoch, start_batch = checkpointing.resume(context.resume) if context.resume else (0, 0)
        started = time.perf_counter()
        if context.resume and loop.finished(start_epoch):
            if end.ended():
                return end.nothing_to_do(started)
            context.log(f"the run finished training at step {position.global_step}, but its end-of-run work "
                        "(model/, the callbacks' on_fit_end) did not complete: doing it now")
            events("on_fit_start")
            return end.run(started, checkpointing.resumed_from)
        loop.run(start_epoch, start_batch, started)
        return end.run(started)
