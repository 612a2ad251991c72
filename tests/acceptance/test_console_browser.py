"""The console in a real browser: headless Chromium (Debian's chromium and
chromium-driver, which .ci/run installs) driven by Selenium, against the
loan app served over HTTP with a worker thread.

It clicks through what an operator does: find a loan stuck on a document,
read why, send the document from the console and watch the page move on
(htmx refreshes it); retry a dead letter once its cause is fixed.

With FLOWS_CONSOLE_SCREENSHOTS=DIR it also saves the PNGs docs/console.md
shows (``FLOWS_CONSOLE_SCREENSHOTS=docs ./dev test tests/acceptance/test_console_browser.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from werkzeug.serving import make_server

from flows import Worker
from tests import console_app
from tests.acceptance.loan_stack import free_port
from tests.webapp_support import make_app, wait_for
from webapp import loans
from webapp.extension import client as flows_client

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")
SHOTS = os.environ.get("FLOWS_CONSOLE_SCREENSHOTS")

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    if os.environ.get("CI"):
        raise RuntimeError("CI runs the browser tests: .ci/run installs chromium and chromium-driver with apt")
    pytest.skip("no /usr/bin/chromium or /usr/bin/chromedriver (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="flows-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def site(db_url: str, start_worker: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The loan app on a real HTTP port, and a worker for loans and the console tests' workflows."""
    monkeypatch.setenv("FLOWS_COMPLIANCE_SLEEP", "0.1")
    for key in console_app.SWITCH:
        monkeypatch.setitem(console_app.SWITCH, key, False)
    start_worker([loans.loan_application_workflow, *console_app.WORKFLOWS], [*loans.ACTIVITIES,
                                                                             *console_app.ACTIVITIES])
    app = make_app(db_url)
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    flows_client.close(app)


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def shot(driver: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(2400, max(900, int(height) + 100)))  # the whole page
        driver.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))
        driver.set_window_size(1400, 1000)


def text_of(driver: Any, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def wait_until(driver: Any, seconds: float, check: Callable[[Any], Any]) -> Any:
    """Wait for ``check``; htmx swaps the live part of the page every 2 s, so
    an element found just before a swap may be gone when it is read."""
    return WebDriverWait(driver, seconds, ignored_exceptions=(NoSuchElementException,
                                                              StaleElementReferenceException)).until(check)


def test_find_a_loan_stuck_on_a_document_send_it_and_watch_it_move_on(site: str, browser: Any) -> None:
    wid = post_json(f"{site}/api/loans", {"applicant_name": "Jane Smith", "amount": 75_000,
                                          "purpose": "home renovation"})["workflow_id"]
    other = post_json(f"{site}/api/loans", {"applicant_name": "Jane Smith", "amount": 20_000, "purpose": "car"})
    status_url = f"{site}/api/loans/loan-application/{wid}"
    wait_for(lambda: json.loads(urllib.request.urlopen(status_url, timeout=10).read())["WaitingFor"]
             == "signal:document-identity", 15, "the loan to wait for its identity document")

    browser.get(f"{site}/console/")
    browser.find_element(By.NAME, "waiting_for").send_keys("signal:document-identity")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_until(browser, 10, lambda d: "waiting_for=signal" in d.current_url)
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#workflows a.mono")]
    assert wid in links and other["workflow_id"] in links
    shot(browser, "workflows")
    browser.find_element(By.LINK_TEXT, wid).click()

    wait_until(browser, 10, lambda d: wid in d.title or wid[-12:] in d.title)
    sentence = wait_until(browser, 5, lambda d: text_of(d, "#why"))
    assert sentence.startswith("waiting for signal document-identity since") and sentence.endswith("; none pending")
    assert browser.find_element(By.NAME, "signal").get_attribute("value") == "document-identity"
    shot(browser, "workflow-waiting")

    browser.find_element(By.NAME, "payload").send_keys(
        '{"document_type": "identity", "document_id": "ID-2024-77", "uploaded_at": "2024-05-01T10:00:00Z"}')
    browser.find_element(By.CSS_SELECTOR, "#signal-form button[type=submit]").click()
    wait_until(browser, 10, lambda d: "Signal document-identity sent" in text_of(d, ".flash"))
    # The page refreshes itself (htmx, every 2 s) as the workflow moves on.
    wait_until(browser, 15, lambda d: "document-income" in text_of(d, "#why"))
    wait_until(browser, 5, lambda d: "verify-document" in text_of(d, "#activities"))
    wait_until(browser, 5, lambda d: "document-identity" in text_of(d, "#signals"))
    shot(browser, "workflow-moved-on")


def test_retry_a_dead_letter_from_the_console(site: str, browser: Any, engine: Any) -> None:
    run = engine.start(console_app.fragile_workflow, "payment")
    wait_for(lambda: engine.query("c-fragile", run.workflow_id).status == "failed", 15, "the workflow to fail")

    browser.get(f"{site}/console/dead-letters")
    row = browser.find_element(By.XPATH, f"//tr[.//a[text()='{run.workflow_id}']]")
    assert "ActivityFailed: activity c-fragile failed after 2 attempt(s)" in row.text
    shot(browser, "dead-letters")
    console_app.SWITCH["healthy"] = True  # the payment service is back
    row.find_element(By.CSS_SELECTOR, "button.retry").click()
    wait_until(browser, 10, lambda d: "Retried" in text_of(d, ".flash"))
    assert str(run.workflow_id) not in text_of(browser, "#dead-letters")

    browser.get(f"{site}/console/workflows/c-fragile/{run.workflow_id}")
    wait_until(browser, 15, lambda d: text_of(d, "#status") == "completed")
    wait_until(browser, 5, lambda d: "payment ok" in text_of(d, "#output"))

    browser.get(f"{site}/console/fleet")
    wait_until(browser, 10, lambda d: d.find_elements(By.CSS_SELECTOR, "#rates canvas"))
    wait_until(browser, 5, lambda d: "alive" in text_of(d, "#workers"))
    shot(browser, "fleet")
