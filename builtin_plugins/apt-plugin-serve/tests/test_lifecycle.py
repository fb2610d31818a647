"""The server's life around its requests: an API key, a full queue (429 with Retry-After), a client that
leaves mid-stream, a new export switched to during a stream (--watch), SIGTERM draining running requests,
and command-line mistakes. The streams here are of an untrained model with a 20,000-token context, so each
runs far longer than the test needs to act while it does; the test closes it when done.

The API key, the queue and --watch are one server's (``guarded``: each test expects of it only what its
flags promise, whichever ran first); SIGTERM ends its own. Both processes are launched when the module's
first test starts, so that the second imports while the first serves."""

from __future__ import annotations

import json
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from apt_kernel.cli import main
from conftest import Server, copy_run, launch, long_model, wait_for

LONG = {"prompt": "abc", "max_tokens": 19_000, "temperature": 0, "stream": True, "ignore_eos": True}


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    return long_model(tmp_path_factory.mktemp("long") / "long")


@pytest.fixture(scope="module")
def launched():
    processes = {"guarded": launch(), "drained": launch(), "crashed": launch()}
    yield processes
    for process in processes.values():  # those no test started
        if process.poll() is None and not process.stdin.closed:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def guarded(long_run, launched, tmp_path_factory):
    """A copy of the long run served with an API key, one slot, a queue of one, and --watch."""
    run = copy_run(long_run, tmp_path_factory.mktemp("guarded") / "run")
    server = Server(run, ("--max-batch", "1", "--max-queue", "1", "--api-key", "sekret", "--watch"),
                    launched["guarded"])
    try:
        yield server.start().ready()
    finally:
        server.stop()


def chunks(response: httpx.Response):
    for line in response.iter_lines():
        if line.startswith("data: {"):
            yield json.loads(line[6:])


def test_an_api_key_a_full_queue_and_a_client_that_leaves(guarded):
    server, key = guarded, {"Authorization": "Bearer sekret"}
    missing = httpx.get(server.url + "/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert "no API key: send 'Authorization: Bearer <key>'" in missing.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
        server.client(api_key="wrong").models.list()
    client = server.client(api_key="sekret")
    assert [m.id for m in client.models.list()] == ["run"]
    with httpx.stream("POST", server.url + "/v1/completions", json={"model": "run", **LONG}, headers=key,
                      timeout=60) as first:
        stream = chunks(first)  # kept: a generator dropped here would close the response
        next(stream)  # the first request runs, in the only slot
        with ThreadPoolExecutor(1) as pool:
            second = pool.submit(client.completions.create, model="run", prompt="ab", max_tokens=5,
                                 temperature=0, extra_body={"ignore_eos": True})
            wait_for(lambda: server.health()["waiting"] == 1, what="the second request waiting")
            with pytest.raises(openai.RateLimitError, match="1 requests are waiting for a slot") as caught:
                client.completions.create(model="run", prompt="a", max_tokens=5)
            assert caught.value.response.headers["Retry-After"] == "1"
            assert server.health()["running"] == 1
            first.close()  # the client leaves: its slot is free at the engine's next step
            answer = second.result(timeout=60)
    assert answer.usage.completion_tokens == 5 and answer.choices[0].finish_reason == "length"
    wait_for(lambda: server.health()["running"] == 0, what="the slots freed")


def test_watch_switches_to_a_new_export_during_a_stream(guarded):
    """The trainer's export (model/ rewritten in place) is loaded while a stream runs; the stream goes on
    without a failed request, its chunks from then on by the new model (its system_fingerprint)."""
    server, key = guarded, {"Authorization": "Bearer sekret"}
    before = server.health()["fingerprint"]
    with httpx.stream("POST", server.url + "/v1/completions", json={"model": "run", **LONG}, headers=key,
                      timeout=60) as raw:
        seen = chunks(raw)
        assert next(seen)["system_fingerprint"] == before
        long_model(server.path, seed=1)  # a new export of the same run: other weights, the same tokenizer
        fingerprints = []
        for chunk in seen:
            assert "error" not in chunk and chunk["choices"][0]["finish_reason"] is None
            fingerprints.append(chunk["system_fingerprint"])
            if fingerprints[-1] != before:
                break
    after = server.health()["fingerprint"]
    assert after != before and fingerprints[-1] == after and set(fingerprints) == {before, after}
    answer = server.client(api_key="sekret").completions.create(model="run", prompt="abc", max_tokens=5,
                                                                temperature=0)
    assert answer.system_fingerprint == after
    message = f"switching to the new export in {server.path / 'model'} ({before} -> {after})"
    wait_for(lambda: message in server.read_output(), what="the switch said on the server's output")


def engine_of(server: Server) -> int:
    """The pid of the server's engine process (its only child)."""
    task = Path(f"/proc/{server.process.pid}/task")
    children = [int(pid) for thread in task.iterdir() for pid in (thread / "children").read_text().split()]
    assert len(children) == 1, children
    return children[0]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # ended, not reaped
    except FileNotFoundError:
        return True


def test_sigterm_stops_accepting_and_lets_running_requests_finish(long_run, launched):
    server = Server(long_run, process=launched["drained"]).start().ready()
    engine = engine_of(server)
    request = {"model": "long", **LONG, "max_tokens": 300, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=request, timeout=60) as raw:
        seen = chunks(raw)
        next(seen)
        server.process.send_signal(signal.SIGTERM)

        def refused() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", server.port)) != 0

        wait_for(refused, what="the server refusing new connections")
        rest = list(seen)
    assert rest[-1]["usage"]["completion_tokens"] == 300
    assert [c["choices"][0]["finish_reason"] for c in rest if c["choices"]][-1] == "length"
    assert server.process.wait(60) == 0 and gone(engine)
    assert "stopping: no new connections; 1 running and 0 waiting request(s) finish first" in server.stop()


def test_an_engine_process_that_dies_fails_its_requests_and_the_server_says_so(long_run, launched):
    """And SIGTERM still stops the server when nothing reads its output any more (printing what it waits for
    raised BrokenPipeError before it had noted the stop, and it served on)."""
    server = Server(long_run, process=launched["crashed"]).start().ready()
    try:
        with httpx.stream("POST", server.url + "/v1/completions", json={"model": "long", **LONG}, timeout=60) as raw:
            seen = chunks(raw)
            next(seen)
            os.kill(engine_of(server), signal.SIGKILL)
            last = list(seen)[-1]
        assert last["error"]["message"] == "the engine's process ended (exit code -9)"
        health = httpx.get(server.url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "the engine has stopped"
        with pytest.raises(openai.InternalServerError, match=r"the engine's process ended \(exit code -9\)"):
            server.client().completions.create(model="long", prompt="a", max_tokens=3)
        said = "the engine's process ended (exit code -9): the server answers no more requests"
        wait_for(lambda: said in server.read_output(), what="the engine's end said on the server's output")
        server.process.stdout.close()  # nothing reads its output now
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    finally:
        server.stop()


def test_command_line_mistakes_are_one_line_and_exit_2(tmp_path, long_run):
    def refused(*args: str) -> str:
        result = CliRunner().invoke(main, ["serve", *args])  # the kernel's command: UserError is exit 2
        assert result.exit_code == 2, result.output
        return result.output

    assert "no such run or model folder" in refused(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert "holds no saved model" in refused(str(tmp_path / "empty")) and "exports model/ at the end" in \
        refused(str(tmp_path / "empty"))
    assert "is not a valid Jinja template" in refused(str(long_run), "--chat-template", "{% for %}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert "cannot listen on 127.0.0.1" in refused(str(long_run), "--port", str(taken.getsockname()[1]))
    run = copy_run(long_run, tmp_path / "run")
    (run / "pipeline.json").write_text(json.dumps({"tool": {"serve": {"chat_templat": "x"}}}))
    assert "did you mean 'chat_template'?" in refused(str(run))
    (run / "model" / "config.json").write_text("{not json")
    assert "cannot be read as JSON" in refused(str(run))


def test_a_pipeline_or_a_flag_sets_the_chat_template(tmp_path, long_run):
    """[tool.serve] chat_template in the run's pipeline.json, overridden by --chat-template (text or @FILE)."""
    from apt_plugin_serve.cli import _template, _tool_settings

    run = copy_run(long_run, tmp_path / "run")
    (run / "pipeline.json").write_text(json.dumps({"tool": {"serve": {
        "chat_template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"}}}))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    tool = _tool_settings(run, run / "model")
    assert _template(None, tool).render(messages) == "[system] be brief\n[user] hello\n"
    assert _tool_settings(run / "model", run / "model") == tool  # PATH may be the run's model/ folder
    (tmp_path / "t.jinja").write_text("{{ messages[-1].content | upper }}")
    assert _template(f"@{tmp_path / 't.jinja'}", tool).render(messages) == "HELLO"
    assert _template("{{ messages | length }}", tool).render(messages) == "2"
    assert _template(None, {}).render(messages) == "be briefhello"  # the default: the text, joined
