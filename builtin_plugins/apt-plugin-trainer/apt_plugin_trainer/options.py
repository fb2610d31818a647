"""The ``[trainer]`` options as a typed object, read where each is used. The manifest (``apt-plugin.toml``) is
where they are declared, with their types, defaults, limits and help; the kernel has checked them against it
before the trainer is built."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TrainerOptions:
    epochs: int = 1
    max_steps: int = 0  # 0: no limit
    max_time_minutes: float = 0.0  # 0: no limit
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = -1  # -1: 10% of the steps, at most 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0: off
    eval_every: int = 0  # 0: at each epoch end
    eval_batches: int = 0  # 0: all
    log_every: int = 50
    device: str = "auto"
    precision: str = "fp32"
    accumulate_grad_batches: int = 1
    temp_checkpoint_freq: int = 100  # 0: off
    deterministic: bool = False
    compile: bool = False
    strategy: str = "ddp"
    checkpoint_dir: str | None = None  # None: the pipeline's output_dir
    resume_from: str | None = None
    save_checkpoints: bool = True
    checkpoint_every: int = 0  # 0: after each validation
    keep_last: int = 0  # 0: all
    export: str | bool = "best"
    export_on_improvement: bool = False

    @classmethod
    def from_options(cls, options: dict) -> TrainerOptions:
        """The validated options of the pipeline's ``[trainer]`` table; ``save_every_epoch``, the former name of
        ``save_checkpoints``, is taken where it is given."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in options.items() if k in known}
        if options.get("save_every_epoch") is not None:
            values["save_checkpoints"] = options["save_every_epoch"]
        return cls(**values)

    def reached_max_steps(self, step: int) -> bool:
        """The one test of the step limit: ``max_steps`` is set and ``step`` has reached it."""
        return bool(self.max_steps) and step >= self.max_steps

    def total_steps(self, steps_per_epoch: int) -> int:
        """The optimizer steps of the whole run, which the learning-rate schedule spans."""
        return self.max_steps or self.epochs * steps_per_epoch

    def warmup(self, total_steps: int) -> int:
        return self.warmup_steps if self.warmup_steps >= 0 else min(100, total_steps // 10)

    @property
    def exports_best(self) -> bool:
        """model/ gets the best validation's weights (``export = "best"``, or ``true``)."""
        return self.export in ("best", True)
