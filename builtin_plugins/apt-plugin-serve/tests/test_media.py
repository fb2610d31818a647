"""Which images the server preprocesses in its event loop: small ones, whose preprocessing costs less than
handing them to a thread and back; a large one goes to a thread, so that it never holds up other requests."""

from __future__ import annotations

import struct
import zlib

from apt_plugin_serve.media import INLINE_BYTES, INLINE_PIXELS, Attached
from conftest import png


def png_header(width: int, height: int) -> bytes:
    """A PNG file that says it is ``width`` x ``height`` and holds almost no pixels: what Pillow reads to learn
    an image's size (its header chunk), then one small data chunk and the end."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    header = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(
        b"IEND", b"")


def test_small_images_are_preprocessed_in_the_event_loop_and_large_ones_in_a_thread():
    assert Attached(image=png("red")).small()  # 8 x 8
    assert Attached(image=png("red", size=128)).small() and 128 * 128 == INLINE_PIXELS
    assert not Attached(image=png("red", size=129)).small()
    # the size is read from the file's header: a large image that compresses to almost nothing is large
    assert len(png("red", size=4000)) < 100_000 and not Attached(image=png("red", size=4000)).small()
    assert Attached(image=b"not an image at all").small()  # refused by the preprocessor at once
    assert not Attached(image=png("red"), audio=b"RIFF....WAVE").small()  # a clip is decoded in a thread
    assert not Attached().small()
    # over Pillow's limit (a decompression bomb, by its header): not an error here, refused in the thread
    assert not Attached(image=png_header(20_000, 20_000)).small()
    # few pixels in a large file (a file may carry megabytes of other chunks before its pixels)
    assert not Attached(image=png("red") + b"\0" * INLINE_BYTES).small()
