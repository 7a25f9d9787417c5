"""The dashboard in a real browser: Debian's headless Chromium driven by selenium
through /usr/bin/chromedriver, against a real daemon and a real relay.

MAILMAND_WEB_SCREENSHOT=docs/web-overview.png makes the traffic test save the
overview there (after some minutes of traffic, so that the charts have bars):
`MAILMAND_WEB_SCREENSHOT=docs/web-overview.png pytest tests/test_dashboard.py -k traffic`.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, require_services
from tests.daemonproc import wait_until
from tests.webutil import TOKEN

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = os.environ.get("MAILMAND_WEB_SCREENSHOT")
HOSTILE = "<script>alert('subject')</script><img src=x onerror=\"alert('img')\">&amp; \u00e9"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMEDRIVER.exists() or not CHROMIUM.exists():
        reason = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if require_services():
            pytest.fail(f"{reason}; MAILMAND_TEST_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400", "--no-first-run", "--disable-extensions", "--disable-sync",
                "--disable-background-networking"):
        options.add_argument(arg)
    # The driver given: selenium's manager downloads nothing.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def by_css(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def all_css(driver, css: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def log_in(driver, daemon, path: str = "/") -> None:
    driver.get(daemon.base + path)
    assert "/login" in driver.current_url
    by_css(driver, "#token").send_keys(daemon.token)
    by_css(driver, "form.login button").click()
    assert wait_until(lambda: "/login" not in driver.current_url, timeout=10)


def enqueue(daemon, to: str, subject: str = "hello", **extra: Any) -> str:
    with daemon.http() as http:
        r = http.post("/api/v1/messages", json={"from": "app@example.com", "to": to, "subject": subject,
                                                "text": "hi", **extra})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


def status_of(daemon, message_id: str) -> str:
    with daemon.http() as http:
        return str(http.get(f"/api/v1/messages/{message_id}").json()["status"])


def no_alert(driver) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert  # noqa: B018 (the lookup is the check)
    except NoAlertPresentException:
        return True
    return False


def test_a_failed_message_is_found_retried_and_seen_delivered(web_daemon, smtp_server, browser):
    relay = smtp_server(rcpt_replies={"bob@example.com": "550 5.1.1 no such user"})
    daemon = web_daemon(relay_port=relay.port)
    good = enqueue(daemon, "alice@example.com", "for alice")
    bad = enqueue(daemon, "bob@example.com", "for bob")
    assert wait_until(lambda: status_of(daemon, bad) == "failed" and status_of(daemon, good) == "sent"), \
        daemon.proc.log

    log_in(browser, daemon)
    # The overview counts them.
    assert by_css(browser, '#counts [data-status="failed"] .n').text == "1"
    assert by_css(browser, '#counts [data-status="sent"] .n').text == "1"
    relays = by_css(browser, "#relays").text
    assert f"127.0.0.1:{relay.port}" in relays and "up since" in relays  # as the daemon's heartbeat reports it
    assert "serving this page" in by_css(browser, "#daemons").text

    # Messages, filtered to the failed ones: bob's alone.
    by_css(browser, 'nav a[href="/messages"]').click()
    from selenium.webdriver.support.ui import Select

    Select(by_css(browser, 'select[name="status"]')).select_by_value("failed")
    by_css(browser, ".filters button").click()
    assert wait_until(lambda: browser.current_url.endswith("/messages?status=failed"), timeout=10)
    rows = all_css(browser, "#messages tbody tr[data-id]")
    assert [r.get_attribute("data-id") for r in rows] == [bad]
    rows[0].find_element("link text", "for bob").click()

    # The message: the relay's refusal, word for word, in its attempts and events.
    assert wait_until(lambda: browser.current_url.endswith(f"/messages/{bad}"), timeout=10)
    assert by_css(browser, "#status").text == "failed"
    assert "550 5.1.1 no such user" in by_css(browser, "#explain").text  # `mailmand explain`'s paragraph
    assert "550 5.1.1 no such user" in by_css(browser, "#attempts").text
    assert "failed" in by_css(browser, "#events").text
    assert "bob@example.com" in by_css(browser, "#headers").text

    relay.rcpt_replies.clear()  # the relay now takes it
    by_css(browser, "#action-retry").click()
    assert "Retry this message?" in by_css(browser, "h1").text
    assert status_of(daemon, bad) == "failed"  # nothing happens before the confirmation
    by_css(browser, "#confirm").click()
    assert wait_until(lambda: "Done: retry." in browser.page_source, timeout=10)

    def delivered() -> bool:
        browser.refresh()
        return by_css(browser, "#status").text == "sent"

    assert wait_until(delivered, timeout=30, interval=0.5), daemon.proc.log
    assert by_css(browser, "#explain").text.startswith("sent")
    attempts = by_css(browser, "#attempts").text
    assert "550 5.1.1 no such user" in attempts and "250" in attempts
    assert sum(1 for m in relay.messages if "bob@example.com" in m.rcpt_tos) == 1


def test_a_hostile_subject_and_header_are_shown_as_text(web_daemon, browser):
    daemon = web_daemon()
    mid = enqueue(daemon, "carol@example.com", HOSTILE, send_in="1h",
                  headers={"X-Note": "</pre><script>alert('header')</script>"})
    log_in(browser, daemon, f"/messages/{mid}")
    assert no_alert(browser)
    assert by_css(browser, "#subject").text == HOSTILE
    assert "X-Note" in by_css(browser, "#headers").text
    assert "</pre><script>alert('header')</script>" in by_css(browser, "#source").text
    assert all_css(browser, "main script") == [] and all_css(browser, "main img") == []
    browser.get(daemon.base + "/messages")
    assert no_alert(browser)
    assert all_css(browser, "main script") == [] and all_css(browser, "main img") == []
    assert "<script>alert('subject')</script>" in by_css(browser, "#messages").text


class _Forger(http.server.BaseHTTPRequestHandler):
    """Another site's page: a form that posts a cancel to the dashboard as soon as it loads."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 (the handler's name)
        page = (f'<form id="f" method="post" action="{self.target}"><input name="csrf" value="guess"></form>'
                '<script>document.getElementById("f").submit()</script>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_form_forged_by_another_site_or_without_the_token_is_refused(web_daemon, browser):
    daemon = web_daemon()
    mid = enqueue(daemon, "dave@example.com", send_in="1h")
    log_in(browser, daemon)

    # A logged-in browser visits other sites, whose pages post a cancel: one on another
    # host name (the SameSite=Strict cookie is not even sent), one on another port of
    # this host (same site: the cookie goes, the cross-site check refuses it).
    for host, refusal in (("localhost", "log in"), ("127.0.0.1", "refused: a request from another site")):
        forger = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("F", (_Forger,), {
            "target": f"{daemon.base}/messages/{mid}/cancel"}))
        threading.Thread(target=forger.serve_forever, daemon=True).start()
        try:
            browser.get(f"http://{host}:{forger.server_address[1]}/")
            assert wait_until(lambda r=refusal: r in browser.page_source, timeout=10), browser.page_source
        finally:
            forger.shutdown()
            forger.server_close()
    assert status_of(daemon, mid) == "queued"

    # The same session's cookie, a form with no token, or another session's.
    with daemon.anonymous(follow_redirects=False) as other:
        r = other.post("/login", data={"token": TOKEN, "next": "/"})
        their_csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', other.get("/").text)
        assert their_csrf
    cookie = browser.get_cookie("mailmand_session")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    with daemon.anonymous(follow_redirects=False, cookies={"mailmand_session": cookie["value"]}) as stolen:
        r = stolen.post(f"/messages/{mid}/cancel", data={})
        assert r.status_code == 403 and "CSRF" in r.text
        r = stolen.post(f"/messages/{mid}/cancel", data={"csrf": their_csrf.group(1)})
        assert r.status_code == 403 and "CSRF" in r.text
    assert status_of(daemon, mid) == "queued"

    # The page's own form, confirmed: cancelled.
    browser.get(f"{daemon.base}/messages/{mid}/cancel")
    by_css(browser, "#confirm").click()
    assert wait_until(lambda: "Done: cancel." in browser.page_source, timeout=10)
    assert by_css(browser, "#status").text == "cancelled"


def test_logged_out_pages_go_to_the_login_and_back(web_daemon, browser):
    daemon = web_daemon()
    mid = enqueue(daemon, "erin@example.com", send_in="1h")
    browser.get(f"{daemon.base}/messages/{mid}")
    assert browser.current_url == f"{daemon.base}/login?next=/messages/{mid}"
    by_css(browser, "#token").send_keys("not-the-token-000000")
    by_css(browser, "form.login button").click()
    assert wait_until(lambda: "Wrong token." in browser.page_source, timeout=10)
    assert wait_until(lambda: _unlocked(daemon), timeout=10)
    by_css(browser, "#token").send_keys(daemon.token)
    by_css(browser, "form.login button").click()
    assert wait_until(lambda: browser.current_url == f"{daemon.base}/messages/{mid}", timeout=10)
    by_css(browser, "header form.logout button").click()
    assert wait_until(lambda: "/login" in browser.current_url, timeout=10)
    browser.get(daemon.base + "/")
    assert browser.current_url == f"{daemon.base}/login?next=/"


def _unlocked(daemon) -> bool:
    with daemon.http() as http:
        return http.get("/api/v1/stats").status_code != 429


def test_the_message_list_filters_and_pages_by_cursor(web_daemon, browser):
    daemon = web_daemon()
    # 65 match (more than a page of 50): odd ones, to a.example, tagged batch=x.
    ids = [enqueue(daemon, f"u{i}@{'a' if i % 2 else 'b'}.example", f"n{i}", send_in="1h",
                   tags={"batch": "x" if i < 130 else "y"}) for i in range(140)]
    log_in(browser, daemon)
    browser.get(daemon.base + "/messages?to=%40a.example&tag=batch%3Dx")
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        seen += [r.get_attribute("data-id") for r in all_css(browser, "#messages tbody tr[data-id]")]
        older = all_css(browser, "#older")
        if not older:
            break
        older[0].click()
    assert seen == [m for i, m in reversed(list(enumerate(ids))) if i % 2 and i < 130]
    assert pages == 2
    # Empty fields are dropped from the address; a bad one is named.
    browser.get(daemon.base + "/messages?status=&to=&since=yesterday")
    assert "since: expected a time" in by_css(browser, ".error").text
    assert browser.current_url == f"{daemon.base}/messages?since=yesterday"


def test_the_overview_with_traffic(web_daemon, smtp_server, browser):
    relay = smtp_server(rcpt_replies={f"gone{i}@example.com": "550 5.1.1 no such user" for i in range(40)})
    daemon = web_daemon(relay_port=relay.port)
    rounds = 6 if SCREENSHOT else 1
    sent = failed = 0
    for r in range(rounds):
        for i in range(10 + 7 * (r % 3)):
            enqueue(daemon, f"user{r}-{i}@example.com", f"Order {r}-{i} confirmed", tags={"kind": "receipt"})
            sent += 1
        for i in range(1 + r % 3):
            enqueue(daemon, f"gone{(r * 3 + i) % 40}@example.com", "Welcome")
            failed += 1
        if r < rounds - 1:
            time.sleep(50)
    for i in range(3):
        enqueue(daemon, f"later{i}@example.com", "Reminder", send_in="2h")

    def settled() -> bool:
        with daemon.http() as http:
            counts = http.get("/api/v1/stats").json()["counts"]
        return counts["sent"] == sent and counts["failed"] == failed

    assert wait_until(settled, timeout=60), daemon.proc.log
    log_in(browser, daemon)
    assert by_css(browser, '#counts [data-status="sent"] .n').text == str(sent)
    assert by_css(browser, '#counts [data-status="failed"] .n').text == str(failed)
    assert by_css(browser, '#counts [data-status="queued"] .n').text == "3"
    assert by_css(browser, "#backlog").text.startswith("3 waiting")
    assert "p50" in by_css(browser, "#latency").text and "p50 -" not in by_css(browser, "#latency").text
    assert "550 5.1.1 no such user" in by_css(browser, "#relays").text or "250" in by_css(browser, "#relays").text
    # Each bar's tooltip says its count: the hour's bars add up to the mail that finished.
    bars = [b.get_attribute("textContent") for b in all_css(browser, "figure.chart:first-of-type rect title")]
    total = sum(int(t.split(": ")[1].split()[0].replace(",", "")) for t in bars)
    assert total == sent + failed
    if SCREENSHOT:
        path = ROOT / SCREENSHOT if not os.path.isabs(SCREENSHOT) else Path(SCREENSHOT)
        browser.set_window_size(1280, 1200)
        assert browser.save_screenshot(str(path))
