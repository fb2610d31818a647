"""The continuous-batching engine without a server, stepped by hand: requests joining and leaving a running
batch get the answers they get alone (and from ``generate``), in both attention modes; sampling with a seed,
stop strings, the context, the queue's limit, a cancelled request, requests that arrive while others are read,
a model switched mid-answer."""

from __future__ import annotations

import pickle
import threading
from unittest.mock import patch

import pytest
import torch

from apt_plugin_lm.generation import KVBatch
from apt_plugin_serve.engine import Engine, QueueFull, Request, Sampling
from apt_plugin_serve.models import Media, Served, load
from apt_plugin_serve.text import TextStream
from conftest import greedy, save_run

PROMPTS = ["Return the", "a", "The value of the", "If", "Raise an error when", "x = ", "List of all", "Create a new",
           "This module provides", "Open the file", "  ", "Return True if the object is"]


class Answers:
    """Collects the engine's events per request."""

    def __init__(self) -> None:
        self.events: dict[int, list] = {}

    def request(self, key: int, served: Served, prompt: str, max_tokens: int = 40, **fields) -> Request:
        return Request(served.encode(prompt), max_tokens, lambda event: self.events.setdefault(key, []).append(event),
                       **fields)

    def text(self, key: int) -> str:
        return "".join(event.text for event in self.events[key])

    def done(self, key: int) -> bool:
        return bool(self.events.get(key)) and (self.events[key][-1].finish_reason or self.events[key][-1].error)


def run(engine: Engine, answers: Answers, keys, steps: int = 10_000) -> None:
    for _ in range(steps):
        if all(answers.done(k) for k in keys):
            return
        engine.step()
    raise AssertionError("the engine did not finish")


def served_in(mode: str, text_run, tmp_path) -> Served:
    """The trained text model, or the same weights under SDPA attention."""
    if mode == "autopoietic":
        return load(text_run)
    from apt_plugin_lm.model import APTConfig, APTLargeModel
    from apt_plugin_lm.tokenization import load_tokenizer

    config = APTConfig.load(text_run / "model")
    config.attention = "sdpa"
    model = APTLargeModel(config)
    model.load_state_dict(APTLargeModel.from_pretrained(text_run / "model").state_dict(), strict=False)
    save_run(tmp_path / "sdpa", model.eval(), load_tokenizer(text_run / "model" / "tokenizer"))
    return load(tmp_path / "sdpa")


def limit(key: int) -> int:
    return 8 + 7 * (key % 5)  # answers of different lengths: rows leave at different steps, others join


@pytest.mark.parametrize("mode", ["autopoietic", "sdpa"])
def test_greedy_answers_are_those_of_generate_alone_and_in_any_batch(mode, text_run, tmp_path):
    """Twelve prompts of 1 to 29 tokens, answers of 8 to 36 tokens, through batches of at most 5: the first
    five start together, the others join a running batch as rows leave, three of them two steps late. Each
    answer equals generate() of its prompt alone."""
    served = served_in(mode, text_run, tmp_path)
    expected = [greedy(served.model, served.tokenizer, p, limit(k)) for k, p in enumerate(PROMPTS)]
    assert len(set(expected)) > 6  # the answers depend on the prompt
    engine, answers, joined = Engine(served, max_batch=5), Answers(), []
    extend = KVBatch.extend
    with patch.object(KVBatch, "extend", lambda batch, other: joined.append(len(batch)) or extend(batch, other)):
        for key, prompt in enumerate(PROMPTS[:9]):
            engine.submit(answers.request(key, served, prompt, limit(key), sampling=Sampling(temperature=0)))
        engine.step()
        engine.step()
        for key, prompt in enumerate(PROMPTS[9:], 9):
            engine.submit(answers.request(key, served, prompt, limit(key), sampling=Sampling(temperature=0)))
        run(engine, answers, range(len(PROMPTS)))
    assert [answers.text(k) for k in range(len(PROMPTS))] == expected
    assert len(joined) >= 3 and max(joined) == 4  # rows joined running batches (of 1 to 4 rows)
    assert engine.running == 0 and engine._batch is None  # every row left, the cache with them


def test_a_seeded_sample_is_the_same_alone_and_in_a_batch(text_run):
    served = load(text_run)
    sampled = Sampling(temperature=0.9, top_k=20, top_p=0.95, seed=7)
    alone_engine, alone = Engine(served), Answers()
    alone_engine.submit(alone.request(0, served, "Return the", sampling=sampled))
    run(alone_engine, alone, [0])
    engine, answers = Engine(served), Answers()
    for key, prompt in enumerate(PROMPTS[:6]):
        engine.submit(answers.request(key, served, prompt, sampling=sampled if key == 0 else Sampling(1.0, seed=key)))
    run(engine, answers, range(6))
    assert answers.text(0) == alone.text(0)
    other, again = Answers(), Engine(served)
    again.submit(other.request(0, served, "Return the", sampling=Sampling(0.9, 0.95, 20, seed=8)))
    run(again, other, [0])
    assert other.text(0) != alone.text(0)  # another seed, another draw


def test_stop_strings_max_tokens_and_the_context(text_run):
    served = load(text_run)
    full = greedy(served.model, served.tokenizer, "Return the", 60)
    stop = full[10:13]  # a string the answer will contain
    engine, answers = Engine(served), Answers()
    engine.submit(answers.request(0, served, "Return the", 60, sampling=Sampling(0), stop=(stop, "never there")))
    engine.submit(answers.request(1, served, "Return the", 5, sampling=Sampling(0)))
    prompt = "x" * (served.context - 4)  # room for 3 tokens after <bos> and the prompt
    engine.submit(answers.request(2, served, prompt, 50, sampling=Sampling(0), ignore_eos=True))
    run(engine, answers, [0, 1, 2])
    assert answers.text(0) == full[:full.index(stop)] and answers.events[0][-1].finish_reason == "stop"
    assert answers.events[1][-1].finish_reason == "length" and answers.events[1][-1].completion_tokens == 5
    assert answers.events[2][-1].finish_reason == "length" and answers.events[2][-1].completion_tokens == 3


def test_a_full_queue_refuses_and_a_cancelled_request_frees_its_slot(text_run):
    served = load(text_run)
    engine, answers = Engine(served, max_batch=1, max_queue=1), Answers()
    first = answers.request(0, served, "Return the", 200, sampling=Sampling(0), ignore_eos=True)
    engine.submit(first)
    engine.step()  # running
    engine.submit(answers.request(1, served, "If", 3, sampling=Sampling(0)))  # waits
    with pytest.raises(QueueFull, match="1 requests are waiting"):
        engine.submit(answers.request(2, served, "a", 3))
    assert (engine.running, engine.waiting) == (1, 1)
    first.cancel()
    engine.step()  # the slot is freed and the waiting request takes it in the same step
    assert (engine.running, engine.waiting) == (1, 0)
    run(engine, answers, [1])
    assert not answers.done(0) and answers.events[1][-1].finish_reason in ("stop", "length")


def test_requests_that_arrive_while_others_are_read_join_before_the_batch_decodes(text_run):
    """Prefill first: the requests ``poll`` hands in while the first is being read are admitted in the same
    step, and all of them take their first token together; their answers are those they get alone."""
    served = load(text_run)
    answers = Answers()
    late = [answers.request(k, served, p, limit(k), sampling=Sampling(0)) for k, p in enumerate(PROMPTS[1:4], 1)]
    arriving = [late[:2], late[2:]]  # two at the first poll, one at the second, none after

    def poll() -> None:
        for request in arriving.pop(0) if arriving else []:
            engine.submit(request)

    engine = Engine(served, poll=poll)
    engine.submit(answers.request(0, served, PROMPTS[0], limit(0), sampling=Sampling(0)))
    engine.step()
    assert engine.running == 4 and not arriving
    assert all(len(answers.events.get(k, [])) <= 1 for k in range(4))
    assert [len(r.tokens) for r in engine._rows] == [1, 1, 1, 1]  # one decode step, for all four
    run(engine, answers, range(4))
    assert [answers.text(k) for k in range(4)] == [greedy(served.model, served.tokenizer, p, limit(k))
                                                  for k, p in enumerate(PROMPTS[:4])]


def test_requests_whose_rows_cannot_join_are_told_and_give_their_slots_back(text_run):
    """An admission that fails after its requests took their slots (here the cache cannot be extended) ends
    those requests with an error and frees their slots; the running request goes on."""
    served = load(text_run)
    engine, answers = Engine(served), Answers()
    engine.submit(answers.request(0, served, "Return the", 20, sampling=Sampling(0)))
    engine.turn()
    engine.submit(answers.request(1, served, "If", 20, sampling=Sampling(0)))
    with patch.object(KVBatch, "extend", side_effect=RuntimeError("out of memory")):
        engine.turn()
    assert answers.events[1][-1].error == "generation failed: RuntimeError: out of memory"
    assert engine.running == 1 and not answers.done(0)
    run(engine, answers, [0])
    assert answers.text(0) == greedy(served.model, served.tokenizer, "Return the", 20) and engine.running == 0


def test_the_engine_in_a_thread_of_its_own(text_run):
    """``start``: requests submitted from another thread while it runs get the answers they get alone; those
    still running when it closes end with an error."""
    served = load(text_run)
    engine, answers = Engine(served).start(), Answers()
    for key, prompt in enumerate(PROMPTS[:3]):
        engine.submit(answers.request(key, served, prompt, limit(key), sampling=Sampling(0)))
    engine.submit(answers.request(3, served, "Return the", 10_000, sampling=Sampling(0), ignore_eos=True))
    paused = threading.Event()
    while not all(answers.done(k) for k in range(3)):  # a few tenths of a second; a hang fails CI's timeout
        paused.wait(0.01)
    engine.close(timeout=60)
    assert [answers.text(k) for k in range(3)] == [greedy(served.model, served.tokenizer, p, limit(k))
                                                  for k, p in enumerate(PROMPTS[:3])]
    assert answers.events[3][-1].error == "the server is shutting down" and engine.running == 0


def test_media_cross_to_the_engine_process_as_arrays():
    """Pickled as numpy arrays (a tensor pickles through torch.save, several times slower), and back as the same
    tensors; a bfloat16 tensor, which numpy lacks, crosses as a tensor."""
    media = Media(pixels=torch.rand(1, 3, 16, 16), audio_mask=torch.ones(1, 30, dtype=torch.bool))
    data = pickle.dumps(media, pickle.HIGHEST_PROTOCOL)
    assert b"torch" not in data
    bf16 = Media(features=torch.rand(1, 8, 30).to(torch.bfloat16))
    for sent, back in ((media, pickle.loads(data)), (bf16, pickle.loads(pickle.dumps(bf16)))):
        for field in ("pixels", "features", "audio_mask", "image_mask"):
            mine, theirs = getattr(sent, field), getattr(back, field)
            assert (mine is None and theirs is None) or (torch.equal(mine, theirs) and mine.dtype == theirs.dtype)


def test_a_model_switched_mid_answer_continues_the_running_requests(text_run, tmp_path):
    """After three tokens from model A the engine takes model B: the answer's next tokens are B's greedy
    continuation of the prompt and A's three tokens, and the events say which model wrote them."""
    served = load(text_run)
    from apt_plugin_lm.model import APTLargeModel

    other = APTLargeModel.from_pretrained(text_run / "model")
    with torch.no_grad():
        other.lm_head.weight.mul_(-1.0)  # tied to the embeddings: another model on the same tokenizer
    save_run(tmp_path / "b", other.eval(), served.tokenizer)
    switched = load(tmp_path / "b")
    engine, answers = Engine(served), Answers()
    engine.submit(answers.request(0, served, "Return the", 12, sampling=Sampling(0), ignore_eos=True))
    for _ in range(3):
        engine.step()
    engine.replace(switched)
    run(engine, answers, [0])
    first = greedy(served.model, served.tokenizer, "Return the", 3)
    ids = torch.tensor([served.encode("Return the" + first)])
    rest = other.generate(ids, max_length=ids.shape[1] + 9, do_sample=False)[0, ids.shape[1]:].tolist()
    assert answers.text(0) == first + served.tokenizer.decode(rest)
    prints = [e.fingerprint for e in answers.events[0]]
    assert prints[0] == served.fingerprint and prints[-1] == switched.fingerprint != served.fingerprint


def test_the_text_stream_holds_back_stop_prefixes_and_unfinished_characters():
    stream = TextStream(lambda ids: bytes(ids).decode("utf-8", "replace"), ["END"])
    sent = [stream.push(list("é EN".encode()[:n]))[0] for n in range(1, 7)]
    assert sent == ["", "é", " ", "", "", ""] and stream.flush() == "EN"
    stream = TextStream(lambda ids: bytes(ids).decode(), ["END"])
    data = b"ab ENDING"
    for n in range(1, len(data) + 1):
        piece, stopped = stream.push(list(data[:n]))
        if stopped:
            break
    assert stopped and stream.text == "ab " and n == 6
