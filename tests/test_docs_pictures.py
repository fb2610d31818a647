"""The site's pictures come from docs/pictures/make.py, which makes them from real runs (.ci/run runs its
quick mode after the tests, and the script checks what it made): every picture a page shows is in the
repo, every one in the repo is shown, and the script's check finds a missing or blank picture."""

from __future__ import annotations

import importlib.util

from PIL import Image

from conftest import REPO

PICTURES = REPO / "docs" / "pictures"
spec = importlib.util.spec_from_file_location("make_pictures", PICTURES / "make.py")
make = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make)


def shown() -> set[str]:
    return {name for page in (REPO / "docs").rglob("*.md") for name in make.SHOWN.findall(page.read_text())}


def test_every_picture_shown_is_in_the_repo_and_every_one_in_the_repo_is_shown():
    assert shown() == {p.name for p in PICTURES.glob("*.png")}
    assert make.check(PICTURES) == 0


def test_the_scripts_check_finds_a_missing_and_a_blank_picture(tmp_path, capsys):
    for name in sorted(shown())[1:]:
        Image.effect_noise((300, 300), 60).save(tmp_path / name)
    Image.new("RGB", (300, 300), "white").save(tmp_path / sorted(shown())[1])
    assert make.check(tmp_path) == 1
    printed = capsys.readouterr().out
    assert f"{sorted(shown())[0]}: not made" in printed and "brightness stddev 0.0" in printed
