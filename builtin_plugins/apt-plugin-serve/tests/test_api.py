"""A real server driven by the official ``openai`` client and by ``httpx``: models, completions and chat,
whole and streamed, greedy answers equal to ``generate``, 32 concurrent requests answered as they are
alone, usage, stop strings, the context, metrics."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx

from apt_plugin_serve.schemas import ChatCompletionChunk, Completion
from conftest import greedy

PROMPTS = ["Return the", "a", "The value of the", "If", "Raise an error when", "x = ", "List of all", "Create a new",
           "This module provides", "Open the file", "Return True if the object is", "The default is"]


def test_models(text_server):
    client = text_server.client()
    assert [m.id for m in client.models.list()] == ["docs"]
    assert client.models.retrieve("docs").owned_by == "apt-kernel"
    health = text_server.health()
    assert health["kind"] == "apt-lm" and health["context"] == 256 and health["fingerprint"].startswith("fp_")


def test_completions_whole_and_streamed_equal_generate(text_server, text_model):
    client = text_server.client()
    expected = greedy(*text_model, "Return the", 30)
    answer = client.completions.create(model="docs", prompt="Return the", max_tokens=30, temperature=0)
    assert answer.choices[0].text == expected and answer.object == "text_completion"
    assert answer.usage.prompt_tokens == len("Return the") + 1  # <bos> and the characters
    assert answer.usage.completion_tokens == answer.usage.total_tokens - answer.usage.prompt_tokens
    assert answer.choices[0].finish_reason == ("length" if answer.usage.completion_tokens == 30 else "stop")
    pieces = list(client.completions.create(model="docs", prompt="Return the", max_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in pieces if c.choices) == expected
    assert pieces[-1].usage.total_tokens == answer.usage.total_tokens and not pieces[-1].choices
    # several prompts, n choices each, and echo; token ids as the prompt
    many = client.completions.create(model="docs", prompt=["Return the", "If"], n=2, max_tokens=12, temperature=0,
                                     echo=True)
    texts = [c.text for c in sorted(many.choices, key=lambda c: c.index)]
    assert texts == ["Return the" + greedy(*text_model, "Return the", 12)] * 2 + \
        ["If" + greedy(*text_model, "If", 12)] * 2
    model, tokenizer = text_model
    ids = [tokenizer.bos_id, *tokenizer.encode("If")]
    by_ids = client.completions.create(model="docs", prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == greedy(model, tokenizer, "If", 12)


def test_chat_whole_and_streamed(text_server, text_model):
    """The default template joins the messages' text: the prompt is what the user wrote (after a system note)."""
    client = text_server.client()
    messages = [{"role": "system", "content": "Notes. "}, {"role": "user", "content": "Return the"}]
    expected = greedy(*text_model, "Notes. Return the", 20)
    answer = client.chat.completions.create(model="docs", messages=messages, max_tokens=20, temperature=0)
    assert answer.choices[0].message.content == expected and answer.choices[0].message.role == "assistant"
    assert answer.usage.prompt_tokens == len("Notes. Return the") + 1
    chunks = list(client.chat.completions.create(model="docs", messages=messages, max_completion_tokens=20,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].system_fingerprint == text_server.health()["fingerprint"]
    # the raw stream: server-sent events ending in [DONE]
    with httpx.stream("POST", text_server.url + "/v1/chat/completions", json={
            "model": "docs", "messages": messages, "max_tokens": 3, "temperature": 0, "stream": True}) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"
    for line in lines[:-1]:  # the chunks are written by hand (fast): each is the schema's shape, strictly
        ChatCompletionChunk.model_validate_json(line[6:], strict=True)
    with httpx.stream("POST", text_server.url + "/v1/completions", json={
            "model": "docs", "prompt": "If", "max_tokens": 3, "temperature": 0, "stream": True}) as raw:
        lines = [line for line in raw.iter_lines() if line]
    for line in lines[:-1]:
        assert Completion.model_validate_json(line[6:], strict=True).choices[0].index == 0


def test_32_concurrent_requests_get_the_answers_they_get_alone(text_server, text_model):
    model, tokenizer = text_model
    prompts = [PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)) for i in range(32)]
    lengths = [5 + 3 * (i % 9) for i in range(32)]  # they end at different steps, so others join and leave
    expected = [greedy(model, tokenizer, p, n) for p, n in zip(prompts, lengths, strict=True)]
    client = text_server.client()

    def ask(i: int) -> str:
        if i % 2:
            return client.completions.create(model="docs", prompt=prompts[i], max_tokens=lengths[i],
                                             temperature=0).choices[0].text
        chunks = client.completions.create(model="docs", prompt=prompts[i], max_tokens=lengths[i], temperature=0,
                                           stream=True)
        return "".join(c.choices[0].text for c in chunks)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    assert answers == expected
    metrics = httpx.get(text_server.url + "/metrics").text
    assert 'apt_serve_requests_total{endpoint="/v1/completions",status="200"}' in metrics
    assert "apt_serve_time_to_first_token_seconds_count" in metrics and "apt_serve_queue_depth 0.0" in metrics
    generated = next(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("apt_serve_generated_tokens_total"))
    assert generated >= sum(len(a) for a in answers)


def test_a_stop_string_and_max_tokens_past_the_context(text_server, text_model):
    client = text_server.client()
    full = greedy(*text_model, "Return the", 40)
    stop = full[8:11]
    answer = client.completions.create(model="docs", prompt="Return the", max_tokens=40, temperature=0, stop=[stop])
    assert answer.choices[0].text == full[:full.index(stop)] and answer.choices[0].finish_reason == "stop"
    # max_tokens beyond the context is clipped, and said: finish_reason "length"
    long = client.completions.create(model="docs", prompt="x" * 240, max_tokens=1000, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 256 - 241 and long.choices[0].finish_reason == "length"


def test_a_seed_makes_a_sample_reproducible(text_server):
    client = text_server.client()
    draws = [client.completions.create(model="docs", prompt="The", max_tokens=20, temperature=1.0,
                                       seed=s).choices[0].text for s in (3, 3, 4)]
    assert draws[0] == draws[1] != draws[2]
