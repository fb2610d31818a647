"""The ``apt-kernel`` command. Imports stay inside commands so ``--help`` starts fast and torch-free."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from functools import wraps

import click

from . import KERNEL_API_VERSION, __version__


def _user_errors(func: Callable) -> Callable:
    """Print kernel errors as one clear message: exit 2 for user errors, 1 for plugin failures."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        from .errors import KernelError, RunInterrupted, UserError

        try:
            return func(*args, **kwargs)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except RunInterrupted as exc:
            click.secho(str(exc), fg="yellow", err=True)
            sys.exit(exc.exit_code)
        except KernelError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)

    return wrapper


def _plugin_options(func: Callable) -> Callable:
    func = click.option("--plugins-dir", "plugins_dirs", multiple=True, type=click.Path(file_okay=False),
                        help="Also load one-file plugins from this folder (repeatable).")(func)
    func = click.option("--strict", is_flag=True, default=False,
                        help="A plugin that fails to load is fatal (also APT_STRICT_PLUGINS=1).")(func)
    return func


def _kernel(plugins_dirs, strict):
    from .kernel import Kernel

    return Kernel(plugins_dirs, strict=strict or None)


class _Commands(click.Group):
    """Builtin commands, plus commands that installed plugins declare in their manifests: looked up
    only when a name is not builtin, and imported only when invoked (so --help stays fast). A manifest
    names a top-level command ``errors``, or a subcommand of a builtin group as ``"plugins.search"``.
    A plugin's command may raise the SDK's ``UserError``: one red line, exit 2, as builtin commands do."""

    prefix = ""

    def get_command(self, ctx: click.Context, name: str):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        from importlib import import_module

        from .discovery import INSTALLED, discover

        for info in discover():
            target = info.manifest.commands.get(self.prefix + name) if info.manifest else None
            if target and info.status == INSTALLED:
                module, _, attr = target.partition(":")
                return getattr(import_module(module), attr)
        return None

    def invoke(self, ctx: click.Context):
        return _user_errors(super().invoke)(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_commands(ctx, formatter)
        from .plugin_commands import declared  # read from manifests: no plugin is imported for --help

        rows = declared(self.prefix, formatter.width)
        if rows:
            with formatter.section("Commands from plugins"):
                formatter.write_dl(rows)


class _PluginsCommands(_Commands):
    prefix = "plugins."


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Plugins add commands: those installed are listed above (`apt-kernel plugins list` says which "
                    "plugin adds each).")
@click.version_option(__version__, message=f"apt-kernel %(version)s (kernel API {KERNEL_API_VERSION})")
def main() -> None:
    """APT Kernel: train transformer models from pipeline.toml, built from plugins."""


def _plan(pipeline, overrides, plugins_dirs, strict):
    from .pipeline import load_pipeline
    from .planning import plan_pipeline

    config, data, source = load_pipeline(pipeline, list(overrides))
    kernel = _kernel(plugins_dirs, strict)
    return kernel, plan_pipeline(kernel, config, data, source)


@main.command()
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
@_plugin_options
@_user_errors
def run(pipeline, overrides, resume, overwrite, no_progress, profile, nproc_per_node, nnodes, rdzv_endpoint, rdzv_id,
        sandbox_all, plugins_dirs, strict):
    """Validate PIPELINE, then train it (on N processes with --nproc-per-node)."""
    from .runner import execute

    overrides = list(overrides)
    resume_command = _resume_command(pipeline, overrides, plugins_dirs, strict, sandbox_all, nproc_per_node)
    kernel, plan = _plan(pipeline, overrides, plugins_dirs, strict)
    unboxed = [i for i in range(len(plan.config.callbacks)) if f"callbacks[{i}]" not in plan.sandboxed]
    if sandbox_all and unboxed:
        # callbacks write their output into the run folder (event files, error logs, CSVs): those this flag
        # sandboxes may write there, and nowhere else; a table the pipeline sandboxes keeps its own limits
        overrides += [f"callbacks.{i}.{key}" for i in unboxed for key in ("sandbox=true",
                                                                        'limits.allow_paths=["${run_dir}"]')]
        kernel, plan = _plan(pipeline, overrides, plugins_dirs, strict)
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


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a pipeline value.")
@_plugin_options
@_user_errors
def validate(pipeline, overrides, plugins_dirs, strict):
    """Check PIPELINE's schema, options and plugin versions without running (imports no plugin)."""
    _, plan = _plan(pipeline, overrides, plugins_dirs, strict)
    click.echo(f"{pipeline}: valid")
    for table, kind, spec in plan.config.components():
        info = plan.providers[table]
        click.echo(f"  [{table}] {kind} {spec.use!r} from {info.name} {info.version}")


@main.group(cls=_PluginsCommands, epilog="Plugins add subcommands here: those installed are listed above.")
def plugins() -> None:
    """Installed plugins: list, info, doctor."""


_STATUS_COLOURS = {"installed": "green", "disabled": "yellow", "incompatible": "yellow",
                   "failed": "red", "crashed": "red"}


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_plugin_options
@_user_errors
def plugins_list(as_json, plugins_dirs, strict):
    """Every plugin with version, status and what it provides (reads manifests only)."""
    from .discovery import discover, stale_editable

    infos = discover(plugins_dirs)
    if as_json:
        import json

        click.echo(json.dumps([{**i.to_dict(), "stale": stale_editable(i)} for i in infos], indent=2))
        return
    if not infos:
        click.echo("no plugins installed")
        return
    for info in infos:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in info.provides().items()) or "-"
        if info.manifest and info.manifest.commands:
            provides += f"; commands: {', '.join(sorted(info.manifest.commands))}"
        status = click.style(info.status, fg=_STATUS_COLOURS.get(info.status))
        click.echo(f"{info.name:<28} {info.version:<10} {status:<12} {provides}")
        for note in (info.reason, stale_editable(info)):
            if note:
                click.echo(f"{'':<28} {note}")


@plugins.command("info")
@click.argument("name")
@_plugin_options
@_user_errors
def plugins_info(name, plugins_dirs, strict):
    """Everything the manifest of plugin NAME says, and its options."""
    from .discovery import discover
    from .errors import UserError, closest

    infos = {i.name: i for i in discover(plugins_dirs)}
    if name not in infos:
        hint = closest(name, list(infos))
        raise UserError(f"no plugin named {name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    info = infos[name]
    data = info.to_dict()
    for key in ("name", "version", "distribution", "module", "path", "status", "reason", "kernel_api",
                "requires", "capabilities"):
        if data.get(key) not in (None, {}, []):
            click.echo(f"{key:<13} {data[key]}")
    for kind, components in (info.manifest.provides.items() if info.manifest else []):
        for cname, decl in components.items():
            click.echo(f"\n{kind} {cname!r}: {decl.summary}")
            for opt, spec in decl.options.items():
                default = "required" if spec.required else f"default {spec.default!r}"
                click.echo(f"    {opt:<22} {spec.type:<6} {default:<24} {spec.help}")


@plugins.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--sandbox", is_flag=True, help="Show which sandbox layers this machine can apply (docs/sandbox.md).")
@_plugin_options
@_user_errors
def plugins_doctor(as_json, sandbox, plugins_dirs, strict):
    """Import every plugin in a child process and report failures and crashes."""
    from .discovery import StatusStore, discover, kernel_home
    from .doctor import run_doctor

    if sandbox:
        _sandbox_doctor(as_json)
        return

    report = run_doctor(discover(plugins_dirs), list(plugins_dirs), StatusStore(kernel_home() / "plugin-status.json"))
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        for row in report:
            status = click.style(row["status"], fg=_STATUS_COLOURS.get(row["status"]))
            click.echo(f"{row['name']:<28} {row['version']:<10} {status}")
            if row.get("reason"):
                click.echo(f"    {row['reason']}")
    if any(r["status"] in ("failed", "crashed") for r in report):
        sys.exit(1)


def _sandbox_doctor(as_json: bool) -> None:
    from .sandbox.probe import probe_layers

    layers = probe_layers()
    if as_json:
        import json

        click.echo(json.dumps(layers, indent=2))
        return
    width = max(len(layer["name"]) for layer in layers)
    click.echo(f"{'layer':<{width}}  {'status':<11}  detail")
    for layer in layers:
        status = click.style(f"{'active' if layer['active'] else 'UNAVAILABLE':<11}",
                             fg="green" if layer["active"] else "red")
        click.echo(f"{layer['name']:<{width}}  {status}  {layer['detail']}")


@main.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", default=".", type=click.Path(file_okay=False), show_default=True,
              help="Where to create the plugin folder.")
@_user_errors
def new_plugin(name, directory):
    """Create an installable plugin package NAME (a callback, with tests) from the SDK template."""
    from .scaffold import create_plugin

    path = create_plugin(name, directory)
    click.echo(f"created {path}\n  pip install -e {path}\n  pytest {path}/tests")


if __name__ == "__main__":
    main()
