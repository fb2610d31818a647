"""The plugin directory page in a real headless Chromium (Debian's chromium and chromedriver, driven by
selenium): search, kinds, versions, average ratings and the install command render; a description or
summary holding ``<script>`` is shown as text and never runs. A screenshot is saved in the test's folder."""

from __future__ import annotations

import pytest

from apt_plugin_marketplace.client import PluginMarketplace
from apt_sdk.testing import CHROMIUM, headless_chromium, screenshot
from conftest import raw_upload_wheel

pytestmark = pytest.mark.skipif(not all(CHROMIUM),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")

SCRIPT = "<script>document.title='pwned'</script>"


@pytest.fixture
def browser(tmp_path):
    with headless_chromium(tmp_path / "chrome-profile", "1200,900") as driver:
        yield driver


def test_the_directory_page_in_chromium(server, wheels, browser, tmp_path):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = PluginMarketplace(server.url, server.user("alice"))
    client.publish_plugin(wheels("apt-plugin-hello", "1.0.0", description="Says hello"))
    client.publish_plugin(wheels("apt-plugin-hello", "1.1.0", description="Says hello"))
    client.publish_plugin(wheels("apt-plugin-gpt", "0.3.0", description="A GPT model",
                                 manifest='kernel_api = "^1.0"\n[provides.model.gpt]\nsummary = "gpt"\n'))
    raw_upload_wheel(client, "apt_plugin_xss", "1.0", summary=SCRIPT)
    client.rate_plugin("apt-plugin-hello", 5)
    PluginMarketplace(server.url, server.user("bob")).rate_plugin("apt-plugin-hello", 4)

    browser.get(server.url)
    rows = {r.get_attribute("data-name"): r for r in browser.find_elements(By.CSS_SELECTOR, "tr.plugin")}
    assert sorted(rows) == ["apt-plugin-gpt", "apt-plugin-hello", "apt-plugin-xss"]
    hello = rows["apt-plugin-hello"]
    assert hello.find_element(By.CLASS_NAME, "versions").text == "1.0.0, 1.1.0"
    assert hello.find_element(By.CLASS_NAME, "rating").text == "4.5 / 5 (2)"
    assert hello.find_element(By.CLASS_NAME, "install").text == \
        f"pip install --index-url {server.url}simple/ apt-plugin-hello"
    assert "callback" in hello.text and "model" in rows["apt-plugin-gpt"].text
    # the <script> is text on the page, and it did not run
    assert rows["apt-plugin-xss"].find_element(By.CLASS_NAME, "summary").text == SCRIPT
    assert browser.title == "APT Kernel plugins"
    assert browser.find_elements(By.CSS_SELECTOR, "tr.plugin script") == []
    shot = screenshot(browser, tmp_path / "marketplace.png")  # .ci/run keeps it among its artifacts
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    box = browser.find_element(By.ID, "q")
    box.send_keys("gpt")
    browser.execute_script("window.aptOldPage = true")
    browser.find_element(By.ID, "search").click()
    # click() returns before the form's navigation ends: read rows only once a new document has loaded
    # (a global set on the old one is gone); mid-navigation the driver may raise, so those are retried
    WebDriverWait(browser, 30, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script("return !window.aptOldPage && document.readyState === 'complete'"))
    assert [r.get_attribute("data-name") for r in browser.find_elements(By.CSS_SELECTOR, "tr.plugin")] == \
        ["apt-plugin-gpt"]
    assert browser.find_element(By.ID, "count").text == "1 plugin"
    browser.get(server.url + "?kind=callback")
    assert [r.get_attribute("data-name") for r in browser.find_elements(By.CSS_SELECTOR, "tr.plugin")] == \
        ["apt-plugin-hello"]
