"""The search page in a real browser: headless Chromium driven through chromedriver.

Skips (with the reason) where Chromium, chromedriver or selenium is missing, unless
ATJAX_REQUIRE_BROWSER=1 (set by .ci/run): then a missing browser is an error, so CI cannot
pass without this test. Install: apt-get install -y chromium chromium-driver && pip install
selenium.
"""

from __future__ import annotations

import os
import shutil

import pytest

from conftest_search import search_kit, search_server  # noqa: F401

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
_MISSING = ("headless browser test needs Chromium and chromedriver "
            "(apt-get install -y chromium chromium-driver)")
REQUIRED = os.environ.get("ATJAX_REQUIRE_BROWSER") == "1"
if REQUIRED and (CHROMIUM is None or CHROMEDRIVER is None):
    raise RuntimeError(f"ATJAX_REQUIRE_BROWSER=1 but {_MISSING}")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason=_MISSING)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if REQUIRED:
        from selenium import webdriver
    else:
        webdriver = pytest.importorskip(
            "selenium.webdriver", reason="browser test needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--mute-audio",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def _results(driver):
    return driver.execute_script("""
        return [...document.querySelectorAll('#results li')].map(li => ({
          path: li.querySelector('.path').textContent,
          time: li.querySelector('.time').textContent,
          score: Number(li.querySelector('.score').textContent)}));""")


def _player_start(driver):
    """(src, currentTime) once the player has loaded the clip's metadata."""
    _wait(driver, lambda d: d.execute_script("return document.getElementById('player')"
                                             ".readyState >= 1"))
    return driver.execute_script(
        "const p = document.getElementById('player'); return [p.src, p.currentTime];")


def test_typed_query_ranks_files_and_cues_the_player(browser, search_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    httpd, _, searcher = search_server
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    browser.get(base + "/")
    _wait(browser, lambda d: "6 files" in d.find_element(By.ID, "info").text)
    box = browser.find_element(By.ID, "q")
    box.send_keys("a siren wails", Keys.ENTER)
    _wait(browser, lambda d: len(_results(d)) == 6)
    results = _results(browser)
    assert results[0] == {"path": "long.wav", "time": "0:10.0",
                          "score": pytest.approx(searcher.search("a siren wails", 1)[0].score,
                                                 abs=1e-3)}
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    src, current = _player_start(browser)
    long_id = searcher.search("siren", 1)[0].file_id
    assert src == f"{base}/audio/{long_id}#t=10"
    assert current == pytest.approx(10.0, abs=0.05)  # the matched moment, not 0:00
    assert "q=a%20siren%20wails" in browser.current_url

    # Play another hit: the player follows it to its own moment.
    browser.find_elements(By.CSS_SELECTOR, "#results li .play")[0].click()
    assert browser.find_element(By.ID, "now-playing").text == "long.wav from 0:10.0"


def test_file_names_are_shown_as_text_not_html(browser, search_server):
    from selenium.webdriver.common.by import By

    httpd, _, _ = search_server
    browser.get(f"http://127.0.0.1:{httpd.server_address[1]}/?q=bell&k=5")
    _wait(browser, lambda d: len(_results(d)) == 5)
    assert _results(browser)[0]["path"] == "<img src=x onerror=alert(1)> & bell.wav"
    assert browser.find_elements(By.CSS_SELECTOR, "#results img") == []
    src, current = _player_start(browser)
    assert src.endswith("#t=0") and current == pytest.approx(0.0, abs=0.05)


def test_refusals_are_shown(browser, search_server):
    from selenium.webdriver.common.by import By

    httpd, _, _ = search_server
    browser.get(f"http://127.0.0.1:{httpd.server_address[1]}/?q={'a' * 600}")
    _wait(browser, lambda d: "longer than 500" in d.find_element(By.ID, "status").text)
    assert _results(browser) == []
