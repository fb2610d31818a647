"""The engine in its own process (``EngineProcess``), driven from an event loop as the server drives it: a
command of many megabytes (an image's pixels, ``n`` times) while a batch decodes neither stalls the server
nor leaves the two processes waiting on each other."""

from __future__ import annotations

import asyncio

import torch

from apt_plugin_serve.models import Media, load
from apt_plugin_serve.process import EngineProcess
from apt_plugin_serve.request import Request, Sampling
from conftest import long_model


def test_commands_of_megabytes_while_a_batch_decodes(tmp_path):
    """Four long answers stream while two requests carrying 32 MB each are sent. The engine reads its pipe only
    between steps, so with nothing draining the pipe the server's write of them would wait for hundreds of
    steps, reading no messages of the engine meanwhile; the engine's own pipe of messages would fill, and
    the two processes would wait on each other for good. (A text model ignores the pixels.)"""
    served = load(long_model(tmp_path / "long"))
    engine = EngineProcess(served, max_batch=8)
    ended: dict[int, object] = {}
    tokens: dict[int, int] = {}

    def request(key: int, max_tokens: int, media: Media | None = None) -> Request:
        def on_event(event) -> None:
            tokens[key] = event.completion_tokens
            if event.finish_reason or event.error:
                ended[key] = event
        return Request(served.encode("abc"), max_tokens, on_event, Sampling(0), (), True, media)

    async def main() -> None:
        engine.attach()
        for key in range(4):
            engine.submit(request(key, 1500))
        while not tokens:
            await asyncio.sleep(0.01)
        for key in (4, 5):
            engine.submit(request(key, 3, Media(pixels=torch.zeros(8, 1024, 1024))))
        while len(ended) < 6:
            await asyncio.sleep(0.01)

    try:
        asyncio.run(asyncio.wait_for(main(), 300))
    finally:
        engine.close(10)
    assert all(e.error is None for e in ended.values())
    assert [ended[k].completion_tokens for k in range(6)] == [1500] * 4 + [3, 3]
