"""A refusal's reason in the HTTP status line, as PyPI sends it (``400 File already exists: ...``).

twine prints a failed upload's status phrase, not its body (that needs ``--verbose``), so a refusal that
only says "400 Bad Request" tells its user nothing. ASGI has no field for the phrase, and uvicorn writes
the standard one from a table keyed by status code; ``Status`` is an int equal to its code that carries its
own phrase, and ``install()`` wraps uvicorn's tables so such a status is written with it (any other code
reads the table as before).
"""

from __future__ import annotations

import re

MAX_PHRASE = 500


class Status(int):
    """An HTTP status code with its own reason phrase; equal to (and hashed as) the plain code."""

    phrase: str

    def __new__(cls, code: int, phrase: str) -> Status:
        status = super().__new__(cls, code)
        # the status line is latin-1 text without control characters; keep it ASCII and on one line
        text = re.sub(r"[\x00-\x1f\x7f]+", " ", phrase).strip()[:MAX_PHRASE]
        status.phrase = text.encode("ascii", "backslashreplace").decode("ascii")
        return status


class _Lines(dict):
    """uvicorn's httptools table: code -> b"HTTP/1.1 400 Bad Request\\r\\n"."""

    def __getitem__(self, code: int) -> bytes:
        if isinstance(code, Status) and code.phrase:
            return f"HTTP/1.1 {int(code)} {code.phrase}\r\n".encode("ascii")
        return super().__getitem__(code)


class _Phrases(dict):
    """uvicorn's h11 table: code -> b"Bad Request"."""

    def __getitem__(self, code: int) -> bytes:
        if isinstance(code, Status) and code.phrase:
            return code.phrase.encode("ascii")
        return super().__getitem__(code)


def install() -> None:
    """Make uvicorn (either HTTP implementation) write a ``Status``'s own phrase; idempotent."""
    from uvicorn.protocols.http import h11_impl, httptools_impl

    if not isinstance(httptools_impl.STATUS_LINE, _Lines):
        httptools_impl.STATUS_LINE = _Lines(httptools_impl.STATUS_LINE)
    if not isinstance(h11_impl.STATUS_PHRASES, _Phrases):
        h11_impl.STATUS_PHRASES = _Phrases(h11_impl.STATUS_PHRASES)
