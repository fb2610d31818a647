"""The site's pictures come from docs/pictures/make.py, which makes them from real runs: its quick mode
makes every one (real PNGs with something drawn on them), every picture a page shows is one it makes, and
every picture it makes is shown."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from PIL import Image, ImageStat

from apt_sdk.testing import CHROMIUM
from conftest import REPO

PICTURES = REPO / "docs" / "pictures"
SHOWN = re.compile(r"\]\((?:\.\./)*pictures/([\w.-]+\.png)\)")


def shown() -> set[str]:
    return {name for page in (REPO / "docs").rglob("*.md") for name in SHOWN.findall(page.read_text())}


def test_every_picture_shown_is_in_the_repo_and_every_one_in_the_repo_is_shown():
    assert shown() == {p.name for p in PICTURES.glob("*.png")}


@pytest.mark.slow
@pytest.mark.skipif(not all(CHROMIUM), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_the_script_makes_every_picture_from_real_runs(tmp_path):
    done = subprocess.run([sys.executable, str(PICTURES / "make.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    made = {p.name for p in tmp_path.glob("*.png")}
    assert made == shown(), made ^ shown()
    for name in made:
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 200, (name, picture.size)
            spread = ImageStat.Stat(picture.convert("L")).stddev[0]
            assert spread > 5, f"{name} is nearly one colour (stddev {spread:.1f})"
