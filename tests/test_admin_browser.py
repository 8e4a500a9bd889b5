"""The status page in a real headless Chromium (Debian's), driven by Selenium.

Under CI=true a missing Chromium or chromedriver fails the test; elsewhere it is skipped
with the reason. A screenshot of each page is kept under the test's tmp folder and in
``test-artifacts/`` at the top of the repository.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from aljex_sync.store.schema import events, files

from .admin_support import (
    ADMIN_AUTH,
    a_day,
    admin_settings,
    count_events,
    count_files,
    count_rows,
    scalar,
)
from .support import RunningService

CHROMIUM = os.environ.get("ALJEX_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ALJEX_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser test must run; .ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Chromium, headless, with a fresh profile and nothing that calls home."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            _missing(f"{path} is missing (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,2400",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    # A click starts a navigation and returns: wait for the next page's elements.
    driver.implicitly_wait(10)
    try:
        yield driver
    finally:
        driver.quit()


def authorize(driver: Any, user: str, password: str) -> None:
    """Send HTTP Basic credentials with every request of this browser, form posts included."""
    import base64

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "no screenshot"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text).strip()


def number(driver: Any, css: str) -> int:
    return int(text_of(driver, css).replace(",", ""))


def test_status_page_in_a_browser_shows_the_database_and_replays_held_records(
    browser, sqlite_url, tmp_path
):
    from selenium.webdriver.common.by import By

    # A day of both feeds, with an invoicing record held for want of its key...
    with RunningService(admin_settings(sqlite_url, tmp_path)) as running:
        a_day(running, tmp_path)
    # ...which the configuration then fixes.
    fixed = admin_settings(sqlite_url, tmp_path, tables={"invoicing": {"key": ["id"]}})
    with RunningService(fixed) as running:
        engine = running.engine()
        base = f"http://127.0.0.1:{running.service.http_port}"
        authorize(browser, *ADMIN_AUTH)
        browser.get(base + "/admin/")
        screenshot(browser, tmp_path, "admin-status.png")

        assert number(browser, 'tr[data-table="employees"] td.rows') == count_rows(
            engine, "employees"
        )
        assert number(browser, 'tr[data-table="customers"] td.rows') == count_rows(
            engine, "customers"
        )
        held = count_events(engine, events.c.status == "held")
        assert number(browser, "#held-total") == held == 1
        assert number(browser, 'tr[data-table="invoicing"] td.held .count') == 1
        journal = count_events(engine)
        assert number(browser, 'div[data-feed="live"] .last-hour') == journal
        assert number(browser, 'div[data-feed="live"] .last-day') == journal
        assert number(browser, 'div[data-feed="morning"] .last-day') == count_files(engine)
        for status in ("loaded", "failed"):
            assert number(browser, f'span[data-file-count="{status}"]') == count_files(
                engine, files.c.status == status
            )
        shown = browser.find_elements(By.CSS_SELECTOR, "#events tr[data-event]")
        assert len(shown) == journal
        newest = scalar(engine, select(func.max(events.c.id)))
        assert shown[0].get_attribute("data-event") == str(newest)
        bars = browser.find_elements(By.CSS_SELECTOR, 'div[data-feed="live"] svg rect')
        assert len(bars) == 48

        # The raw body of the hostile update, shown as text.
        update = scalar(engine, select(events.c.id).where(events.c.action == "update"))
        browser.find_element(By.CSS_SELECTOR, f'a[href="/admin/events/{update}"]').click()
        assert "%3Cscript%3E" in text_of(browser, "pre#body")
        assert (
            "<script>alert('x')</script>&amp;"
            in browser.find_element(By.CSS_SELECTOR, "section:last-of-type table").text
        )
        screenshot(browser, tmp_path, "admin-event.png")

        browser.get(base + "/admin/")
        browser.find_element(By.CSS_SELECTOR, "#summary form button").click()
        assert "Replayed 1" in text_of(browser, "#outcome")
        assert number(browser, 'span[data-replayed="applied"]') == 1
        screenshot(browser, tmp_path, "admin-replay.png")
        assert count_rows(engine, "invoicing") == 1
        assert count_events(engine, events.c.status == "held") == 0

        browser.find_element(By.LINK_TEXT, "Back to the status page").click()
        assert number(browser, "#held-total") == 0
        assert number(browser, 'tr[data-table="invoicing"] td.rows') == 1
        engine.dispose()
