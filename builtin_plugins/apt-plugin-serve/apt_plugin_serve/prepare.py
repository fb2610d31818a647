"""Checks and conversions between a validated request body and the engine's requests: the model's name,
the options this server cannot honour, the prompt's tokens against the model's context, sampling."""

from __future__ import annotations

from .engine import Sampling
from .errors import APIError
from .models import Served
from .schemas import ChatRequest, CompletionRequest, Sampled


def check_model(name: str, served_name: str) -> None:
    if name != served_name:
        raise APIError(404, f"the model {name!r} does not exist: this server serves {served_name!r}", "model",
                       "model_not_found")


def refuse_unsupported(body: Sampled) -> None:
    """A value the server would otherwise ignore is refused, naming the field."""
    unsupported = {"presence_penalty": body.presence_penalty != 0, "frequency_penalty": body.frequency_penalty != 0,
                   "logit_bias": bool(body.logit_bias)}
    if isinstance(body, CompletionRequest):
        unsupported.update(logprobs=body.logprobs is not None, suffix=body.suffix is not None,
                           best_of=body.best_of not in (None, body.n))
    if isinstance(body, ChatRequest):
        unsupported.update(logprobs=body.logprobs, top_logprobs=body.top_logprobs is not None, tools=bool(body.tools),
                           response_format=(body.response_format or {"type": "text"}).get("type") != "text")
    for field, used in unsupported.items():
        if used:
            raise APIError(400, f"'{field}' is not supported by this server; leave it out", field)


def sampling(body: Sampled, choice: int) -> Sampling:
    """Choice ``choice`` of ``n`` draws from its own generator: ``seed + choice`` when a seed is given."""
    seed = None if body.seed is None else body.seed + choice
    return Sampling(body.temperature, body.top_p, max(body.top_k, 0), seed)


def completion_prompts(body: CompletionRequest, served: Served) -> list[list[int]]:
    """``prompt`` as OpenAI allows it: a string, strings, token ids, or lists of token ids."""
    prompt = body.prompt
    if isinstance(prompt, str):
        prompts = [served.encode(prompt)]
    elif prompt and all(isinstance(p, str) for p in prompt):
        prompts = [served.encode(p) for p in prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    else:
        prompts = [list(p) for p in prompt]
    if not prompts or not all(prompts):
        raise APIError(400, "'prompt' is empty: give at least one token", "prompt")
    vocabulary = served.tokenizer.vocab_size
    for ids in prompts:
        bad = [i for i in ids if not 0 <= i < vocabulary]
        if bad:
            raise APIError(400, f"'prompt' holds token id {bad[0]}, outside the model's vocabulary of "
                                f"{vocabulary}", "prompt")
    return prompts


def check_length(prompt: list[int], served: Served, param: str) -> None:
    """No silent truncation: a prompt that leaves no room for one new token is refused with both lengths."""
    if len(prompt) >= served.context:
        raise APIError(400, f"the prompt is {len(prompt)} tokens, and the model's context is {served.context} "
                            f"tokens, which must hold the prompt and at least one new token", param,
                       "context_length_exceeded")


def max_new(requested: int | None, prompt: list[int], served: Served) -> int:
    """``max_tokens``, clipped to what the context holds after the prompt (the answer then ends with
    ``finish_reason = "length"``)."""
    room = served.context - len(prompt)
    return room if requested is None else min(requested, room)
