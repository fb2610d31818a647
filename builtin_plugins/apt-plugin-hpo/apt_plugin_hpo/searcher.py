"""`HyperparameterSearcher`: Optuna over the real validation loss of real training runs.

A search space maps dotted pipeline keys (the ones `--set` takes, e.g. ``trainer.learning_rate``) to
a tuple ``(low, high)`` for a range (floats log-uniform when positive, ints uniform) or a list of
choices. In TOML, where there are no tuples, a range is ``{ range = [low, high] }`` (``log = false``
for a linear float range) and a plain array is a list of choices.

Under torchrun every rank runs the search: rank 0 asks Optuna for the trial's parameters and
broadcasts them, all ranks train the same pipeline, only rank 0 touches the storage.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch.distributed as dist
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from apt_sdk import UserError, check_pipeline, run_pipeline

from .pruning import active_trial


def parse_space(space: dict[str, Any], source: str = "search space") -> dict[str, BaseDistribution]:
    """Optuna distributions from a Python or TOML search space; a bad entry is a UserError naming it."""
    if not isinstance(space, dict) or not space:
        raise UserError(f"{source}: expected a table of parameters, got {space!r}")
    return {key: _distribution(key, spec, source) for key, spec in space.items()}


def _distribution(key: str, spec: Any, source: str) -> BaseDistribution:
    log = None
    if isinstance(spec, dict):
        unknown = set(spec) - {"range", "log", "choices"}
        if unknown or len({"range", "choices"} & set(spec)) != 1:
            raise UserError(f"{source}: {key} = {spec!r}: use {{ range = [low, high] }} or {{ choices = [...] }}")
        if "choices" in spec:
            spec = list(spec["choices"])
        else:
            spec, log = tuple(spec["range"]), spec.get("log")
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"{source}: {key}: an empty list of choices")
        return CategoricalDistribution(spec)
    if isinstance(spec, tuple):
        if len(spec) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in spec):
            raise UserError(f"{source}: {key} = {spec!r}: a range is two numbers (low, high)")
        low, high = spec
        if not low < high:
            raise UserError(f"{source}: {key}: range low {low} must be below high {high}")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=bool(log))
        log = low > 0 if log is None else log
        if log and low <= 0:
            raise UserError(f"{source}: {key}: a log range needs low > 0 (got {low})")
        return FloatDistribution(float(low), float(high), log=log)
    raise UserError(f"{source}: {key} = {spec!r}: expected a (low, high) range or a list of choices")


def open_storage(url: str | None, default_dir: Path):
    """SQLite in the run folder by default; ``journal:PATH`` (or a .log/.journal file) for parallel workers;
    any SQLAlchemy URL for a database server. One that cannot be opened is a UserError naming it."""
    try:
        if url is None:
            default_dir.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(f"sqlite:///{default_dir / 'study.db'}")
        if url.startswith("journal:") or url.endswith((".log", ".journal")):
            path = Path(url.removeprefix("journal:").removeprefix("//"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and the drivers' errors (not declared here), OSError
        shown = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url or str(default_dir))  # no password in a log
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"--storage {shown}: cannot open this Optuna storage: {type(exc).__name__}: {reason}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class HyperparameterSearcher:
    """Search ``search_space`` with Optuna: each trial trains ``pipeline`` (a path, TOML text or dict)
    with the trial's parameters and returns its validation loss; or calls ``objective(params, trial)``."""

    def __init__(self, search_space: dict[str, Any], n_trials: int = 100, storage: str | None = None, *,
                 pipeline: str | Path | dict | None = None, objective: Callable[[dict, Any], float] | None = None,
                 overrides: list[str] | None = None, trial_overrides: list[str] | None = None,
                 study_name: str | None = None, metric: str = "val_loss",
                 direction: str = "minimize", pruner: optuna.pruners.BasePruner | None = None,
                 sampler: optuna.samplers.BaseSampler | None = None, output_dir: str | Path | None = None,
                 plugins_dirs: tuple[str, ...] = (), log: Callable[[str], None] = print) -> None:
        if (pipeline is None) == (objective is None):
            raise UserError("HyperparameterSearcher: pass either pipeline= or objective=")
        self.space = parse_space(search_space)
        self.n_trials, self.metric, self.direction = n_trials, metric, direction
        self.pipeline, self.objective, self.overrides = pipeline, objective, list(overrides or [])
        self.trial_overrides = [*(trial_overrides or []), *self.overrides]  # the budget every trial runs with
        self.plugins_dirs, self.log = plugins_dirs, log
        self.pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        self.sampler = sampler
        self.defaults: dict[str, Any] | None = None
        if pipeline is not None:
            # fail before any trial: the pipeline, and every key of the space as an option its plugins accept
            examples = [f"{key}={_toml_value(_example(self.space[key]))}" for key in self.space]
            check_pipeline(pipeline, [*self.trial_overrides, *examples], plugins_dirs=plugins_dirs)
            data = check_pipeline(pipeline, self.trial_overrides, plugins_dirs=plugins_dirs)
            self.base_name = data["pipeline"]["name"]
            self.output_dir = Path(output_dir or Path(data["pipeline"].get("output_dir") or
                                                      f"runs/{self.base_name}") / "hpo")
            self.defaults = {key: value for key in self.space if (value := _lookup(data, key)) is not None}
        else:
            self.base_name = "objective"
            self.output_dir = Path(output_dir or "runs/hpo")
        self.study_name = study_name or f"{self.base_name}-hpo"
        self.storage = storage

    # -- the study -------------------------------------------------------------------------------
    def create_study(self) -> optuna.Study:
        return optuna.create_study(study_name=self.study_name, storage=open_storage(self.storage, self.output_dir),
                                   direction=self.direction, pruner=self.pruner, sampler=self.sampler,
                                   load_if_exists=True)

    def optimize(self, n_trials: int | None = None, enqueue_defaults: bool = False) -> optuna.Study | None:
        """Run ``n_trials`` trials (this process's share) and return the study (None on ranks other than 0)."""
        n_trials = self.n_trials if n_trials is None else n_trials
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self.create_study() if _rank() == 0 else None
        if study is not None and enqueue_defaults and self.defaults and len(self.defaults) == len(self.space):
            study.enqueue_trial(self.defaults, skip_if_exists=True)  # the pipeline as written is the baseline
        for _ in range(n_trials):
            self._one_trial(study)
        return study

    def _one_trial(self, study: optuna.Study | None) -> None:
        trial = study.ask(self.space) if study is not None else None
        message = [trial.number, trial.params] if trial is not None else [None, None]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(message, src=0)  # every rank trains rank 0's parameters
        number, params = message
        try:
            value = self._evaluate(number, params, trial)
        except optuna.TrialPruned:
            if study is not None:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self.log(f"trial {number}: pruned {params}")
            return
        except UserError:
            if study is not None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except Exception as exc:  # a failed trial is a result, not the end of the search
            if study is not None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.log(f"trial {number}: failed: {type(exc).__name__}: {exc}")
            return
        if study is not None:
            study.tell(trial, value)
        self.log(f"trial {number}: {self.metric} {value:.4f} {params}")

    def _evaluate(self, number: int, params: dict, trial) -> float:
        if self.objective is not None:
            value = self.objective(params, trial)
        else:
            value = self._train(number, params, trial)
        if value is None or not math.isfinite(value):
            raise ValueError(f"{self.metric} is {value!r}")
        return float(value)

    def _train(self, number: int, params: dict, trial) -> float:
        # trial numbers count per study: two studies sharing output_dir must not share trial folders
        run_dir = self.output_dir / self.study_name / f"trial_{number:03d}"
        overrides = [*self.trial_overrides, f"pipeline.output_dir={_toml_value(str(run_dir))}",
                     *(f"{key}={_toml_value(value)}" for key, value in params.items())]
        data = check_pipeline(self.pipeline, overrides, plugins_dirs=self.plugins_dirs)
        data["callbacks"] = [*data.get("callbacks", []), {"use": "optuna-pruning"}]
        with active_trial(trial) as callback:
            result, _ = run_pipeline(data, plugins_dirs=self.plugins_dirs, log=lambda message: None)
        pruned = [callback.pruned]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(pruned, src=0)  # rank 0 decided; every rank stopped at that step
        if pruned[0]:
            raise optuna.TrialPruned()
        if self.metric not in result:  # a misspelt metric fails every trial the same way: stop at the first
            numbers = sorted(k for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool))
            raise UserError(f"[tool.hpo] metric {self.metric!r}: the trainer's result has no such key; "
                            f"its numbers are {', '.join(numbers)}")
        return result[self.metric]

    # -- results ---------------------------------------------------------------------------------
    def get_best_params(self, study: optuna.Study) -> dict[str, Any]:
        return dict(study.best_params)

    def visualize_results(self, study: optuna.Study, save_dir: str | Path) -> list[Path]:
        """Optimization history and parameter importances as PNGs (Optuna's matplotlib backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as oplt

        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        plots = [("optimization_history.png", oplt.plot_optimization_history)]
        if len(complete) >= 2 and len(self.space) >= 2:
            plots.append(("param_importances.png", oplt.plot_param_importances))
        written = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for name, plot in plots:
                axes = plot(study)
                figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
                figure.savefig(save_dir / name, dpi=100, bbox_inches="tight")
                plt.close(figure)
                written.append(save_dir / name)
        return written

    def write_best_pipeline(self, study: optuna.Study, path: str | Path) -> Path:
        """The pipeline as written (with ``overrides`` but not the trials' budget) and the best parameters."""
        import tomli_w

        if self.pipeline is None:
            raise UserError("write_best_pipeline needs a pipeline")
        best = [f"{key}={_toml_value(value)}" for key, value in study.best_params.items()]
        data = check_pipeline(self.pipeline, [*self.overrides, *best], plugins_dirs=self.plugins_dirs)
        data["pipeline"]["output_dir"] = str(self.output_dir / "best")  # not over the original run's folder
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# Best parameters of study {study.study_name!r}: trial {study.best_trial.number}, "
                  f"{self.metric} {study.best_value:.4f}\n")
        for key, value in study.best_params.items():
            header += f"#   {key} = {_toml_value(value)}\n"
        path.write_text(header + tomli_w.dumps(_without_none(data)))
        return path


def _lookup(data: dict, key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _example(distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[0]
    return distribution.low


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
