"""What the engine is given and what it gives back: a ``Request`` (a prompt, its limits, its sampling and
stop strings, its image and clip) and the ``Event`` s of its answer; ``QueueFull`` and ``Closed`` when it
takes no more."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .models import Media
from .text import TextStream


class QueueFull(Exception):
    """More requests wait than ``max_queue`` allows; ``retry_after`` is a hint in seconds."""

    def __init__(self, waiting: int, retry_after: int = 1) -> None:
        super().__init__(f"the server is busy: {waiting} requests are waiting for a slot")
        self.retry_after = retry_after


class Closed(Exception):
    """The engine is shutting down and takes no new request."""


@dataclass
class Sampling:
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: all tokens
    seed: int | None = None


class Event(NamedTuple):
    """New text of one request; the last event has ``finish_reason`` ("stop", "length") or ``error``. A
    tuple: the engine makes one for every token of every request."""

    text: str
    completion_tokens: int
    fingerprint: str
    finish_reason: str | None = None
    error: str | None = None


@dataclass(eq=False)
class Request:
    """One answer to generate.

    :param prompt: its tokens; ``max_tokens`` new ones at most (fewer if the context ends first).
    :param on_event: called with each ``Event`` (new text; the last has ``finish_reason`` or ``error``): by
        the engine's loop, or for a request sent to an ``EngineProcess``, by the server's event loop.
    :param sampling: temperature (0: greedy), top-p, top-k and seed.
    :param stop: strings that end the answer (not sent); ``ignore_eos`` goes on past the end-of-text token.
    :param media: the image and clip, preprocessed (``Served.prepare``), for a multimodal model.
    """

    prompt: list[int]
    max_tokens: int
    on_event: Callable[[Event], None]
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    media: Media | None = None

    def __post_init__(self) -> None:
        self.tokens: list[int] = []
        self.cancelled = False
        self.arrived = time.monotonic()
        self.last_token: float | None = None
        self.generator: torch.Generator | None = None
        self.text: TextStream | None = None
        self.on_cancel: Callable[[], None] | None = None  # an EngineProcess's: tell the engine's process

    def cancel(self) -> None:
        """The client is gone: the engine frees the request's slot at its next step."""
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()
