"""The endpoints: each checks its request (``prepare``), hands the work to the engine (``answers``) and shapes
the answer (``schemas``). ``/v1/...`` asks for the API key when the server has one."""

from __future__ import annotations

import functools
import secrets
import time
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from . import media, prepare
from .answers import Chunks, EventStream, Submission, stream
from .errors import APIError, size
from .request import Event, Sampling
from .schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    Transcription,
    usage,
)

open_router = APIRouter()


def _state(request: Request):
    return request.app.state.serve


async def check_key(request: Request) -> None:  # async: a plain def would hop to a worker thread per request
    key = _state(request).settings.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not token:
        raise APIError(401, "no API key: send 'Authorization: Bearer <key>' (this server was started with --api-key)",
                       code="invalid_api_key")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "incorrect API key", code="invalid_api_key")


router = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])


@open_router.get("/health")
async def health(request: Request) -> Response:
    state = _state(request)
    served, alive = state.engine.served, state.engine.alive
    return JSONResponse({
        "status": "ok" if alive else "the engine has stopped", "model": state.settings.model_name,
        "kind": served.kind, "context": served.context, "fingerprint": served.fingerprint,
        "takes_image": served.takes_image, "takes_audio": served.takes_audio, "running": state.engine.running,
        "waiting": state.engine.waiting, "api_key": state.settings.api_key is not None}, 200 if alive else 503)


@open_router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = _state(request)
    state.metrics.observe_engine(state.engine)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


@open_router.get("/", response_class=HTMLResponse)
async def page() -> str:
    return _page()


@functools.cache
def _page() -> str:
    return (resources.files("apt_plugin_serve") / "static" / "chat.html").read_text(encoding="utf-8")


@router.get("/models")
async def models(request: Request) -> ModelList:
    state = _state(request)
    return ModelList(data=[ModelCard(id=state.settings.model_name, created=state.created)])


@router.get("/models/{name:path}")
async def model(name: str, request: Request) -> ModelCard:
    state = _state(request)
    prepare.check_model(name, state.settings.model_name)
    return ModelCard(id=name, created=state.created)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    state = _state(request)
    prepare.check_model(body.model, state.settings.model_name)
    prepare.refuse_unsupported(body)
    served = state.engine.served
    prompts = prepare.completion_prompts(body, served)
    submission = Submission(state.engine)
    for ids in prompts:
        prepare.check_length(ids, served, "prompt")
        for choice in range(body.n):
            submission.add(prompt=ids, max_tokens=prepare.max_new(body.max_tokens, ids, served),
                           sampling=prepare.sampling(body, choice), stop=tuple(body.stop), ignore_eos=body.ignore_eos)
    state.metrics.prompt_tokens.inc(sum(map(len, prompts)))
    submission.submit()
    name, prompt_tokens = state.settings.model_name, sum(map(len, prompts))
    echoed = [served.decode(ids) if body.echo else "" for ids in prompts]
    reply = dict(id=f"cmpl-{submission.id}", model=name, created=created())
    if body.stream:
        totals: dict[int, int] = {}
        chunks = Chunks("completion", reply)

        def chunk(index: int, event: Event | None) -> str | None:
            if event is None:  # the echoed prompt opens its choices
                text = echoed[index // body.n]
                return chunks(index, text, None, served.fingerprint) if text else None
            totals[index] = event.completion_tokens
            return chunks(index, event.text, event.finish_reason, event.fingerprint)

        return _sse(stream(submission, chunk, _usage_chunk(body, lambda: Completion(
            **reply, choices=[], usage=usage(prompt_tokens, sum(totals.values()))).model_dump())))
    results = await submission.collect(request)
    return Completion(**reply, system_fingerprint=results[-1].fingerprint, usage=usage(
        prompt_tokens, sum(r.completion_tokens for r in results)), choices=[
        CompletionChoice(index=i, text=echoed[i // body.n] + r.text, finish_reason=r.finish_reason)
        for i, r in enumerate(results)])


@router.post("/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    state = _state(request)
    prepare.check_model(body.model, state.settings.model_name)
    prepare.refuse_unsupported(body)
    served = state.engine.served
    messages, attached = await media.collect(body.messages, state.settings.max_media, state.settings.allow_image_urls)
    media.check_takes(attached, served.takes_image, served.takes_audio, body.model)
    prepared = await media.preprocess(served, attached)
    prompt = served.encode(state.settings.chat_template.render(messages))
    prepare.check_length(prompt, served, "messages")
    limit = prepare.max_new(body.max_completion_tokens or body.max_tokens, prompt, served)
    submission = Submission(state.engine)
    for choice in range(body.n):
        submission.add(prompt=prompt, max_tokens=limit, sampling=prepare.sampling(body, choice), stop=tuple(body.stop),
                       ignore_eos=body.ignore_eos, media=prepared)
    state.metrics.prompt_tokens.inc(len(prompt))
    submission.submit()
    reply = dict(id=f"chatcmpl-{submission.id}", model=state.settings.model_name, created=created())
    if body.stream:
        totals: dict[int, int] = {}
        chunks = Chunks("chat", reply)

        def chunk(index: int, event: Event | None) -> str:
            if event is None:
                return chunks(index, "", None, served.fingerprint, role="assistant")
            totals[index] = event.completion_tokens
            return chunks(index, event.text, event.finish_reason, event.fingerprint)

        return _sse(stream(submission, chunk, _usage_chunk(body, lambda: ChatCompletionChunk(
            **reply, choices=[], usage=usage(len(prompt), sum(totals.values()))).model_dump())))
    results = await submission.collect(request)
    return ChatCompletion(**reply, system_fingerprint=results[-1].fingerprint, usage=usage(
        len(prompt), sum(r.completion_tokens for r in results)), choices=[
        ChatChoice(index=i, message=AssistantMessage(content=r.text), finish_reason=r.finish_reason)
        for i, r in enumerate(results)])


@router.post("/audio/transcriptions")
async def transcriptions(request: Request, file: UploadFile = File(), model: str = Form(),
                         prompt: str | None = Form(None), response_format: str = Form("json"),
                         temperature: float = Form(0.0, ge=0), language: str | None = Form(None)):
    """Speech to text with a model that has an audio encoder: the clip, and ``prompt`` (or the server's
    transcription prompt) as the text the answer continues."""
    state = _state(request)
    prepare.check_model(model, state.settings.model_name)
    served = state.engine.served
    if response_format not in ("json", "text"):
        raise APIError(400, f"response_format {response_format!r} is not supported: use 'json' or 'text'",
                       "response_format")
    if not served.takes_audio:
        raise APIError(400, f"the model {model!r} has no audio encoder: it cannot transcribe", "file")
    audio = await file.read(state.settings.max_media + 1)
    if len(audio) > state.settings.max_media:
        raise APIError(400, f"'file' is over the limit of {size(state.settings.max_media)} (--max-media-mb)", "file")
    suffix = Path(file.filename or "clip.wav").suffix.lstrip(".") or "wav"
    prepared = await run_in_threadpool(served.prepare, None, audio, suffix)
    ids = served.encode(state.settings.transcription_prompt if prompt is None else prompt)
    prepare.check_length(ids, served, "prompt")
    submission = Submission(state.engine)
    submission.add(prompt=ids, max_tokens=prepare.max_new(None, ids, served), media=prepared,
                   sampling=Sampling(temperature=temperature))
    state.metrics.prompt_tokens.inc(len(ids))
    text = (await submission.submit().collect(request))[0].text
    return PlainTextResponse(text) if response_format == "text" else Transcription(text=text)


def created() -> int:
    return int(time.time())


def _usage_chunk(body, make):
    return make if body.stream_options is not None and body.stream_options.include_usage else (lambda: None)


def _sse(events) -> EventStream:
    return EventStream(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
