"""Images and audio in chat messages, as OpenAI's content parts carry them.

``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` and
``{"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}``. A model reads one image
and one clip per request (its memory holds one of each). A remote ``http(s)`` image URL is refused unless
the server was started with ``--allow-image-urls``: by default the server fetches nothing. Every problem is
a 400 that names the part (``messages[0].content[1]``).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from apt_sdk import UserError

from .errors import APIError, size
from .models import Media, Served
from .schemas import AudioPart, ImagePart, Message

# an image of at most this many pixels (and bytes) is preprocessed in the event loop: a third of a millisecond,
# less than handing it to a thread and back (anyio's hand-off took half of the server's time per image request)
INLINE_PIXELS, INLINE_BYTES = 128 * 128, 64 * 1024


@dataclass
class Attached:
    image: bytes | None = None
    audio: bytes | None = None
    audio_format: str = "wav"
    image_where: str = ""
    audio_where: str = ""

    def small(self) -> bool:
        """Only a small image: few pixels (from the file's header) in a small file (a file may hold megabytes
        of other chunks before its pixels). Not an image at all: the preprocessor says so as quickly."""
        if self.audio is not None or self.image is None or len(self.image) > INLINE_BYTES:
            return False
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(self.image)) as image:
                    width, height = image.size
        except Image.DecompressionBombError:  # refused in a thread, as any large image
            return False
        except (OSError, ValueError):
            return True
        return width * height <= INLINE_PIXELS


async def preprocess(served: Served, attached: Attached) -> Media | None:
    """The image and the clip preprocessed by the model's own preprocessors (``Served.prepare``), each refusal
    a 400 naming its part; a small image in the event loop, the rest in a thread."""
    media = None
    for image, audio, where in ((attached.image, None, attached.image_where),
                                (None, attached.audio, attached.audio_where)):
        if image is None and audio is None:
            continue
        try:
            if image is not None and attached.small():
                part = served.prepare(image)
            else:
                part = await run_in_threadpool(served.prepare, image, audio, attached.audio_format)
        except UserError as exc:
            raise APIError(400, f"{where}: {exc}", where) from None
        if media is None:
            media = part
        else:
            media.features, media.audio_mask = part.features, part.audio_mask
    return media


def _decoded(data: str, where: str, limit: int) -> bytes:
    if len(data) * 3 // 4 > limit + 3:  # refused before decoding it
        raise APIError(400, f"{where} is {size(len(data) * 3 // 4)}, over the limit of {size(limit)} "
                            "per image or clip (--max-media-mb)", where)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{where} is not valid base64", where) from None
    if not raw:
        raise APIError(400, f"{where} is empty", where)
    if len(raw) > limit:
        raise APIError(400, f"{where} is {size(len(raw))}, over the limit of {size(limit)} per image or "
                            "clip (--max-media-mb)", where)
    return raw


async def _image(url: str, where: str, limit: int, allow_urls: bool) -> bytes:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        if not header.endswith(";base64") or not header[5:].startswith("image/"):
            raise APIError(400, f"{where}: a data URL must be data:image/<type>;base64,<data>, got {header[:40]!r}",
                           where)
        return _decoded(data, where, limit)
    if url.startswith(("http://", "https://")):
        if not allow_urls:
            raise APIError(400, f"{where}: remote image URLs are refused (this server fetches nothing unless "
                                "started with --allow-image-urls); send the image as a data: URL", where)
        return await _fetch(url, where, limit)
    raise APIError(400, f"{where}: expected a data: or http(s) URL, got {url[:40]!r}", where)


async def _fetch(url: str, where: str, limit: int) -> bytes:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10, follow_redirects=True) as client:
            async with client.stream("GET", url) as answer:
                if answer.status_code != 200:
                    raise APIError(400, f"{where}: fetching {url} answered {answer.status_code}", where)
                raw = b""
                async for piece in answer.aiter_bytes():
                    raw += piece
                    if len(raw) > limit:
                        raise APIError(400, f"{where}: {url} is over the limit of {size(limit)} per image "
                                            "(--max-media-mb)", where)
                return raw
    except httpx.HTTPError as exc:
        raise APIError(400, f"{where}: {url} could not be fetched ({type(exc).__name__}: {exc})", where) from None


async def collect(messages: list[Message], limit: int, allow_urls: bool) -> tuple[list[dict[str, Any]], Attached]:
    """The messages as the chat template sees them (role and text) and the one image and clip they attach."""
    plain, attached = [], Attached()
    for m, message in enumerate(messages):
        texts = []
        for p, part in enumerate(message.content if isinstance(message.content, list) else []):
            where = f"messages[{m}].content[{p}]"
            if isinstance(part, ImagePart):
                if attached.image is not None:
                    raise APIError(400, f"{where}: a second image; the model reads one image per request", where)
                attached.image = await _image(part.image_url.url, f"{where}.image_url.url", limit, allow_urls)
                attached.image_where = where
            elif isinstance(part, AudioPart):
                if attached.audio is not None:
                    raise APIError(400, f"{where}: a second clip; the model reads one clip per request", where)
                attached.audio = _decoded(part.input_audio.data, f"{where}.input_audio.data", limit)
                attached.audio_format = part.input_audio.format
                attached.audio_where = where
            else:
                texts.append(part.text)
        content = message.content if isinstance(message.content, str) else "".join(texts)
        plain.append({"role": message.role, "content": content, **({"name": message.name} if message.name else {})})
    return plain, attached


def check_takes(attached: Attached, takes_image: bool, takes_audio: bool, model: str) -> None:
    """An image or a clip the model cannot read is refused, naming the part."""
    if attached.image is not None and not takes_image:
        raise APIError(400, f"{attached.image_where}: the model {model!r} takes no images", attached.image_where)
    if attached.audio is not None and not takes_audio:
        raise APIError(400, f"{attached.audio_where}: the model {model!r} takes no audio", attached.audio_where)
