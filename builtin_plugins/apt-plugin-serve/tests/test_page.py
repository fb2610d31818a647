"""The chat page in a real headless Chromium (Debian's chromium and chromedriver, driven by selenium): a
question with an image attached is answered, streamed, as the API answers it; a text question too; what the
model writes is shown as text, never run. A screenshot is saved in the test's folder."""

from __future__ import annotations

import pytest

from apt_sdk.testing import CHROMIUM, headless_chromium, screenshot
from conftest import DIGIT_PROMPT, png

pytestmark = pytest.mark.skipif(not all(CHROMIUM),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


def test_the_chat_page_answers_in_chromium(multimodal_server, multimodal_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    (tmp_path / "green.png").write_bytes(png("green"))
    with headless_chromium(tmp_path / "chrome-profile", "1000,800") as browser:
        browser.get(multimodal_server.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "multimodal-apt" in b.find_element(By.ID, "model").text)
        assert browser.find_element(By.ID, "attach").is_displayed()  # the model takes images and audio

        def ask(text: str, attachment=None) -> str:
            answers = len(browser.find_elements(By.CSS_SELECTOR, ".assistant[data-done]"))
            browser.find_element(By.ID, "prompt").send_keys(text)
            if attachment is not None:
                browser.find_element(By.ID, "attach").send_keys(str(attachment))
            temperature = browser.find_element(By.ID, "temperature")
            temperature.clear()
            temperature.send_keys("0")
            browser.find_element(By.ID, "send").click()
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".assistant[data-done]")) > answers)
            answer = browser.find_elements(By.CSS_SELECTOR, ".assistant[data-done]")[-1]
            assert answer.get_attribute("data-done") in ("stop", "length"), browser.find_element(By.ID, "error").text
            return answer.text

        assert ask(DIGIT_PROMPT, tmp_path / "green.png") == "three"
        assert browser.find_elements(By.CSS_SELECTOR, ".user")[-1].get_attribute("data-attached") == "green.png"
        shot = screenshot(browser, tmp_path / "serve-chat.png")  # .ci/run keeps it among its artifacts
        assert shot.stat().st_size > 5_000
        # a follow-up without an image: the default template joins the conversation's text
        expected = multimodal_model.generate_from_multimodal(DIGIT_PROMPT + "three" + "<b>x</b>", max_length=64 - 28)
        assert ask("<b>x</b>") == expected
        assert browser.find_elements(By.CSS_SELECTOR, ".message b") == []  # shown as text
