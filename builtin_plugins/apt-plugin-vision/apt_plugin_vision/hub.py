"""A hub id without a network fails at once, not after minutes of retries.

transformers asks the hub for every file with five retries and a growing pause between them: offline that
was 23-31 s before the error, and behind a proxy that accepts connections and never answers it was ten
minutes. Here a hub id is first looked up in the Hugging Face cache (no network at all); if it is not
there, offline mode (``HF_HUB_OFFLINE``) fails at once, and otherwise one request, within the hub's own
metadata timeout (``HF_HUB_ETAG_TIMEOUT``, 10 s by default), says whether the hub can be reached before
the download starts. The audio plugin has the same module: a plugin imports only what it declares.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from apt_sdk import UserError

T = TypeVar("T")


class HubUnavailable(UserError):
    """A hub id that is neither cached nor fetchable; ``reason`` says why, ``name`` is the id."""

    def __init__(self, name: str, reason: str, advice: str):
        self.name, self.reason = name, reason
        super().__init__(f"cannot load {name!r}: there is no folder by that name here ({Path(name).resolve()}), and "
                         f"as a hub id {reason}. {advice}")


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
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

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
    return None
