"""`apt-kernel multimodal prepare fsdd|digits|sort-of-clevr`, declared in this plugin's manifest."""

from __future__ import annotations

from pathlib import Path

import click

from apt_sdk import UserError


class BadInput(click.ClickException):
    """The user's input is wrong: one line, exit 2, as the kernel's own commands do."""

    exit_code = 2


@click.group()
def multimodal() -> None:
    """Multimodal APT: data for its tasks."""


@multimodal.command()
@click.argument("task", type=click.Choice(["fsdd", "digits", "sort-of-clevr"]))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the manifests (and images).")
@click.option("--source", type=click.Path(exists=True, file_okay=False),
              help="fsdd: the folder of the recordings ({digit}_{speaker}_{index}.wav).")
@click.option("--train-images", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="sort-of-clevr: training images (36 questions each: 6 colours x 6).")
@click.option("--test-images", type=click.IntRange(min=1), default=500, show_default=True,
              help="sort-of-clevr: test images, from the next generator seed.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="sort-of-clevr: the training images' seed.")
@click.option("--overwrite", is_flag=True, help="Write into an --out that holds files this command did not write.")
def prepare(task: str, out: str, source: str | None, train_images: int, test_images: int, seed: int,
            overwrite: bool) -> None:
    """Write TASK's standard train/test split as JSONL manifests in OUT."""
    from . import prepare as tasks

    folder = Path(out)
    try:
        if task == "fsdd" and source is None:
            raise UserError("fsdd needs --source, the folder of the FSDD recordings (e.g. "
                            "free-spoken-digit-dataset/recordings)")
        if task == "fsdd":
            tasks.recordings(Path(source))  # before anything is written
        tasks.claim(folder, task, overwrite)
        if task == "fsdd":
            counts = tasks.fsdd(Path(source), folder)
        elif task == "digits":
            counts = tasks.digits(folder)
        else:
            counts = tasks.sort_of_clevr_sets(folder, train_images, test_images, seed)
    except UserError as exc:
        raise BadInput(str(exc)) from None
    except OSError as exc:  # --out under a file, a read-only folder, a full disk: say where, no traceback
        raise BadInput(f"--out {folder}: cannot write {exc.filename or folder}: {exc.strerror or exc}") from None
    for name, count in counts.items():
        click.echo(f"{folder / (name + '.jsonl')}: {count} records")
