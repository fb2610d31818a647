"""A multimodal model served: images and clips as OpenAI's content parts, each read with the model's own
preprocessors, so the answers are those of ``generate_from_multimodal`` for the same file; transcriptions of
an FSDD recording through ``audio.transcriptions.create``; images and clips the server refuses."""

from __future__ import annotations

import base64
import http.server
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import COLOURS, DIGIT_PROMPT, FSDD, SPOKEN_PROMPT, TONES, png, tone

pytestmark = pytest.mark.slow_tier  # in the slow tier (pytest --slow-tier; CI runs it after the README's command)


def image_message(text: str, data: bytes, kind: str = "png") -> list[dict]:
    url = f"data:image/{kind};base64,{base64.b64encode(data).decode()}"
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def audio_message(text: str, data: bytes) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "input_audio", "input_audio": {
        "data": base64.b64encode(data).decode(), "format": "wav"}}]}]


def test_image_and_audio_chats_answer_as_generate_from_multimodal(multimodal_server, multimodal_model, tmp_path):
    """The digits-style model answers "what digit is this? " about an image as it does from Python, through the
    default template (the user's text is the prompt it was trained on); the same for clips; all at once."""
    client = multimodal_server.client()
    health = multimodal_server.health()
    assert health["kind"] == "multimodal-apt" and health["takes_image"] and health["takes_audio"]
    cases = []
    for colour, word in COLOURS.items():
        expected = multimodal_model.generate_from_multimodal(DIGIT_PROMPT, image=png(colour), max_length=10)
        assert expected == word  # the model learnt it: the image decides the answer
        cases.append((image_message(DIGIT_PROMPT, png(colour)), expected))
    for hertz in TONES:
        path = tmp_path / f"{hertz}.wav"
        path.write_bytes(tone(hertz))
        expected = multimodal_model.generate_from_multimodal(SPOKEN_PROMPT, audio=str(path), max_length=10)
        cases.append((audio_message(SPOKEN_PROMPT, tone(hertz)), expected))
    cases.append(([{"role": "user", "content": DIGIT_PROMPT}], multimodal_model.generate_from_multimodal(
        DIGIT_PROMPT, max_length=10)))  # no image: the model's "nothing" memory

    def ask(case) -> str:
        return client.chat.completions.create(model="digits", messages=case[0], max_tokens=10,
                                              temperature=0).choices[0].message.content

    assert [ask(case) for case in cases] == [expected for _, expected in cases]  # one at a time
    with ThreadPoolExecutor(len(cases)) as pool:  # together: images, clips and text in one batch
        assert list(pool.map(ask, cases * 2)) == [expected for _, expected in cases] * 2
    streamed = client.chat.completions.create(model="digits", messages=cases[1][0], max_tokens=10, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cases[1][1]


@pytest.mark.skipif(not FSDD.is_dir(), reason="needs the FSDD recordings in ../shared/data")
def test_a_transcription_of_an_fsdd_recording(multimodal_server, multimodal_model):
    """``audio.transcriptions.create`` with the recording as a file: the prompt is the pipeline's
    [tool.serve] transcription_prompt ("which digit? "), as the spoken-digits model was trained."""
    client = multimodal_server.client()
    for recording in sorted(FSDD.glob("*.wav"))[::1000]:
        expected = multimodal_model.generate_from_multimodal(SPOKEN_PROMPT, audio=str(recording),
                                                             max_length=64 - 14)
        with recording.open("rb") as audio:
            answer = client.audio.transcriptions.create(model="digits", file=audio)
        assert answer.text == expected
        with recording.open("rb") as audio:
            text = client.audio.transcriptions.create(model="digits", file=audio, response_format="text")
        assert text.strip() == expected
        with recording.open("rb") as audio:  # the request's own prompt wins
            other = client.audio.transcriptions.create(model="digits", file=audio, prompt=DIGIT_PROMPT)
        assert other.text == multimodal_model.generate_from_multimodal(DIGIT_PROMPT, audio=str(recording),
                                                                       max_length=64 - 21)


def test_images_and_clips_the_server_refuses(multimodal_server):
    import openai

    client = multimodal_server.client()

    def refused(messages, match, kind=openai.BadRequestError):
        with pytest.raises(kind, match=match):
            client.chat.completions.create(model="digits", messages=messages, max_tokens=5)

    with pytest.raises(openai.BadRequestError, match="cannot be read as an image") as caught:  # naming the part
        client.chat.completions.create(model="digits", messages=image_message("x", b"not an image"), max_tokens=5)
    assert caught.value.body["param"] == "messages[0].content[1]"
    assert str(caught.value.body["message"]).startswith("messages[0].content[1]: ")
    refused(audio_message("x", b"RIFF not really a wave file"), "audio")
    refused([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}],
            r"messages\[0\].content\[0\].image_url.url is not valid base64")
    noise = bytes(range(256)) * 300  # 75 KB: over this server's --max-media-mb 0.05
    refused(image_message("x", noise), r"is 75 KB, over the limit of 51 KB per image or clip \(--max-media-mb\)")
    two = image_message("x", png("red"))
    two[0]["content"].append(two[0]["content"][1])
    refused(two, "a second image")
    with pytest.raises(openai.APIStatusError, match="over the limit of 512 KB") as caught:  # --max-body-mb 0.5
        client.chat.completions.create(model="digits", messages=image_message("x", b"\0" * 700_000), max_tokens=5)
    assert caught.value.status_code == 413
    with open(FSDD / "0_george_0.wav" if FSDD.is_dir() else __file__, "rb") as audio:
        with pytest.raises(openai.BadRequestError, match="response_format 'srt' is not supported"):
            client.audio.transcriptions.create(model="digits", file=audio, response_format="srt")
    assert multimodal_server.health()["status"] == "ok"  # and it goes on serving
    assert client.chat.completions.create(model="digits", messages=image_message(DIGIT_PROMPT, png("red")),
                                          max_tokens=10, temperature=0).choices[0].message.content == "one"


def test_a_remote_image_url_is_fetched_only_when_allowed(multimodal_server, text_server):
    """The multimodal server was started with --allow-image-urls: it fetches from a loopback server. The text
    server was not: it refuses the URL without fetching it."""
    import openai

    fetched = []

    class Images(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            fetched.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(png("blue"))

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{site.server_address[1]}/blue.png"
    message = [{"role": "user", "content": [{"type": "text", "text": DIGIT_PROMPT},
                                            {"type": "image_url", "image_url": {"url": url}}]}]
    try:
        answer = multimodal_server.client().chat.completions.create(model="digits", messages=message, max_tokens=10,
                                                                    temperature=0)
        assert answer.choices[0].message.content == "two" and fetched == ["/blue.png"]
        with pytest.raises(openai.BadRequestError, match="remote image URLs are refused"):
            text_server.client().chat.completions.create(model="docs", messages=message, max_tokens=5)
        assert fetched == ["/blue.png"]
    finally:
        site.shutdown()
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\].content\[1\]: the model 'docs' takes no images"):
        text_server.client().chat.completions.create(model="docs", messages=image_message("x", png("red")))
    with open(FSDD / "0_george_0.wav" if FSDD.is_dir() else __file__, "rb") as audio:
        with pytest.raises(openai.BadRequestError, match="has no audio encoder"):
            text_server.client().audio.transcriptions.create(model="docs", file=audio)
    assert httpx.get(text_server.url + "/health").json()["status"] == "ok"
