"""
The panel's view of a cluster, in a real browser (Chromium through
Playwright, as tests/test_panel_browser.py): node b's panel shows both
nodes under *Server nodes*, the overview's counts of both nodes, and the client and tunnel that node a holds as
online and up, with node a.
"""

from __future__ import annotations

import pytest

from tests.cluster import PASSWORD
from tests.e2e import tunnel_port
from tests.test_panel_browser import browser, sync_api  # noqa: F401  (the fixture, and skips without Chromium)


@pytest.mark.timeout(240)
def test_b_panel_shows_the_nodes_and_a_s_client_and_tunnel(cluster, echo, browser):  # noqa: F811
    nodes = cluster(2)
    a, b = nodes["a"], nodes["b"]
    client = nodes.client(a, f"echo=tcp:127.0.0.1:{echo.port}")
    tunnel_port(client, "echo")

    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15000)
    expect = sync_api.expect
    page.goto(f"http://127.0.0.1:{b.web_port}/")
    page.fill('#login-form [name="password"]', PASSWORD)
    page.click('#login-form button[type="submit"]')
    expect(page.locator("#nav")).to_be_visible()

    # The overview's counts are the cluster's (b holds no client: they said 0 / 1 and 0 / 1 there).
    expect(page.locator("#ov-clients")).to_have_text("1 / 1")
    expect(page.locator("#ov-tunnels")).to_have_text("1 / 1")
    expect(page.locator("#ov-cluster")).to_contain_text("all 2 nodes that are up")
    expect(page.locator("#ov-cluster")).to_contain_text("through this node (b)")

    row_a = page.locator('#nodes-table tr[data-node="a"]')
    expect(row_a.locator(".status")).to_have_text("up")
    expect(row_a).to_contain_text("1: default")
    expect(page.locator('#nodes-table tr[data-node="b"] .name')).to_have_text("b (this one)")

    page.click('#nav a[data-page="clients"]')
    row = page.locator('#clients-table tr[data-client="default"]')
    expect(row).to_contain_text("online")
    expect(row.locator(".node")).to_have_text("a")
    page.click('#nav a[data-page="tunnels"]')
    echo_row = page.locator('#tunnels-table tr[data-tunnel="default/echo"]')
    expect(echo_row.locator(".status")).to_have_text("up")
    expect(echo_row.locator(".node")).to_have_text("a")
    context.close()
