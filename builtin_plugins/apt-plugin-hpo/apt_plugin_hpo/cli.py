"""`apt-kernel hpo PIPELINE --trials N [--storage URL] [--workers K]`, declared in this plugin's manifest.

The pipeline's ``[tool.hpo]`` table holds the search (``space``, and ``trial_overrides``: the budget
every trial runs with, e.g. fewer steps than the full run); ``--space FILE`` replaces the space.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click

from apt_sdk import UserError, check_pipeline

# what [tool.hpo] may hold: a misspelt key (trial_override) would otherwise be ignored, and every trial run
# without the budget or pruning it was meant to set
TOOL_KEYS = ("trials", "seed", "metric", "direction", "trial_overrides", "prune_after_step", "prune_above",
             "prune_startup_trials", "space")


def _check_tool(tool: dict) -> None:
    for key in tool:
        if key not in TOOL_KEYS:
            hint = difflib.get_close_matches(key, TOOL_KEYS, n=1, cutoff=0.5)
            raise UserError(f"[tool.hpo] {key}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                            + f"; keys: {', '.join(TOOL_KEYS)}")
    if tool.get("direction", "minimize") not in ("minimize", "maximize"):
        raise UserError(f"[tool.hpo] direction: 'minimize' or 'maximize' (got {tool['direction']!r})")


def _read_space(space_file: str | None, tool: dict) -> dict:
    if space_file is None:
        if "space" not in tool:
            raise UserError("no search space: add a [tool.hpo.space] table to the pipeline or pass --space FILE")
        return tool["space"]
    try:
        data = tomllib.loads(Path(space_file).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"--space {space_file}: {exc}") from exc
    return data.get("space", data)


def _trial_overrides(tool: dict) -> list[str]:
    from .searcher import _toml_value

    table = tool.get("trial_overrides", {})
    if not isinstance(table, dict):
        raise UserError('[tool.hpo] trial_overrides must be a table, e.g. { "trainer.max_steps" = 150 }')
    return [f"{key}={_toml_value(value)}" for key, value in table.items()]


@contextlib.contextmanager
def _distributed() -> Iterator[None]:
    """Under torchrun: one process group for the whole search (the trainer reuses it), destroyed at the
    end: a gloo group left to the interpreter's exit can abort a rank ("terminate called without an
    active exception") after the study has finished."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # imported before the group exists: their functions' `group=dist.group.WORLD` defaults would pin it, and
    # the group's threads would outlive destroy_process_group (the trainer's distributed.py says more)
    import torch.distributed.fsdp.sharded_grad_scaler  # noqa: F401
    import torch.distributed.nn.functional  # noqa: F401
    import torch.distributed.optim.zero_redundancy_optimizer  # noqa: F401

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
        dist.barrier()  # every rank done with every collective: the group goes down on all ranks together
    finally:
        dist.destroy_process_group()


def _pruner(tool: dict):
    """The median pruner; with ``prune_above = X`` instead a threshold: any report above X is pruned."""
    from optuna.pruners import MedianPruner, ThresholdPruner

    after = int(tool.get("prune_after_step", 0))
    if "prune_above" in tool:
        return ThresholdPruner(upper=float(tool["prune_above"]), n_warmup_steps=after)
    return MedianPruner(n_startup_trials=int(tool.get("prune_startup_trials", 2)), n_warmup_steps=after)


def _shares(total: int, workers: int) -> list[int]:
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--trials", type=click.IntRange(min=1), help="Trials to run (default: [tool.hpo] trials, else 20).")
@click.option("--storage", help="Optuna storage: default SQLite in the run folder; journal:PATH or an RDB URL "
                                "for parallel workers.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes sharing the study (journal storage by default).")
@click.option("--space", "space_file", type=click.Path(dir_okay=False, exists=True),
              help="A TOML search space (instead of [tool.hpo.space]).")
@click.option("--study-name", help="Default: <pipeline name>-hpo; an existing study is continued.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a pipeline value (all trials).")
@click.option("--plugins-dir", "plugins_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Also load one-file plugins from this folder.")
@click.option("--worker", "is_worker", is_flag=True, hidden=True)
def hpo(pipeline, trials, storage, workers, space_file, study_name, overrides, plugins_dirs, is_worker):
    """Search hyperparameters of PIPELINE with Optuna; write the best as a ready-to-run pipeline."""
    try:
        _hpo(pipeline, trials, storage, workers, space_file, study_name, list(overrides), plugins_dirs, is_worker)
    except UserError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


def _hpo(pipeline, trials, storage, workers, space_file, study_name, overrides, plugins_dirs, is_worker) -> None:
    tool = check_pipeline(pipeline, overrides, plugins_dirs=plugins_dirs).get("tool", {}).get("hpo", {})
    _check_tool(tool)
    trials = trials or int(tool.get("trials", 20))
    if workers > 1 and storage is not None and storage.startswith("sqlite"):
        raise UserError("SQLite cannot take parallel workers (Optuna's FAQ): use --storage journal:PATH or a "
                        "database server URL, or leave --storage out")
    with _distributed():
        _search(pipeline, tool, trials, storage, workers, space_file, study_name, overrides, plugins_dirs, is_worker)


def _search(pipeline, tool, trials, storage, workers, space_file, study_name, overrides, plugins_dirs,
            is_worker) -> None:
    from optuna.samplers import TPESampler

    from .searcher import HyperparameterSearcher

    rank = int(os.environ.get("RANK", 0))
    prefix = f"[worker {os.getpid()}] " if is_worker else (f"[rank {rank}] " if rank else "")
    searcher = HyperparameterSearcher(
        _read_space(space_file, tool), trials, storage, pipeline=pipeline, study_name=study_name,
        overrides=overrides, trial_overrides=_trial_overrides(tool), metric=tool.get("metric", "val_loss"),
        direction=tool.get("direction", "minimize"), plugins_dirs=plugins_dirs,
        sampler=TPESampler(seed=tool["seed"]) if "seed" in tool and not is_worker else None,
        pruner=_pruner(tool),
        log=lambda message: click.echo(prefix + message))
    if workers > 1 and storage is None:
        storage = searcher.storage = "journal:" + str(searcher.output_dir / "study.journal")
    if rank == 0 and not is_worker:
        click.echo(f"study {searcher.study_name!r}: {trials} trials, {workers} worker(s), "
                   f"space {', '.join(searcher.space)}; trial runs in {searcher.output_dir}")
    shares = _shares(trials, workers)
    children = [_spawn(pipeline, share, storage, searcher.study_name, overrides, plugins_dirs, space_file)
                for share in shares[1:]]
    study = searcher.optimize(shares[0], enqueue_defaults=not is_worker)
    failed = [child.args for child in children if child.wait() != 0]
    if failed:
        raise click.ClickException(f"{len(failed)} worker(s) failed")
    if study is None or is_worker:
        return
    _summary(searcher, study)


def _spawn(pipeline, trials, storage, study_name, overrides, plugins_dirs, space_file) -> subprocess.Popen:
    args = [sys.executable, "-m", "apt_kernel.cli", "hpo", pipeline, "--worker", "--trials", str(trials),
            "--storage", storage, "--study-name", study_name]
    for item in overrides:
        args += ["--set", item]
    for folder in plugins_dirs:
        args += ["--plugins-dir", folder]
    if space_file:
        args += ["--space", space_file]
    return subprocess.Popen(args)


def _summary(searcher, study) -> None:
    import optuna

    states = [t.state for t in study.trials]
    counts = {state.name.lower(): states.count(state) for state in set(states)}
    click.echo(f"study {study.study_name!r}: {len(states)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise click.ClickException("no trial completed: nothing to report")
    baseline = next((t for t in complete if t.params == searcher.defaults), None)
    if baseline is not None:
        click.echo(f"defaults (trial {baseline.number}): {searcher.metric} {baseline.value:.4f}")
    best = study.best_trial
    click.echo(f"best (trial {best.number}): {searcher.metric} {best.value:.4f}")
    for key, value in best.params.items():
        click.echo(f"  {key} = {value!r}")
    plots = searcher.visualize_results(study, searcher.output_dir)
    path = searcher.write_best_pipeline(study, searcher.output_dir / "best_pipeline.toml")
    click.echo(f"plots: {', '.join(str(p) for p in plots)}")
    click.echo(f"best pipeline: {path}\nrun it with: apt-kernel run {path}")
