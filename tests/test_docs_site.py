"""The documentation site: ``mkdocs build --strict`` passes (no broken link, anchor or reference), and
in a real headless Chromium every page renders, no link inside the site is dead, and the search finds
"resume" on the training page."""

from __future__ import annotations

import functools
import html.parser
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urldefrag, urljoin

import pytest

from apt_kernel import hookspecs, protocols
from apt_kernel.callbacks import EVENTS
from apt_kernel.conformance import declared_members
from apt_sdk.testing import CHROMIUM, headless_chromium, screenshot
from conftest import REPO


def build(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    done = build(out)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_site_builds_strictly_with_every_page_in_the_nav(site):
    pages = sorted(p.parent.relative_to(site).as_posix() for p in site.rglob("index.html"))
    assert {".", "training", "reference/contract", "reference/plugins", "reference/sdk"} <= set(pages)
    sources = {p.relative_to(REPO / "docs").with_suffix("").as_posix().removesuffix("/index").replace("index", ".")
               for p in (REPO / "docs").rglob("*.md")}
    assert sources <= set(pages), sources - set(pages)
    contract = (site / "reference" / "contract" / "index.html").read_text()
    # the reference is complete: every hook, every callback event and every protocol has its entry
    hooks = [name for name, f in vars(hookspecs).items() if hasattr(f, "apt_kernel_spec")]
    expected = [f"hookspecs.{h}" for h in hooks] + [f"callbacks.Callback.{e}" for e in EVENTS]
    # every protocol with each member it declares, and nothing else of protocols.py; what a trainer calls of the
    # callback dispatcher (what the builtin consumers use of each: tests/test_contract_coverage.py)
    kinds = [v for v in vars(protocols).values() if isinstance(v, type) and getattr(v, "_is_protocol", False)
             and v.__module__ == protocols.__name__]
    documented = ["protocols.Batch"] + [f"protocols.{p.__name__}{member}" for p in kinds
                                        for member in ("", *(f".{m}" for m in declared_members(p)))]
    expected += documented + [f"callbacks.CallbackDispatcher.{m}" for m in ("call", "state_dicts", "load_state_dicts")]
    missing = [name for name in expected if f'id="apt_kernel.{name}"' not in contract]
    assert len(hooks) >= 11 and len(kinds) >= 8 and missing == []
    assert set(re.findall(r'id="apt_kernel\.(protocols\.[\w.]+)"', contract)) == set(documented)


def test_a_broken_link_fails_the_strict_build(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "training.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md).\n")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "out")],
                          cwd=copy, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode != 0 and "missing.md" in done.stdout + done.stderr


class Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


@pytest.fixture
def served(site):
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def parsed(url: str) -> Links:
    with urllib.request.urlopen(url, timeout=30) as response:
        links = Links()
        links.feed(response.read().decode())
        return links


def test_no_link_inside_the_site_is_dead(site, served):
    pages = [served + p.parent.relative_to(site).as_posix() + "/" for p in site.rglob("index.html")]
    seen: dict[str, Links] = {}
    dead = []
    for page in pages:
        for href in parsed(page).hrefs:
            target, fragment = urldefrag(urljoin(page, href))
            if not target.startswith(served):
                continue
            try:
                links = seen[target] if target in seen else seen.setdefault(target, parsed(target))
            except urllib.error.HTTPError as exc:
                dead.append(f"{page}: {href} ({exc.code})")
                continue
            if fragment and target.endswith("/") and fragment not in links.ids:
                dead.append(f"{page}: {href} (no #{fragment} there)")
    assert len(seen) > 10 and dead == []


@pytest.fixture
def browser(tmp_path):
    with headless_chromium(tmp_path / "chrome-profile") as driver:
        yield driver


@pytest.mark.slow
@pytest.mark.skipif(not all(CHROMIUM), reason="needs Debian's chromium and chromium-driver "
                    "(.ci/run installs them)")
def test_every_page_renders_in_chromium_and_the_search_finds_resume(site, served, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    for page in sorted(site.rglob("index.html")):
        path = page.parent.relative_to(site).as_posix()
        browser.get(served + ("" if path == "." else path + "/"))
        heading = browser.find_element(By.CSS_SELECTOR, "article h1")
        assert heading.text.strip(), path
        assert browser.execute_script("return document.readyState") == "complete"
        assert browser.find_elements(By.CSS_SELECTOR, "nav.md-nav a.md-nav__link"), path
    browser.get(served)
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")  # shown in the header at this width
    box.click()
    box.send_keys("resume", Keys.ENTER)
    def training_found(b):  # the result list is re-rendered as the search worker answers: read it again
        targets = [r.get_attribute("href") for r in b.find_elements(By.CSS_SELECTOR, "li.md-search-result__item a")]
        return any("/training/" in t for t in targets)

    WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(training_found)
    shot = screenshot(browser, tmp_path / "docs-search.png")  # .ci/run keeps it among its artifacts
    assert shot.stat().st_size > 10_000
