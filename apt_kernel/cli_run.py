"""``apt-kernel run``: validate a pipeline, then train it here or on N processes through torchrun."""

from __future__ import annotations

import json
import os
import shlex
import sys

import click

from .cli_group import plan_file, plugin_options, user_errors


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a pipeline value, e.g. --set trainer.epochs=3 (repeatable).")
@click.option("--resume", metavar="latest|PATH", help="Continue from a checkpoint: latest, a file or a glob.")
@click.option("--overwrite", is_flag=True,
              help="The output folder holds a run: move it aside (to <dir>.replaced-<time>) and start over.")
@click.option("--no-progress", is_flag=True, help="Print log lines instead of a progress bar.")
@click.option("--profile", is_flag=True, help="Time each plugin's hooks, callbacks and components; save profile.json.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), help="Train with N processes (DDP) via torchrun.")
@click.option("--nnodes", help="Nodes for torchrun (e.g. 2); with --rdzv-endpoint.")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", help="c10d rendezvous address shared by all nodes.")
@click.option("--rdzv-id", default="apt-kernel", show_default=True, help="Rendezvous id shared by all nodes.")
@click.option("--sandbox-all", is_flag=True, help="Run every callback in a sandbox worker (docs/sandbox.md).")
@plugin_options
@user_errors
def run(pipeline, overrides, resume, overwrite, no_progress, profile, nproc_per_node, nnodes, rdzv_endpoint, rdzv_id,
        sandbox_all, plugins_dirs, strict):
    """Validate PIPELINE, then train it (on N processes with --nproc-per-node)."""
    from .runner import execute

    overrides = list(overrides)
    resume_command = _resume_command(pipeline, overrides, plugins_dirs, strict, sandbox_all, nproc_per_node)
    kernel, plan = plan_file(pipeline, overrides, plugins_dirs, strict)
    unboxed = [i for i in range(len(plan.config.callbacks)) if f"callbacks[{i}]" not in plan.sandboxed]
    if sandbox_all and unboxed:
        # callbacks write their output into the run folder (event files, error logs, CSVs): those this flag
        # sandboxes may write there, and nowhere else; a table the pipeline sandboxes keeps its own limits
        overrides += [f"callbacks.{i}.{key}" for i in unboxed for key in ("sandbox=true",
                                                                        'limits.allow_paths=["${run_dir}"]')]
        kernel, plan = plan_file(pipeline, overrides, plugins_dirs, strict)
    if nproc_per_node and "RANK" not in os.environ:  # the launcher: validated, now torchrun takes over
        from .rundir import BEFORE_ENV, RunFolder, run_contents

        folder = RunFolder(plan.config.output_dir)
        folder.check(bool(resume), overwrite)  # refused here, the user sees exit 2 rather than torchrun's
        if overwrite:
            folder.claim(overwrite=True).release()
            if folder.moved_to is not None:
                click.echo(f"--overwrite: the previous run in {folder.path} was moved to {folder.moved_to}")
        # what the folder held before any worker started: a worker's component that opens a file in the run
        # folder (an error log) while rank 0 has not yet looked must not make the folder look like another run's
        os.environ[BEFORE_ENV] = json.dumps(sorted(run_contents(folder.path)))
        _exec_torchrun(pipeline, overrides, nproc_per_node, nnodes, rdzv_endpoint, rdzv_id, plugins_dirs, strict,
                       profile, resume)
    progress = not no_progress and sys.stderr.isatty()
    profiler = None
    if profile:
        from .profiler import PluginProfiler

        profiler = PluginProfiler()
    result, context = execute(kernel, plan, progress=progress, profiler=profiler, resume=resume, overwrite=overwrite,
                              resume_command=resume_command)
    if int(os.environ.get("RANK", 0)) == 0:
        _summary(plan, result, context.resume_command)
        if profiler is not None:
            click.echo(f"\nProfile (also in {result['profile']}):\n{profiler.table()}")


def _resume_command(pipeline, overrides, plugins_dirs, strict, sandbox_all, nproc) -> str:
    """The command that continues this run: its pipeline with the same overrides (one of them may name the
    output folder) and plugin folders, on as many processes."""
    words = ["apt-kernel", "run", str(pipeline), *(a for item in overrides for a in ("--set", item))]
    words += [a for d in plugins_dirs for a in ("--plugins-dir", d)] + (["--strict"] if strict else [])
    words += ["--sandbox-all"] if sandbox_all else []
    processes = nproc or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # a torchrun worker: as launched
    words += ["--nproc-per-node", str(processes)] if processes > 1 else []
    return shlex.join([*words, "--resume", "latest"])


def _exec_torchrun(pipeline, overrides, nproc, nnodes, endpoint, rdzv_id, plugins_dirs, strict, profile,
                   resume) -> None:
    """Replace this process with torchrun running `apt-kernel run` in every worker (signals reach it)."""
    from .errors import UserError

    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes:
        if not endpoint:
            raise UserError("--nnodes needs --rdzv-endpoint HOST:PORT (the same on every node)")
        launcher += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id}"]
    else:
        launcher.append("--standalone")
    worker = ["-m", "apt_kernel.cli", "run", str(pipeline), "--no-progress"]
    worker += [arg for item in overrides for arg in ("--set", item)]
    worker += [arg for d in plugins_dirs for arg in ("--plugins-dir", d)] + (["--strict"] if strict else [])
    worker += ["--profile"] if profile else []
    worker += ["--resume", resume] if resume else []
    sys.stdout.flush()
    os.execv(sys.executable, launcher + worker)


def _summary(plan, result: dict, resume_command: str) -> None:
    """The trainer says what its result means (``summary``: label, text pairs); the kernel prints it."""
    click.echo("")
    click.secho(f"Finished {plan.config.pipeline.name!r}", bold=True)
    for label, value in result.get("summary") or []:
        click.echo(f"  {label:<16} {value}")
    click.echo(f"  {'run dir':<16} {plan.config.output_dir}")
    click.echo(f"  {'resume with':<16} {resume_command}")
