"""``apt-kernel serve PATH``: a run folder (its exported ``model/``) or a model folder, behind an
OpenAI-compatible API, a chat page and Prometheus metrics."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

from apt_sdk import UserError, check_known_keys
from apt_sdk.http import check_address

TOOL_KEYS = ("chat_template", "transcription_prompt")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar="APT_SERVE_API_KEY",
              help="Require 'Authorization: Bearer KEY' on /v1 (or set APT_SERVE_API_KEY).")
@click.option("--model-name", help="The name clients pass as 'model'.  [default: the run folder's name]")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="Requests decoded together at most; more wait for a slot.")
@click.option("--max-queue", default=256, show_default=True, type=click.IntRange(min=0),
              help="Requests that may wait for a slot; more are refused with 429 and Retry-After.")
@click.option("--watch", is_flag=True, help="Load a new export of the model as soon as it appears, and switch to "
                                            "it between two decode steps without dropping running requests.")
@click.option("--chat-template", help="A Jinja template turning 'messages' into the prompt, or @FILE holding one.  "
                                      "[default: the pipeline's [tool.serve] chat_template, else the messages' "
                                      "text joined]")
@click.option("--transcription-prompt", help="The text a transcription continues when the request gives no "
                                             "prompt.  [default: the pipeline's [tool.serve], else empty]")
@click.option("--allow-image-urls", is_flag=True, help="Fetch http(s) image URLs (refused by default: the server "
                                                       "fetches nothing).")
@click.option("--max-body-mb", default=32.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-media-mb", default=8.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest image or audio clip in a request.")
@click.option("--drain-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="On SIGTERM or Ctrl-C, seconds to let running requests finish.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for the model's computation.  [default: the "
                                                           "CPU cores less one for the HTTP side, at least 1]")
def serve(path, host, port, api_key, model_name, max_batch, max_queue, watch, chat_template, transcription_prompt,
          allow_image_urls, max_body_mb, max_media_mb, drain_timeout, threads):
    """Serve the model in PATH (a run folder or a saved model folder, text or multimodal) with the OpenAI API:
    /v1/models, /v1/completions, /v1/chat/completions, /v1/audio/transcriptions; / is a chat page,
    /health and /metrics (Prometheus) are for operators."""
    import torch

    from .app import Settings, create_app
    from .models import load
    from .process import EngineProcess

    # the engine decodes in a process of its own (EngineProcess) with the cores less one, and this one answers
    # HTTP: with every core in torch's thread pool, each small operation of a decode step waits for a thread
    # that the HTTP side holds (10x slower steps on 2 cores). One thread here, for tokenizing and media: the
    # engine's process is forked from this one, which must not have started torch's thread pool by then
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    torch.set_num_threads(1)
    served = load(path)
    tool = _tool_settings(path, served.folder)
    template = _template(chat_template, tool)
    check_address(host, port)
    settings = Settings(model_name or _default_name(path, served.folder), api_key, int(max_body_mb * 2**20),
                        int(max_media_mb * 2**20), allow_image_urls, template,
                        tool.get("transcription_prompt", "") if transcription_prompt is None else transcription_prompt)
    logging.basicConfig(format="%(message)s", level=logging.WARNING)  # before the fork: the engine's logs too
    engine = EngineProcess(served, max_batch=max_batch, max_queue=max_queue, threads=threads or max(1, cores - 1),
                           watch=served.folder if watch else None)
    app = create_app(engine, settings)
    click.echo(f"serving {settings.model_name!r}: {served.describe()}")
    click.echo(f"  http://{host}:{port}/v1 (OpenAI API; batches of up to {max_batch}, {engine.threads} "
               f"compute thread(s)), http://{host}:{port}/ "
               f"(chat page){'; API key required' if api_key else ''}{'; watching for new exports' if watch else ''}")
    engine.start()
    try:
        _run(app, host, port, drain_timeout)
    finally:
        engine.close(drain_timeout)


def _default_name(path: Path, folder: Path) -> str:
    """The run's name: the run folder's, also when PATH is its model/ folder."""
    if folder.name == "model" and folder.parent.name:
        return folder.parent.resolve().name
    return Path(path).resolve().name


def _tool_settings(path: Path, folder: Path) -> dict:
    """``[tool.serve]`` of the run's pipeline.json, where PATH is a run folder or its model/ folder."""
    record = (folder.parent if folder.name == "model" else Path(path)) / "pipeline.json"
    if not record.is_file():
        return {}
    try:
        tool = json.loads(record.read_text()).get("tool", {}).get("serve", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"{record} cannot be read ({exc})") from None
    if not isinstance(tool, dict):
        raise UserError(f"{record}: [tool.serve] must be a table")
    check_known_keys(tool, TOOL_KEYS, f"key of [tool.serve] in {record}:")
    for key, value in tool.items():
        if not isinstance(value, str):
            raise UserError(f"{record}: [tool.serve] {key} must be a string, got {type(value).__name__}")
    return tool


def _template(option: str | None, tool: dict):
    from .chat import ChatTemplate

    if option is None:
        return ChatTemplate(tool["chat_template"], "[tool.serve] chat_template") if "chat_template" in tool \
            else ChatTemplate()
    if option.startswith("@"):
        file = Path(option[1:])
        try:
            return ChatTemplate(file.read_text(encoding="utf-8"), f"--chat-template {option}")
        except OSError as exc:
            raise UserError(f"--chat-template {option}: cannot read {file} ({exc.strerror or exc})") from None
    return ChatTemplate(option, "--chat-template")


def _run(app, host: str, port: int, drain_timeout: float) -> None:
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """Says what a stop waits for (uvicorn stops accepting connections, the running requests finish), and
        exits 0 after it: uvicorn would raise the signal again once drained, ending the process by it."""

        def handle_exit(self, sig: int, frame) -> None:
            if self.should_exit:
                self.force_exit = self.force_exit or sig == signal.SIGINT  # a second Ctrl-C: stop now
                return
            self.should_exit = True
            engine = app.state.serve.engine
            with contextlib.suppress(OSError):  # its output gone (a closed pipe) must not keep it from stopping
                click.echo(f"stopping: no new connections; {engine.running} running and {engine.waiting} waiting "
                           f"request(s) finish first (up to {drain_timeout:g} s)", err=True)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                          timeout_graceful_shutdown=drain_timeout)).run()
