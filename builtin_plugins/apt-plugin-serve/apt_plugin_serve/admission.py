"""Reading new requests for the running batch: their prompts, and their images and clips, in one padded
forward (``prepare``), which gives the rows that join the batch (``KVBatch.extend``) and the logits of their
first tokens. Nothing here emits an event: what fails is named in ``Admission.failed``, and the engine tells
those requests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from apt_plugin_lm.generation import KVBatch

from .models import Served
from .request import Request
from .text import TextStream

log = logging.getLogger("apt_plugin_serve")


@dataclass
class Admission:
    """Requests read by a model: ``requests`` are the rows of ``batch``, whose next-token logits are
    ``logits``; ``failed`` are those that cannot run, each with its error message."""

    requests: list[Request] = field(default_factory=list)
    batch: KVBatch | None = None
    logits: torch.Tensor | None = None
    failed: list[tuple[Request, str]] = field(default_factory=list)


def prepare(served: Served, requests: list[Request]) -> Admission:
    """Read ``requests`` (new ones, or running ones that go on with another model) with ``served``."""
    admission, ready = Admission(), []
    for request in requests:
        context_left = served.context - len(request.prompt)
        if context_left < 1:
            admission.failed.append((request, f"the prompt is {len(request.prompt)} tokens; the model's context is "
                                              f"{served.context}"))
            continue
        request.max_tokens = min(request.max_tokens, context_left)
        if request.generator is None:
            request.generator = torch.Generator(device=served.decoder.tok.weight.device)
            if request.sampling.seed is None:
                request.generator.seed()
            else:
                request.generator.manual_seed(request.sampling.seed)
            request.text = TextStream(served.decode, request.stop)
        ready.append(request)
    ready, memories = _memories(served, ready, admission.failed)
    if not ready:
        return admission
    try:  # KVBatch.prefill runs without autograd itself
        memory, mask = _stack(memories)
        admission.batch, admission.logits = KVBatch.prefill(served.decoder, [r.prompt + r.tokens for r in ready],
                                                            memory, mask)
    except Exception as exc:
        log.exception("reading the prompts failed")
        admission.failed.extend((r, f"generation failed: {type(exc).__name__}: {exc}") for r in ready)
        return admission
    admission.requests = ready
    return admission


def _memories(served: Served, requests: list[Request], failed: list) -> tuple[list[Request], list[tuple]]:
    """The requests whose images and clips the encoders read, and what each cross-attends to: encoded
    together (one encoder call for the requests alike in what they bring), else one by one, so that an input
    the encoders refuse fails its own request only."""
    try:
        with torch.no_grad():  # the encoders would otherwise record a graph (outside the engine's inference mode)
            return requests, served.memories([r.media for r in requests])
    except Exception as exc:  # an input the encoders refuse: find whose, if there are several
        if len(requests) == 1:
            failed.append((requests[0], f"the model could not read the request's media: {exc}"))
            return [], []
    ready, memories = [], []
    for request in requests:
        alone, memory = _memories(served, [request], failed)
        ready.extend(alone)
        memories.extend(memory)
    return ready, memories


def _stack(memories: list[tuple]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Each request's memory ``[1, M_i, d]`` and mask, right-padded to the longest into one batch."""
    if memories[0][0] is None:
        return None, None
    span = max(m.shape[1] for m, _ in memories)
    tensors = [torch.nn.functional.pad(m, (0, 0, 0, span - m.shape[1])) for m, _ in memories]
    masks = [torch.nn.functional.pad(k, (0, span - k.shape[1]), value=False) for _, k in memories]
    return torch.cat(tensors), torch.cat(masks)
