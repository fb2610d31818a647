"""Which images the server preprocesses in its event loop: small ones, whose preprocessing costs less than
handing them to a thread and back; a large one goes to a thread, so that it never holds up other requests."""

from __future__ import annotations

from apt_plugin_serve.media import INLINE_PIXELS, Attached
from conftest import png


def test_small_images_are_preprocessed_in_the_event_loop_and_large_ones_in_a_thread():
    assert Attached(image=png("red")).small()  # 8 x 8
    assert Attached(image=png("red", size=128)).small() and 128 * 128 == INLINE_PIXELS
    assert not Attached(image=png("red", size=129)).small()
    # the size is read from the file's header: a large image that compresses to almost nothing is large
    assert len(png("red", size=4000)) < 100_000 and not Attached(image=png("red", size=4000)).small()
    assert Attached(image=b"not an image at all").small()  # refused by the preprocessor at once
    assert not Attached(image=png("red"), audio=b"RIFF....WAVE").small()  # a clip is decoded in a thread
    assert not Attached().small()
