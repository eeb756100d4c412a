"""
The panel in a real browser: Chromium driven by Playwright against real
``twistd`` server and client processes on loopback.

Needs Debian's ``chromium`` (``.ci/apt-packages``) and the ``playwright``
wheel (the ``test`` extra); Playwright's own browser download is never used.
The layout on a phone, the charts and the screenshots in ``docs/img/`` are
in ``tests/test_panel_layout.py``; ``shots`` here is where they go
(``GOTAXY_SCREENSHOTS=1``: ``docs/img/``, otherwise a temporary directory).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e import ROOT, connection_refused, echo_once, free_port, tunnel_port

CHROMIUM = os.environ.get("GOTAXY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "browser test password"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package (see .ci/apt-packages)",
                allow_module_level=True)


def wait_for_panel(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v0.1/health", timeout=2) as response:
                if json.load(response)["status"] == "ok":
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the panel did not answer on port {port} within {timeout} s")
        time.sleep(0.1)


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def shots(tmp_path):
    if os.environ.get("GOTAXY_SCREENSHOTS"):
        directory = ROOT / "docs" / "img"
    else:
        directory = tmp_path / "img"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.mark.timeout(180)
def test_panel_end_to_end(procs, echo, browser):
    web_port = free_port()
    server = procs.server("--web-port", str(web_port), env={"GOTAXY_ADMIN_PASSWORD": PASSWORD})
    # The client lets operators add tunnels to its echo service (allowOperatorTunnels).
    client = procs.client(server, f"echo=tcp:127.0.0.1:{echo.port}",
                          args=["--allow-operator-tunnel", f"127.0.0.1:{echo.port}"])
    echo_port = tunnel_port(client, "echo")
    wait_for_panel(web_port)
    base = f"http://127.0.0.1:{web_port}/"

    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.set_default_timeout(15000)
    expect = sync_api.expect

    # Log in (a wrong password first: the error is shown by the password field).
    page.goto(base)
    expect(page.locator("#login")).to_be_visible()
    page.fill('#login-form [name="password"]', "not the password")
    page.click('#login-form button[type="submit"]')
    expect(page.locator('#login-form [data-error="password"]')).to_have_text(
        "Wrong user name or password; check them and try again."
    )  # without "Not logged in: " in front
    page.fill('#login-form [name="password"]', PASSWORD)
    page.click('#login-form button[type="submit"]')
    expect(page.locator("#nav")).to_be_visible()
    expect(page.locator("#ov-clients")).to_have_text("1 / 1")
    expect(page.locator("#live-state")).to_have_class("live on")
    # Traffic shows in the totals (the chart is tested in tests/test_panel_layout.py).
    assert len(echo_once(echo_port, os.urandom(1024) * 256)) == 256 * 1024
    expect(page.locator("#ov-in")).not_to_have_text("0 B")

    # The client's own tunnel is up, marked as coming from its config.
    page.click('#nav a[data-page="clients"]')
    row = page.locator('#clients-table tr[data-client="default"]')
    expect(row).to_contain_text("online")
    expect(row).to_contain_text("echo")
    page.click('#nav a[data-page="tunnels"]')
    echo_row = page.locator('#tunnels-table tr[data-tunnel="default/echo"]')
    expect(echo_row.locator(".status")).to_have_text("up")
    expect(echo_row).to_contain_text("client config")
    expect(echo_row).to_contain_text(str(echo_port))

    # The form shows the chosen type's settings (tcp: local IP, local port, public port).
    page.select_option('#tunnel-form [name="client"]', "default")
    expect(page.locator('#tunnel-form [name="spec.type"]')).to_have_value("tcp")
    expect(page.locator('#tunnel-form [name="spec.localIP"]')).to_have_attribute("placeholder", "127.0.0.1")
    expect(page.locator('#tunnel-form [name="spec.remotePort"]')).to_have_attribute("placeholder", "0: the server picks")
    page.fill('#tunnel-form [name="name"]', "web")
    page.fill('#tunnel-form [name="spec.localPort"]', "echo")
    page.click('#tunnel-form button[type="submit"]')
    expect(page.locator('#tunnel-form [data-error="spec.localPort"]')).to_have_text(
        "Invalid: Local port must be a whole number.")  # checked in the page
    # A port out of range: the server's error appears by the port field.
    page.fill('#tunnel-form [name="spec.localPort"]', str(echo.port))
    page.fill('#tunnel-form [name="spec.remotePort"]', "70000")
    page.click('#tunnel-form button[type="submit"]')
    expect(page.locator('#tunnel-form [data-error="spec.remotePort"]')).to_contain_text("'remotePort' must be")
    expect(page.locator('#tunnel-form [name="spec.remotePort"]')).to_have_attribute("aria-invalid", "true")

    # Create a tunnel from the panel: the client opens it live, no restart.
    wanted = free_port()
    page.fill('#tunnel-form [name="spec.remotePort"]', str(wanted))
    page.click('#tunnel-form button[type="submit"]')
    web_row = page.locator('#tunnels-table tr[data-tunnel="default/web"]')
    expect(web_row.locator(".status")).to_have_text("up")  # arrives through the live updates
    assert tunnel_port(client, "web") == wanted
    assert echo_once(wanted, b"through the panel's tunnel") == b"through the panel's tunnel"

    # Edit it: the form holds its settings; another public port moves it there.
    web_row.locator('button[data-action="edit"]').click()
    expect(page.locator("#edit-type")).to_have_text("TCP port")
    expect(page.locator('#edit-form [name="spec.localPort"]')).to_have_value(str(echo.port))
    expect(page.locator('#edit-form [name="spec.remotePort"]')).to_have_value(str(wanted))
    moved = free_port()
    mark = len(client.output())
    page.fill('#edit-form [name="spec.remotePort"]', str(moved))
    page.click('#edit-form button[type="submit"]')
    expect(page.locator("#edit-form")).to_be_hidden()
    assert tunnel_port(client, "web", start=mark) == moved
    expect(web_row).to_contain_text(f"127.0.0.1:{moved}")  # the address as the panel reached the server
    wanted = moved

    # Disable it: the page shows it and the port refuses connections.
    web_row.locator('button[data-action="disable"]').click()
    expect(web_row.locator(".status")).to_have_text("disabled")
    assert connection_refused(wanted)
    web_row.locator('button[data-action="enable"]').click()
    expect(web_row.locator(".status")).to_have_text("up")
    assert echo_once(wanted, b"again") == b"again"

    # A udp tunnel from the same form: the type's own fields, its address and datagram counters in the table.
    page.select_option('#tunnel-form [name="spec.type"]', "udp")
    expect(page.locator('#tunnel-form [name="spec.idleTimeout"]')).to_have_attribute("placeholder", "60")
    page.fill('#tunnel-form [name="name"]', "dns")
    page.fill('#tunnel-form [name="spec.localPort"]', str(echo.port))
    page.click('#tunnel-form button[type="submit"]')
    dns_row = page.locator('#tunnels-table tr[data-tunnel="default/dns"]')
    expect(dns_row.locator(".status")).to_have_text("up")
    expect(dns_row).to_contain_text("UDP port")
    expect(dns_row).to_contain_text("udp 127.0.0.1:")
    expect(dns_row.locator(".datagrams")).to_have_text("0 / 0 datagrams")

    # Tokens and events pages.
    page.click('#nav a[data-page="tokens"]')
    page.fill('#token-form [name="name"]', "laptop")
    page.click('#token-form button[type="submit"]')
    expect(page.locator("#token-secret-text")).to_contain_text("gtx_")
    expect(page.locator('#tokens-table tr[data-token="laptop"]')).to_contain_text("active")
    page.click('#nav a[data-page="events"]')
    page.select_option('#events-form [name="type"]', "tunnel.")
    page.click('#events-form button[type="submit"]')
    expect(page.locator("#events-table tbody")).to_contain_text("tunnel.disabled")
    expect(page.locator("#events-table tbody")).not_to_contain_text("token.created")
    page.click('#nav a[data-page="account"]')
    page.click("#totp-setup")
    expect(page.locator("#totp-qr")).to_be_visible()

    # Switch the language: every label on the page changes, and it sticks.
    page.click('#nav a[data-page="tunnels"]')
    page.select_option("#language", "zh-CN")
    expect(page.locator("#page-tunnels h1")).to_have_text("隧道")
    expect(page.locator('#nav a[data-page="overview"]')).to_have_text("概览")
    expect(web_row.locator(".status")).to_have_text("运行中")
    expect(page.locator("#logout")).to_have_text("退出登录")
    page.reload()
    expect(page.locator("#page-tunnels h1")).to_have_text("隧道")

    # In a browser that prefers Chinese the panel starts in Chinese (on a
    # phone-sized screen; its layout is checked in tests/test_panel_layout.py).
    phone = browser.new_context(locale="zh-CN", viewport={"width": 390, "height": 844}, is_mobile=True)
    mobile = phone.new_page()
    mobile.goto(base + "#tunnels")
    expect(mobile.locator("#login h1")).to_have_text("登录")
    mobile.fill('#login-form [name="password"]', PASSWORD)
    mobile.click('#login-form button[type="submit"]')
    expect(mobile.locator("#page-tunnels h1")).to_have_text("隧道")
    expect(mobile.locator('#tunnels-table tr[data-tunnel="default/web"] .status')).to_have_text("运行中")
    width = mobile.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    phone.close()

    # Log out: back to the log-in form, and the API refuses the old session.
    page.select_option("#language", "en")
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    response = page.request.get(base + "api/v0.1/status")
    assert response.status == 401
    assert response.json()["error"]["kind"] == "unauthorized"
    context.close()


@pytest.mark.timeout(120)
def test_the_access_page_shows_the_rules_and_bans_and_lifts_one(procs, browser, tmp_path):
    web_port = free_port()
    config = tmp_path / "server.toml"
    config.write_text('[access.tunnels]\ndeny = ["192.0.2.0/24"]\n')
    procs.server("--config", str(config), "--web-port", str(web_port), env={"GOTAXY_ADMIN_PASSWORD": PASSWORD})
    wait_for_panel(web_port)
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.set_default_timeout(15000)
    expect = sync_api.expect
    page.goto(f"http://127.0.0.1:{web_port}/")
    page.fill('#login-form [name="password"]', PASSWORD)
    page.click('#login-form button[type="submit"]')
    page.click('#nav a[data-page="access"]')
    expect(page.locator("#rules-table")).to_contain_text("192.0.2.0/24")
    page.fill('#ban-form [name="address"]', "not an address")
    page.click('#ban-form button[type="submit"]')
    expect(page.locator('#ban-form [data-error="address"]')).to_contain_text("is not an IP address")
    page.fill('#ban-form [name="address"]', "198.51.100.7")
    page.fill('#ban-form [name="reason"]', "port scanner")
    page.click('#ban-form button[type="submit"]')
    row = page.locator('#bans-table tr[data-ban="198.51.100.7"]')
    expect(row).to_contain_text("port scanner")
    expect(row).to_contain_text("panel operator admin")
    row.locator("button").click()
    expect(row).to_have_count(0)
    context.close()


def test_the_access_page_shows_the_limits_and_sets_a_clients_own_bandwidth(procs, browser, tmp_path):
    web_port = free_port()
    config = tmp_path / "server.toml"
    config.write_text('maxBandwidthPerClient = "4MB"\ntunnelMaxConnectionsPerIP = 5\n')
    procs.server("--config", str(config), "--web-port", str(web_port), env={"GOTAXY_ADMIN_PASSWORD": PASSWORD})
    wait_for_panel(web_port)
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15000)
    expect = sync_api.expect
    page.goto(f"http://127.0.0.1:{web_port}/")
    page.fill('#login-form [name="password"]', PASSWORD)
    page.click('#login-form button[type="submit"]')
    page.click('#nav a[data-page="access"]')
    expect(page.locator("#limits-table")).to_contain_text("4.0 MiB/s")
    expect(page.locator("#limits-table")).to_contain_text("tunnelMaxConnectionsPerIP")
    page.fill('#client-limit-form [name="name"]', "nobody")
    page.fill('#client-limit-form [name="max_bandwidth"]', "10MB")
    page.click('#client-limit-form button[type="submit"]')
    expect(page.locator('#client-limit-form [data-error="name"]')).to_contain_text("no active token named 'nobody'")
    page.fill('#client-limit-form [name="name"]', "default")  # the token the server made at its first start
    page.fill('#client-limit-form [name="max_bandwidth"]', "fast")
    page.click('#client-limit-form button[type="submit"]')
    expect(page.locator('#client-limit-form [data-error="max_bandwidth"]')).to_contain_text("must be a rate")
    page.fill('#client-limit-form [name="max_bandwidth"]', "10MB")
    page.click('#client-limit-form button[type="submit"]')
    expect(page.locator('#client-limit-form [name="name"]')).to_have_value("")  # done: the form is cleared
    # maxBandwidthPerClient live, ahead of server.toml's, and cleared back to it.
    page.select_option('#server-limit-form [name="key"]', "maxBandwidthPerClient")
    page.fill('#server-limit-form [name="value"]', "fast")
    page.click('#server-limit-form button[type="submit"]')
    expect(page.locator('#server-limit-form [data-error="value"]')).to_contain_text("must be a rate")
    page.fill('#server-limit-form [name="value"]', "8MB")
    page.click('#server-limit-form button[type="submit"]')
    row = page.locator('#limits-table tr[data-limit="maxBandwidthPerClient"]')
    expect(row).to_contain_text("8.0 MiB/s")
    expect(row).to_contain_text("live, set by panel operator admin")
    expect(row).to_contain_text("server.toml: 4.0 MiB/s")
    row.locator('button[data-action="clear"]').click()
    expect(row).to_contain_text("4.0 MiB/s")
    expect(row.locator("button")).to_have_count(0)
    context.close()
