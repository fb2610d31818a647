"""``apt-kernel export RUN``: a run's APT language model written as a Hugging Face model folder (``--format hf``,
the default: ``config.json`` with ``auto_map``, the modeling code, ``model.safetensors``, the tokenizer's
``tokenizer.json`` and ``tokenizer_config.json``, and ``tokenizer/`` for this project's readers), or as the
weights and APT's own ``config.json`` alone (``--format safetensors``).

The trainer's ``model/`` is already the first (since this command exists); the command writes it for runs
exported before, or elsewhere (``--out``). Without ``--out`` it rewrites the run's ``model/`` in place. Everything
is written to a temporary folder beside the destination first, and files the destination holds that no export
writes make it refuse: nothing a user put there is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from apt_sdk import RunReader, UserError

from .config import CONFIG_FILE, MODEL_TYPE, APTConfig
from .hub import code_modules
from .hub_tokenizer import HUB_CONFIG, SPECIAL_TOKENS_MAP, TOKENIZER_FILE, read_kind

FORMATS = ("hf", "safetensors")
TOKENIZER_DIR, WEIGHTS = "tokenizer", "model.safetensors"


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="The folder to write.  [default: RUN's model/, rewritten in place]")
@click.option("--format", "format_", type=click.Choice(FORMATS), default="hf", show_default=True,
              help="hf: a Hugging Face model folder (transformers loads it; the trainer's default); safetensors: "
                   "the weights and APT's config alone.")
def export(run: Path, out: Path | None, format_: str) -> None:
    """Write a run's APT language model as a Hugging Face model folder that transformers loads
    (AutoModelForCausalLM with trust_remote_code, AutoTokenizer), or as safetensors and APT's config alone."""
    written = export_model(run, out, format_)
    click.echo(f"wrote {written} ({format_})")
    if format_ == "hf":
        click.echo(f"  AutoModelForCausalLM.from_pretrained({str(written)!r}, trust_remote_code=True); "
                   f"AutoTokenizer.from_pretrained({str(written)!r})")


def export_model(run: str | Path, out: str | Path | None = None, format: str = "hf") -> Path:
    """Export the APT language model of ``run`` (a run folder, or a saved model folder) to ``out`` (default: the
    model's own folder) in ``format``; returns the folder. A ``UserError`` names what is wrong."""
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    source = model_folder(Path(run))
    model, tokenizer = _load(source, format)
    out = Path(out) if out is not None else source
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder (new, empty, or an earlier export)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export.", dir=out.parent))
    try:
        _write(model, tokenizer, staging, format)
        _replace(out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def model_folder(path: Path) -> Path:
    """The saved model of ``path``: the folder itself (``config.json``), or a run folder's ``model/``."""
    if not path.exists():
        raise UserError(f"{path}: no such run or model folder")
    if not path.is_dir():
        raise UserError(f"{path} is a file; export takes a run folder (its model/) or a saved model folder")
    if (path / CONFIG_FILE).is_file():
        return path
    run = RunReader(path)
    exported = run.exported_model()
    if exported is not None and (exported / CONFIG_FILE).is_file():
        return exported
    if run.pipeline() is None and not run.metadata_path.is_file():
        raise UserError(f"{path} is not a run folder (no pipeline.json or metadata.json) nor a model folder (no "
                        f"{CONFIG_FILE})")
    raise UserError(f"{path} holds no exported model ({path / 'model' / CONFIG_FILE} is missing): the trainer writes "
                    "model/ when a run ends (unless [trainer] export = false); finish the run with `apt-kernel run "
                    "<pipeline> --resume latest`")


def _load(folder: Path, format: str) -> tuple[Any, Any]:
    from .model import APTLargeModel
    from .tokenization import load_tokenizer

    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / CONFIG_FILE} cannot be read as JSON: {exc}") from None
    if isinstance(config, dict) and "multimodal" in config:
        raise UserError(f"{folder} is a multimodal-apt model: export writes APT language models (apt-lm) only")
    if isinstance(config, dict) and config.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise UserError(f"{folder} holds a {config['model_type']!r} model, not an APT language model: export writes "
                        "apt-lm models (a transformers model's folder loads in transformers as it is)")
    try:
        apt = APTConfig.from_dict(config)
    except (TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{folder / CONFIG_FILE} is not an APT language model's config ({exc})") from None
    if apt.num_encoder_layers and format == "hf":
        raise UserError(f"{folder} is an encoder-decoder APT model (num_encoder_layers = {apt.num_encoder_layers}); "
                        "transformers' causal LM is decoder-only: use --format safetensors")
    try:
        model = APTLargeModel.from_pretrained(folder)
    except (OSError, RuntimeError) as exc:  # a missing or partly written weights file
        raise UserError(f"{folder}: the weights cannot be loaded ({str(exc).splitlines()[0]})") from None
    saved = folder / TOKENIZER_DIR
    if not saved.is_dir():
        saved = folder if read_kind(folder) else None
    try:
        tokenizer = load_tokenizer(saved) if saved is not None else None
    except (OSError, ValueError) as exc:
        raise UserError(f"{saved}: the tokenizer cannot be loaded ({exc})") from None
    if tokenizer is None:
        click.echo(f"note: {folder} has no tokenizer/ folder; the export holds the model alone", err=True)
    return model, tokenizer


def _write(model: Any, tokenizer: Any, folder: Path, format: str) -> None:
    if format == "hf":
        model.save_pretrained(folder)
    else:
        from safetensors.torch import save_model

        model.config.save(folder)
        save_model(model, str(folder / WEIGHTS))
    if tokenizer is not None:
        tokenizer.save(folder / TOKENIZER_DIR)
        if format == "hf":
            tokenizer.save_pretrained(folder)


def _replace(out: Path, staging: Path) -> None:
    """``out`` becomes what ``staging`` holds; an earlier export's files that this one does not write go, and any
    other file there is refused before anything changes."""
    ours = {CONFIG_FILE, WEIGHTS, TOKENIZER_DIR, TOKENIZER_FILE, HUB_CONFIG, SPECIAL_TOKENS_MAP,
            *(f"{name}.py" for name in code_modules())}
    written = {entry.name for entry in staging.iterdir()}
    present = {entry.name for entry in out.iterdir()} if out.is_dir() else set()
    foreign = sorted(present - ours - written)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"--out {out} holds files an export does not write ({shown}): give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(present & ours - written):
        _remove(out / name)
    for name in sorted(written):
        if (out / name).is_dir():
            _remove(out / name)
        os.replace(staging / name, out / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
