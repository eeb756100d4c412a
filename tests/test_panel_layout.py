"""
The panel's layout on a phone and a desktop, in English and Chinese, and its
charts from the server's history: Chromium (Debian's ``chromium``, driven by
Playwright, as in ``tests/test_panel_browser.py``) against real ``twistd``
server and client processes on loopback, one server for every check.

* At 390x844 no page scrolls sideways, every menu entry is on screen, and
  the tunnels' status and buttons are within the screen.
* After traffic through a tunnel, a fresh page load draws the throughput
  chart from samples taken before the load.
* A client's stability view shows the uptime the API reports.

Set ``GOTAXY_SCREENSHOTS=1`` to refresh the screenshots in ``docs/img/``
(``PAGE-LANG-desktop.png`` at 1366x800 and ``PAGE-LANG-phone.png`` at
390x844); otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.e2e import echo_once, free_port, tunnel_port
from tests.test_panel_browser import PASSWORD, browser, shots, sync_api, wait_for_panel  # noqa: F401 (fixtures)

PAGES = ("overview", "clients", "tunnels", "tokens", "events", "notifications", "account")
SIZES = {"desktop": (1366, 800), "phone": (390, 844)}
LANGUAGES = {"en": "en-US", "zh-CN": "zh-CN"}
API = "api/v0.1"
TWO_OR_MORE = re.compile(r"^(?:[2-9]|[1-9][0-9]+)$")


def deadline_loop(timeout: float, what: str):
    """Yield until the caller breaks out; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        yield
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.1)


def api(page, method: str, path: str, body=None):
    csrf = page.request.get(f"{page.base}{API}/account").json()["csrf_token"]
    response = page.request.fetch(f"{page.base}{API}/{path}", method=method, data=body,
                                  headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})
    assert response.ok, f"{method} {path}: {response.status} {response.text()}"
    return response.json() if response.status != 204 else None


def log_in(browser, base: str, lang: str, size: str):
    width, height = SIZES[size]
    context = browser.new_context(locale=LANGUAGES[lang], viewport={"width": width, "height": height},
                                  is_mobile=size == "phone", has_touch=size == "phone")
    page = context.new_page()
    page.base = base
    page.set_default_timeout(15000)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(base)
    page.fill('#login-form [name="password"]', PASSWORD)
    page.click('#login-form button[type="submit"]')
    sync_api.expect(page.locator("#nav")).to_be_visible()
    assert page.evaluate("document.documentElement.lang") == lang
    return context, page


def open_page(page, name: str) -> None:
    """Go to a page through the menu and wait until its data is on it."""
    expect = sync_api.expect
    page.click(f'#nav a[data-page="{name}"]')
    expect(page.locator(f"#page-{name}")).to_be_visible()
    if name == "overview":
        expect(page.locator("#ov-clients")).to_have_text("1 / 1")
        expect(page.locator("#chart")).to_have_attribute("data-points", TWO_OR_MORE)
    elif name == "clients":
        row = page.locator('#clients-table tr[data-client="default"]')
        expect(row.locator(".uptime-24h")).not_to_have_text("–")
        row.locator('a[data-action="history"]').click()
        expect(page.locator("#cd-uptime-24h")).to_have_attribute("data-uptime", re.compile(r"^[0-9.]+$"))
    elif name == "tunnels":
        expect(page.locator('#tunnels-table tr[data-tunnel="default/echo"] .status .badge')).to_have_class("badge up")
    elif name == "tokens":
        expect(page.locator('#tokens-table tr[data-token="default"]')).to_be_visible()
    elif name == "events":
        expect(page.locator("#events-table tbody tr").first).to_be_visible()
    elif name == "notifications":
        expect(page.locator('#webhooks-table tr[data-webhook="oncall"]')).to_be_visible()
    elif name == "account":
        expect(page.locator("#api-tokens-table tbody tr").first).to_be_visible()


def check_phone_layout(page, name: str) -> None:
    """Nothing wider than the screen; menu entries, statuses and buttons on it."""
    width = page.evaluate("window.innerWidth")
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"page {name} is {scroll} px wide on a {width} px screen"
    for link in page.locator("#nav a").all():
        assert link.is_visible(), f"menu entry {link.text_content()!r} is hidden on page {name}"
        box = link.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, f"menu entry {link.text_content()!r} is cut off"
    if name == "tunnels":
        row = page.locator('#tunnels-table tr[data-tunnel="default/echo"]')
        targets = [row.locator(".status .badge")] + row.locator("button").all()
        assert len(targets) >= 3  # status, disable, restart
        for target in targets:
            target.scroll_into_view_if_needed()
            box = target.bounding_box()
            assert target.is_visible() and box["x"] >= 0 and box["x"] + box["width"] <= width, (
                f"{target.text_content()!r} of the tunnel is outside the {width} px screen: {box}")


@pytest.mark.timeout(300)
def test_layout_charts_and_stability(procs, echo, browser, shots: Path, tmp_path):  # noqa: F811
    config = tmp_path / "server.toml"
    config.write_text("[history]\nsampleInterval = 1\n")  # so the test sees samples within seconds
    web_port = free_port()
    server = procs.server("--config", str(config), "--web-port", str(web_port),
                          env={"GOTAXY_ADMIN_PASSWORD": PASSWORD})
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}")
    echo_port = tunnel_port(client, "echo")
    wait_for_panel(web_port)
    base = f"http://127.0.0.1:{web_port}/"
    expect = sync_api.expect

    context, page = log_in(browser, base, "en", "desktop")
    # Traffic through the tunnel, until the server has recorded it in two samples or more.
    for _ in deadline_loop(30, "two throughput samples with traffic"):
        assert len(echo_once(echo_port, os.urandom(1024) * 128)) == 128 * 1024
        points = api(page, "GET", "throughput")["points"]
        if sum(1 for p in points if p["bytes_in"] > 0) >= 2:
            break
    # A disconnect for the stability history, then the client is back.
    api(page, "POST", "clients/default/kick")
    for _ in deadline_loop(30, "the client's reconnection after the kick"):
        record = api(page, "GET", "clients/default/stability")
        if record["online"] and record["disconnects_24h"] >= 1:
            break
    # Something in every table for the pictures.
    api(page, "POST", "webhooks", {"name": "oncall", "url": f"http://127.0.0.1:{free_port()}/hook",
                                   "events": ["client.disconnected", "tunnel.*"]})
    api(page, "POST", "api-tokens", {"name": "backup-script"})

    # A fresh page load: the chart has the points recorded before it, at once.
    loaded_at = time.time()
    page.reload()
    expect(page.locator("#ov-clients")).to_have_text("1 / 1")
    expect(page.locator("#chart")).to_have_attribute("data-points", TWO_OR_MORE)
    first = float(page.locator("#chart").get_attribute("data-first"))
    assert first < loaded_at - 1, "the chart's first point is not from before the page was loaded"
    path = page.locator('#chart path[data-series="in"]').get_attribute("d")
    assert path.count("L") >= 2, f"the throughput line has too few points: {path}"

    # The stability view shows what the API says.
    open_page(page, "clients")
    expect(page.locator("#client-detail")).to_be_visible()
    shown = float(page.locator("#cd-uptime-24h").get_attribute("data-uptime"))
    record = api(page, "GET", "clients/default/stability")
    assert record["uptime_24h"] < 100.0 and abs(shown - record["uptime_24h"]) < 1.0, (shown, record["uptime_24h"])
    assert page.locator("#cd-uptime-24h").text_content() == f"{shown:.1f} %"
    expect(page.locator("#cd-disc-24h")).to_have_text(str(record["disconnects_24h"]))
    assert int(page.locator("#cd-timeline-24h").get_attribute("data-sessions")) >= 2
    assert int(page.locator("#cd-rtt").get_attribute("data-points")) >= 1
    expect(page.locator("#cd-reasons li").first).to_be_visible()
    context.close()

    # Every page, both languages, desktop and phone.
    for lang in LANGUAGES:
        for size in SIZES:
            context, page = log_in(browser, base, lang, size)
            for name in PAGES:
                open_page(page, name)
                if size == "phone":
                    check_phone_layout(page, name)
                page.screenshot(path=str(shots / f"{name}-{lang}-{size}.png"), full_page=True)
            context.close()
