"""The clients of ``bench_serve.py``: HTTP/1.1 over asyncio's streams, the responses read by hand.

They run on the same cores as the servers they measure, so they should cost little: httpx took about 200 us
of CPU for each streamed token (its HTTP parser and its layers of async iterators), more than our server
spent on it, and on 2 cores that came out of the server's share; these take a tenth of that. Every server
is measured with the same clients.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


async def post(url: str, body: dict) -> AsyncIterator[bytes]:
    """POST ``body`` as JSON to ``url``; yields the response's body as it arrives (each HTTP chunk)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        data = json.dumps(body).encode()
        writer.write(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"{status}: {(await reader.read(2000))[:500]!r}")
        if b"transfer-encoding: chunked" in head:
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                yield (await reader.readexactly(size + 2))[:-2]
        else:
            length = re.search(rb"content-length: *(\d+)", head)
            yield await (reader.readexactly(int(length.group(1))) if length else reader.read())
    finally:
        writer.close()


async def one(url: str, body: dict) -> dict:
    """One request: its time to first token, the gaps between the chunks with text, its new tokens."""
    start = time.perf_counter()
    if not body.get("stream"):  # a whole answer: its time and its tokens only
        answer = json.loads(b"".join([part async for part in post(url, body)]))
        return {"ttft": time.perf_counter() - start, "gaps": [], "tokens": answer["usage"]["completion_tokens"]}
    stamps, tokens, usage, rest = [], 0, None, b""
    async for data in post(url, body):
        now = time.perf_counter()
        *events, rest = (rest + data).split(b"\n\n")
        for event in events:
            if not event.startswith(b"data: {"):
                continue
            chunk = json.loads(event[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                if text:
                    stamps.append(now)
                    tokens += 1
    tokens = usage["completion_tokens"] if usage else tokens
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"ttft": stamps[0] - start, "gaps": gaps, "tokens": tokens}


async def load(url: str, bodies: list[dict], clients: int) -> dict:
    """``bodies`` sent by ``clients`` concurrent clients, each sending its next when its last has ended:
    tokens/s over all, and p50/p99 time to first token and between tokens."""
    queue, results = list(bodies), []

    async def client() -> None:
        while queue:
            results.append(await one(url, queue.pop(0)))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    ttft = sorted(r["ttft"] for r in results)
    gaps = sorted(g for r in results for g in r["gaps"])
    return {"tps": tokens / wall, "tokens": tokens, "ttft50": percentile(ttft, 50), "ttft99": percentile(ttft, 99),
            "itl50": percentile(gaps, 50), "itl99": percentile(gaps, 99)}


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")
