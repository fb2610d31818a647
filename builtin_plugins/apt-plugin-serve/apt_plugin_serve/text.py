"""A request's answer as text while its tokens arrive: the part that is safe to send, and stop strings.

Decoding is incremental (as vLLM's detokenizer is): the new tokens are decoded together with a few before
them, and only the text beyond those is new, so a tokenizer that drops a word's leading space when it
decodes the word alone still gives the right text, and each step costs the same however long the answer.
A byte-level token that ends inside a UTF-8 character decodes to U+FFFD until the rest arrives: it waits.
Text that could be the beginning of a stop string also waits until it is not; a stop string is never sent
(as in OpenAI's API)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

INCOMPLETE = "\ufffd"


class TextStream:
    """``push(tokens)`` after every new token: ``(text to send now, whether a stop string was reached)``."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self.decode, self.stop = decode, [s for s in stop if s]
        self.text, self.sent = "", 0
        self._prefix = self._read = 0  # tokens[_prefix:_read] give context; from _read on they are new

    def push(self, tokens: Sequence[int]) -> tuple[str, bool]:
        before = self.decode(tokens[self._prefix:self._read])
        after = self.decode(tokens[self._prefix:])
        if len(after) > len(before) and not after.endswith(INCOMPLETE):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(tokens)
        if not self.stop:
            return self._send(len(self.text)), False
        found = [i for i in (self.text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stop) if i >= 0]
        if found:
            self.text = self.text[:min(found)]
            return self._send(len(self.text)), True
        end, hold = len(self.text), 0  # the longest end of the text that begins a stop string waits
        for s in self.stop:
            hold = max([hold, *(n for n in range(1, min(len(s), end + 1)) if self.text.endswith(s[:n]))])
        return self._send(end - hold), False

    def flush(self) -> str:
        """Everything not sent yet, at the end of the answer (held text that no stop string completed)."""
        return self._send(len(self.text))

    def _send(self, end: int) -> str:
        piece = self.text[self.sent:end]
        self.sent = max(end, self.sent)
        return piece
