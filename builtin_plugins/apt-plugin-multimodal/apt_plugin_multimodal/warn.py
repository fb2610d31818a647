"""Warnings the Python API shows as one line, ``warning: <message>``.

Python's default format adds the file and line of the ``warnings.warn`` call and that line of source: for
a warning raised inside a plugin (an audio clip cut to the window, say) that is a line of the plugin's code,
which tells the caller nothing. The kernel's CLI prints its messages as plain lines; the model's API and
``train_multimodal_model`` show warnings the same way while they run, and leave the caller's settings as they
were (filters, ``-W error`` and ``catch_warnings`` still apply: only the text is shorter).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


def one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             line: str | None = None) -> str:
    """``warnings.formatwarning`` that shows the message only."""
    return f"warning: {message}\n"


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """Inside: warnings that are shown are formatted by ``one_line``."""
    before = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = before
