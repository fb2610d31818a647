"""The fit loop: epochs of optimizer steps over windows of micro-batches, from where the run is (``Position``),
with validation and checkpoints at their cadence, the callbacks' events, and the stops: ``max_steps``,
``max_time_minutes``, a callback's ``should_stop``, SIGTERM/SIGINT (the step finishes, the state is saved to
temp/) and a failing rank (every rank stops at the same check; rank 0 saves the last completed step).

Cadence: validation every ``eval_every`` steps, or at each epoch end when it is 0, and at the end of the run; a
checkpoint every ``checkpoint_every`` steps, or after each validation when it is 0, and at the end of the run.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

from apt_sdk import BuildContext, RunInterrupted

from .checkpointing import Checkpointing
from .export import ModelExport
from .failures import DistributedError
from .optimization import Optimization
from .options import TrainerOptions
from .position import Position
from .progress import ProgressBar, Throughput, mfu
from .run_state import Events, RunState
from .runtime import Runtime
from .validation import Validation


class FitLoop:
    def __init__(self, options: TrainerOptions, context: BuildContext, runtime: Runtime, position: Position,
                 optimization: Optimization, validation: Validation, checkpointing: Checkpointing, state: RunState,
                 events: Events, total_steps: int, export: ModelExport) -> None:
        self.options, self.context, self.runtime, self.position = options, context, runtime, position
        self.optimization, self.validation, self.checkpointing = optimization, validation, checkpointing
        self.state, self.events, self.total_steps, self.export = state, events, total_steps, export
        self.signal: int | None = None  # a SIGTERM/SIGINT received: the step finishes, then the run stops
        self.bar: ProgressBar | None = None
        self.exported_step: int | None = None  # of the last export_on_improvement

    def finished(self, start_epoch: int) -> bool:
        """Nothing left to train: every epoch done, or max_steps reached and its final checkpoint written (a temp
        checkpoint at max_steps, from a kill, still needs the validation and checkpoint of the end)."""
        step = self.position.global_step
        recorded = any(c["global_step"] == step for c in self.checkpointing.manager.checkpoints())
        return start_epoch >= self.options.epochs or (self.options.reached_max_steps(step) and recorded)

    def run(self, start_epoch: int, start_batch: int, started: float) -> None:
        """Train from (epoch, micro-batch); on any failure the callbacks' ``on_exception`` runs and the error is
        raised again, the process group let go."""
        options, position, state, errors = self.options, self.position, self.state, self.runtime.errors
        previous_handlers = self._install_signal_handlers()
        self.throughput = Throughput()
        deadline = started + options.max_time_minutes * 60 if options.max_time_minutes else None
        self.context.model.train()
        self.bar = ProgressBar(self.context.progress, self.total_steps, position.global_step, self.context.log)
        self.events("on_fit_start")
        interrupted = None
        try:
            for epoch in range(start_epoch, options.epochs):
                position.epoch, position.batches_done = epoch, start_batch if epoch == start_epoch else 0
                self.events("on_epoch_start", epoch)
                for first, window in self._guarded(self._windows(epoch, position.batches_done)):
                    if options.reached_max_steps(position.global_step):  # resumed at the limit: only the end is left
                        state.should_stop = True
                        break
                    self.optimization.step(window, first)
                    if not errors.failed:
                        with errors.capture(position.global_step):
                            self._after_step(first + len(window))
                    self._at_step_cadence()
                    if options.temp_checkpoint_freq and position.global_step % options.temp_checkpoint_freq == 0:
                        self.checkpointing.save_temp()
                    done = options.reached_max_steps(position.global_step) or \
                        (deadline is not None and time.perf_counter() >= deadline)
                    # one all-reduce per step: any rank failed / was signalled / wants to stop
                    signalled, stop = errors.check(self.signal is not None, bool(done or state.should_stop))
                    if signalled:
                        interrupted = self.signal or signal.SIGTERM
                        break
                    if stop:
                        state.should_stop = True
                        break
                if interrupted:
                    break
                self._end_epoch(epoch)
                if state.should_stop:
                    break
            if interrupted:
                path = self.checkpointing.save_temp()
                raise RunInterrupted(f"interrupted by {signal.Signals(interrupted).name} at step "
                                     f"{position.global_step}; saved {path}\nresume with: "
                                     f"{self.context.resume_command}", interrupted)
        except BaseException as exc:
            self.bar.close()
            if isinstance(exc, DistributedError):
                self.checkpointing.save_after_failure(exc)
            self.events("on_exception", exc)
            _restore_handlers(previous_handlers)
            self.runtime.close()
            raise
        self.bar.close()
        _restore_handlers(previous_handlers)

    def _windows(self, epoch: int, start: int) -> Iterator[tuple[int, list[dict]]]:
        """(first micro-batch index, list of micro-batches) per optimizer step of this epoch."""
        size, window, first = self.options.accumulate_grad_batches, [], start
        for index, batch in enumerate(self.context.data.train_batches(epoch, start), start=start):
            window.append(batch)
            if len(window) == size:
                yield first, window
                window, first = [], index + 1
        if window:
            yield first, window

    def _guarded(self, windows: Iterator[tuple[int, list[dict]]]) -> Iterator[tuple[int, list[dict]]]:
        """The windows, with a loader error kept for the next check: this rank then trains on nothing."""
        errors = self.runtime.errors
        while True:
            item = None
            with errors.capture(self.position.global_step + 1):
                item = next(windows, None)
            if errors.failed:
                yield self.position.batches_done, []
                return
            if item is None:
                return
            yield item

    def _after_step(self, batches_done: int) -> None:
        position = self.position
        position.batches_done = batches_done
        metrics = {"loss": self.optimization.last_loss(), "lr": self.optimization.scheduler.get_last_lr()[0]}
        if self.options.log_every and position.global_step % self.options.log_every == 0:
            self._log_interval()
        self.bar.update(position.global_step, position.epoch)
        self.events("on_train_batch_end", position.global_step, metrics)

    def _log_interval(self) -> None:
        self.optimization.flush()
        runtime, position = self.runtime, self.position
        rate = self.throughput.interval(float(self.optimization.tokens))
        position.metrics["tokens_per_s"] = rate
        seq_len = runtime.seq_len or getattr(self.context.data, "block_size", None)
        utilisation = mfu(runtime.model, runtime.device, rate, seq_len, runtime.dist.world_size)
        if utilisation is not None:
            position.metrics["mfu"] = utilisation
        self.bar.interval(position.epoch, position.global_step, position.loss_history[-1], rate, utilisation)

    def _at_step_cadence(self) -> None:
        """Validate every eval_every steps; checkpoint every checkpoint_every steps, or after each validation
        when checkpoint_every is 0."""
        options, step = self.options, self.position.global_step
        if options.eval_every and step % options.eval_every == 0:
            self.validation.run(self.bar.note)
            if not options.checkpoint_every:
                self.checkpointing.checkpoint(epoch_complete=False)
            if not options.reached_max_steps(step):  # the end of the run exports anyway
                self._export_improvement()
        if options.checkpoint_every and step % options.checkpoint_every == 0:
            self.checkpointing.checkpoint(epoch_complete=False)
        self.validation.keep_best(self.checkpointing.saved_step)

    def _end_epoch(self, epoch: int) -> None:
        """Validation and a checkpoint where the cadence or the end of the run asks for them; callbacks."""
        options = self.options
        end = self.state.should_stop or epoch == options.epochs - 1
        if end or not options.eval_every:
            self.validation.run(self.bar.note)
        if end or not (options.eval_every or options.checkpoint_every):  # early stopping may have stopped it now
            self.checkpointing.checkpoint(epoch_complete=not self.state.should_stop)
        if not (end or self.state.should_stop):  # the end of the run exports anyway
            self._export_improvement()
        self.validation.keep_best(self.checkpointing.saved_step)
        self.optimization.flush()
        self.position.metrics.update(train_loss=self.position.recent_loss())
        self.events("on_epoch_end", epoch, dict(self.position.metrics))

    def _export_improvement(self) -> None:
        """model/ now, when this step's validation is a new best and ``export_on_improvement`` asks for it (so
        ``apt-kernel serve --watch`` serves a run while it trains)."""
        step = self.position.global_step
        if self.options.export_on_improvement and self.validation.best_step == step \
                and self.validation.validated_at == step and self.exported_step != step:
            self.export.write(self.context.run_dir / "model")
            self.exported_step = step

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum, frame):
            self.signal = signum

        return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_handlers(handlers: dict) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
