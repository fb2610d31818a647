"""Bad requests, each a 4xx with an OpenAI-style error naming the problem, raised by the ``openai`` client as
the exception it maps that status to; the server keeps serving after every one."""

from __future__ import annotations

import httpx
import openai
import pytest

CHAT = {"model": "docs", "messages": [{"role": "user", "content": "Return the"}]}


@pytest.mark.parametrize(("change", "exception", "message", "param"), [
    ({"model": "gpt-9"}, openai.NotFoundError, "the model 'gpt-9' does not exist: this server serves 'docs'", "model"),
    ({"max_tokens": 0}, openai.BadRequestError, "'max_tokens': Input should be greater than 0", "max_tokens"),
    ({"max_completion_tokens": -3}, openai.BadRequestError, "'max_completion_tokens': Input should be greater than 0",
     "max_completion_tokens"),
    ({"temperature": -0.5}, openai.BadRequestError, "'temperature': Input should be greater than or equal to 0",
     "temperature"),
    ({"top_p": 0}, openai.BadRequestError, "'top_p': Input should be greater than 0", "top_p"),
    ({"top_p": 1.5}, openai.BadRequestError, "'top_p': Input should be less than or equal to 1", "top_p"),
    ({"messages": []}, openai.BadRequestError, "'messages': List should have at least 1 item", "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, openai.BadRequestError, r"'messages\[0\].role'",
     "messages[0].role"),
    ({"stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, "at most 4 stop sequences", "stop"),
    ({"logprobs": True}, openai.BadRequestError, "'logprobs' is not supported by this server", "logprobs"),
    ({"messages": [{"role": "user", "content": "x" * 300}]}, openai.BadRequestError,
     "the prompt is 301 tokens, and the model's context is 256 tokens", "messages"),
])
def test_a_bad_chat_request_is_refused_naming_the_problem(text_server, change, exception, message, param):
    with pytest.raises(exception, match=message) as caught:
        text_server.client().chat.completions.create(**{**CHAT, **change})
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"
    assert text_server.health()["status"] == "ok"


def test_malformed_bodies_and_missing_fields(text_server):
    def post(path: str, **kwargs) -> httpx.Response:
        return httpx.post(text_server.url + path, timeout=30, **kwargs)

    broken = post("/v1/chat/completions", content=b'{"model": "docs", "messages": [', headers={
        "content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["message"].startswith(
        "the request body is not valid JSON")
    missing = post("/v1/chat/completions", json={"model": "docs"})
    assert missing.status_code == 400 and missing.json()["error"] == {
        "message": "'messages' is required", "type": "invalid_request_error", "param": "messages", "code": None}
    no_prompt = post("/v1/completions", json={"model": "docs"})
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["param"] == "prompt"
    not_object = post("/v1/completions", json=[1, 2])
    assert not_object.status_code == 400 and "the request body" in not_object.json()["error"]["message"]
    ids = post("/v1/completions", json={"model": "docs", "prompt": [5, 100_000]})
    assert ids.status_code == 400 and "token id 100000, outside the model's vocabulary" in \
        ids.json()["error"]["message"]
    unknown = httpx.get(text_server.url + "/v1/engines")
    assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "no such endpoint: GET /v1/engines"
    with pytest.raises(openai.BadRequestError, match="'prompt' is empty"):
        text_server.client().completions.create(model="docs", prompt=[])
    assert text_server.client().completions.create(model="docs", prompt="", max_tokens=3).usage.prompt_tokens == 1
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        text_server.client().models.retrieve("other")
    assert text_server.health()["status"] == "ok"
