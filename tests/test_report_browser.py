"""The generated site in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`) through
Selenium. Skipped, with the reason, where either is missing; `.ci/run` installs them."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from site_results import build_results, registry

from harness.report import write_reports

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no headless Chromium: apt-get install chromium chromium-driver (Debian packages)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(DRIVER))


@pytest.fixture(scope="module")
def browser_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    build_results(tmp / "results")
    write_reports(tmp / "results", tmp / "reports", registry=registry())
    driver = _browser()
    try:
        yield driver, tmp / "reports" / "site"
    finally:
        driver.quit()


def _errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _rsums(driver) -> list[float]:
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr:not([hidden]) td:nth-child(5)")
    return [float(c.get_attribute("data-value")) for c in cells]


def test_pages_load_without_console_errors_and_every_link_resolves(browser_site):
    from selenium.webdriver.common.by import By

    driver, site = browser_site
    for page in sorted(site.glob("*.html")):
        driver.get(page.as_uri())
        assert driver.find_element(By.TAG_NAME, "h1").text
        assert _errors(driver) == [], page.name
        # the registry's <script> label stayed text (a script that ran would have raised an alert here)
        assert driver.execute_script("return document.querySelectorAll('script').length") == 1
        targets = [e.get_attribute("href") for e in driver.find_elements(By.CSS_SELECTOR, "a[href]")]
        targets += [e.get_attribute("src") for e in driver.find_elements(By.CSS_SELECTOR, "img[src], script[src]")]
        assert targets
        for url in targets:
            parsed = urlparse(url)
            assert parsed.scheme == "file", f"{page.name}: {url} leaves the site"
            assert Path(unquote(parsed.path)).is_file(), f"{page.name}: {url} does not resolve"
        images = driver.find_elements(By.CSS_SELECTOR, "img")
        assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)


def test_sorting_by_rsum_reorders_rows_and_a_filter_hides_rows(browser_site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, site = browser_site
    driver.get((site / "index.html").as_uri())
    before = _rsums(driver)
    assert len(before) == 3 and before != sorted(before, reverse=True)  # registry order is not rsum order
    header = driver.find_element(By.XPATH, "//table[@id='leaderboard']//th[normalize-space()='rsum']")
    header.click()
    assert _rsums(driver) == sorted(before, reverse=True) and header.get_attribute("aria-sort") == "descending"
    header.click()
    assert _rsums(driver) == sorted(before)
    Select(driver.find_element(By.CSS_SELECTOR, "div.filters select[data-filter='source']")).select_by_value(
        "retrained")
    rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
    shown = [r for r in rows if r.is_displayed()]
    assert len(rows) == 3 and len(shown) == 1 and "alpha/b" in shown[0].text
    text = driver.find_element(By.CSS_SELECTOR, "div.filters input[type='search']")
    Select(driver.find_element(By.CSS_SELECTOR, "div.filters select[data-filter='source']")).select_by_value("")
    text.send_keys("beta")
    assert [r.text.split("\n")[0] for r in rows if r.is_displayed()] == [
        next(r.text.split("\n")[0] for r in rows if "beta/x" in r.text)]
    assert _errors(driver) == []


def test_a_screenshot_is_not_blank(browser_site):
    from PIL import Image

    driver, site = browser_site
    driver.get((site / "paper-alpha.html").as_uri())
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    colors = shot.getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 20  # text, badges, whiskers: many colours, not one blank fill
