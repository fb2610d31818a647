"""Every command and Python snippet on the site is run by a test, or says on the page that it is only an
illustration (a block titled "Illustration: <why>", which Material shows above the block). The tests that
run blocks as written: tests/test_docs_tutorials.py (every bash and python block of docs/tutorials/),
tests/test_docs_marketplace.py (every bash block of marketplace.md), tests/test_docs_huggingface.py (every bash
and python block of huggingface.md) and tests/test_docs_examples.py (every block of writing-plugins.md titled with a
file's path)."""

from __future__ import annotations

import re

from test_docs_tutorials import FENCE

from conftest import REPO

DOCS = REPO / "docs"
TITLE = re.compile(r'title="([^"]+)"')
def unaccounted(page: str, text: str) -> list[str]:
    """The runnable blocks of a page that neither a test runs nor say they are an illustration."""
    left = []
    for language, info, body in FENCE.findall(text):
        if language not in ("bash", "python"):
            continue
        title = TITLE.search(info)
        if title and title.group(1).startswith("Illustration: ") and len(title.group(1)) > 20:
            continue
        if page.startswith(("tutorials/", "huggingface.md")) or (page == "marketplace.md" and language == "bash"):
            continue
        if page == "writing-plugins.md" and title and not title.group(1).startswith("Illustration"):
            continue  # a file of the examples
        left.append(f"{page}: {body.splitlines()[0] if body else '(empty)'}")
    return left


def test_every_runnable_block_is_run_by_a_test_or_titled_as_an_illustration():
    left = [line for page in sorted(DOCS.rglob("*.md"))
            for line in unaccounted(page.relative_to(DOCS).as_posix(), page.read_text())]
    assert not left, "\n".join(left)


def test_the_check_finds_an_untitled_snippet_and_a_title_without_a_reason():
    assert unaccounted("training.md", "```bash\napt-kernel run x.toml\n```\n") == ["training.md: apt-kernel run x.toml"]
    assert unaccounted("training.md", '```python title="Illustration: "\nimport torch\n```\n')
    assert not unaccounted("training.md", '```bash title="Illustration: needs a CUDA GPU"\nnvidia-smi\n```\n')
    assert not unaccounted("tutorials/a.md", "```bash\napt-kernel run x.toml\n```\n")
