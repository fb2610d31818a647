"""Loading a pretrained model for an encoder: from a folder ``save_pretrained`` wrote, a Hugging Face hub id, or
a preset config, with every failure a ``UserError`` that says what to do instead. What ``apt-plugin-vision``
and ``apt-plugin-audio`` share, for any encoder that wraps a ``transformers`` model.

A hub id without a network fails at once, not after minutes of retries. transformers asks the hub for every
file with five retries and a growing pause between them: offline that was 23-31 s before the error, and behind
a proxy that accepts connections and never answers it was ten minutes. Here a hub id is first looked up in the
Hugging Face cache (no network at all); if it is not there, offline mode (``HF_HUB_OFFLINE``) fails at once, and
otherwise one request, within the hub's own metadata timeout (``HF_HUB_ETAG_TIMEOUT``, 10 s by default), says
whether the hub can be reached before the download starts.

``huggingface_hub`` and ``transformers`` are imported only when used: an encoder that calls these declares them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from apt_kernel.errors import OptionError, UserError

from .options import check_known_keys

T = TypeVar("T")
NEW_ENCODER = "size='tiny'|'small'|'base' or config=..."  # how the builtin encoders are built from a config


class HubUnavailable(UserError):
    """A hub id that is neither cached nor fetchable; ``reason`` says why, ``name`` is the id."""

    def __init__(self, name: str, reason: str, advice: str):
        self.name, self.reason = name, reason
        super().__init__(f"cannot load {name!r}: there is no folder by that name here ({Path(name).resolve()}), and "
                         f"as a hub id {reason}. {advice}")


def load_pretrained(name: str, read: Callable[[str, bool], T], family: str, new: str = NEW_ENCODER) -> T:
    """``read(source, local_files_only)`` for ``name``, a folder or a hub id.

    :param family: what the weights are, for messages (``"CLIP"``).
    :param new: how the caller builds a new encoder instead, for the advice of a hub id that cannot be loaded.
    :raises UserError: ``name`` is a file, a folder ``read`` fails on (its ``OSError``/``ValueError`` said), or a hub
        id that is neither cached nor reachable (``HubUnavailable``).
    """
    local = Path(name).expanduser()
    if local.exists() and not local.is_dir():
        raise UserError(f"model_name_or_path {name!r} is a file: pass the folder save_pretrained wrote")
    if local.is_dir():
        try:
            return read(str(local), True)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load {family} weights from folder {str(local)!r}: {exc}") from None
    return from_hub(name, lambda local_only: read(name, local_only),
                    f"Download it where there is a network (hf download {name} --local-dir DIR) and pass "
                    f"model_name_or_path=DIR, or build from a config: model_name_or_path=None with {new}")


def from_hub(name: str, load: Callable[[bool], T], advice: str) -> T:
    """``load(local_files_only)`` for a hub id: from the cache if it is there, else after one quick check that
    the hub answers. ``advice`` ends the error (what to pass instead)."""
    from huggingface_hub import constants

    try:
        return load(True)
    except OSError:
        pass  # not cached (or not all of it): fetch it, if the hub can be reached
    if constants.is_offline_mode():
        raise HubUnavailable(name, "it is not in the Hugging Face cache and HF_HUB_OFFLINE is set", advice)
    problem = _unreachable(name, constants.HF_HUB_ETAG_TIMEOUT)
    if problem:
        raise HubUnavailable(name, problem, advice)
    try:
        return load(False)
    except OSError as exc:
        raise HubUnavailable(name, f"it could not be fetched ({str(exc).splitlines()[0]})", advice) from None


def _unreachable(name: str, timeout: float) -> str | None:
    """Why the hub cannot give ``name`` now (one request, no retries), or None."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    # huggingface_hub 1.x builds its user agent with a list of agents it fetches from the hub once a day, a second
    # request (3 s more behind a silent proxy): telemetry off for this one request, which that skips
    telemetry, constants.HF_HUB_DISABLE_TELEMETRY = constants.HF_HUB_DISABLE_TELEMETRY, True
    try:
        HfApi().model_info(name, timeout=timeout)
    except GatedRepoError:
        return "it is gated: accept its licence on the hub and log in (hf auth login)"
    except RepositoryNotFoundError:
        return "the hub has no model of that name (or it is private)"
    except HfHubHTTPError as exc:
        return f"the hub answered {exc.response.status_code if exc.response is not None else 'an error'}"
    except Exception as exc:  # noqa: BLE001 - httpx's connect, proxy and timeout errors, HF's offline error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the Hugging Face hub could not be reached within {timeout:g} s ({reason})"
    finally:
        constants.HF_HUB_DISABLE_TELEMETRY = telemetry
    return None


@contextlib.contextmanager
def pipeline_errors(source: str | None, new_key: str) -> Iterator[None]:
    """An encoder factory's errors as pipeline errors: a hub id that cannot be loaded says what to run and what to
    set in the pipeline (the encoder's own advice is Python's), anything else is named by ``model_name_or_path``
    when ``source`` was given, else by ``new_key``, the option that shaped a new encoder."""
    try:
        yield
    except HubUnavailable as exc:
        folder = f"models/{exc.name.rstrip('/').rsplit('/', 1)[-1]}"
        raise OptionError("model_name_or_path", (
            f"cannot load {exc.name!r}: there is no folder by that name, and as a hub id {exc.reason}. Download it "
            f"where there is a network (hf download {exc.name} --local-dir {folder}), bring that folder here and set "
            f"model_name_or_path = \"{folder}\"; or leave model_name_or_path out to train a new encoder of size = "
            f"\"tiny\", \"small\" or \"base\"")) from None
    except OptionError:
        raise
    except UserError as exc:  # named with the pipeline's file and line
        raise OptionError("model_name_or_path" if source else new_key, str(exc)) from None


def check_source(model_type: str, model_types: tuple[str, ...], model_name_or_path: Any, config: Any) -> None:
    """The constructor's choice: a family the encoder provides, and saved weights or a new config, not both."""
    if model_type not in model_types:
        raise UserError(f"model_type {model_type!r} is not supported: this plugin provides {', '.join(model_types)}")
    if model_name_or_path is not None and config is not None:
        raise UserError("pass model_name_or_path (saved weights) or config (a new encoder), not both")


def preset_config(config_class: type, presets: dict[str, dict], size: str, fields: dict | None, family: str,
                  accepted: str, **fixed: Any) -> Any:
    """``config_class`` from the ``size`` preset with ``fields`` laid over it (and ``fixed`` over both).

    A misspelt field would be kept by transformers as an unused attribute and the preset's value used instead, so
    a typo fails here. A config saved by ``to_dict`` (it names its ``model_type``) is exempt: it may hold fields of
    another transformers version, and its values are already the model's."""
    if size not in presets:
        raise UserError(f"size {size!r} is not a preset: choose one of {', '.join(presets)}")
    if fields is not None and not isinstance(fields, dict):
        raise UserError(f"config must be {accepted} or a dict, got {type(fields).__name__}")
    if (fields or {}).get("model_type") != config_class.model_type:
        check_known_keys(fields or {}, config_class().to_dict(), f"{config_class.__name__} field")
    merged = {**presets[size], **(fields or {}), **fixed}
    try:
        return config_class(**merged)
    except Exception as exc:  # noqa: BLE001 - transformers validates through huggingface_hub's own error types
        raise UserError(f"invalid {family} config {merged}: {str(exc).strip().splitlines()[-1].strip()}") from None


def check_divides(family: str, config: Any, *pairs: tuple[str, str]) -> None:
    """Each ``(a, b)`` field pair of ``config``: ``a`` divides by ``b`` (a width by its heads, a size by its patch)."""
    for a, b in pairs:
        if getattr(config, a) % getattr(config, b):
            raise UserError(f"invalid {family} config: {a} {getattr(config, a)} must divide by {b} "
                            f"{getattr(config, b)}")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Without transformers' load report and progress bars (a whole CLIP's text tower, or a whole Whisper's
    decoder, is skipped on purpose; "Writing model shards" says nothing to a user)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
