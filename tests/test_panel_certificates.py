"""
The panel's Certificates page in a real browser (Chromium through
playwright) against a real ``twistd gotaxy-server`` that asks for client
certificates from its own CA: issue one, download its two files (the key
from the browser's memory, never stored by the server), log a real client
in with them, revoke it from the page, and watch the client be cut off.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.e2e import echo_once, tunnel_port
from tests.test_panel_browser import PASSWORD, browser, sync_api, wait_for_panel  # noqa: F401 (fixture)
from tests.test_e2e_client_certificates import cert_client

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
def test_issue_download_log_in_and_revoke_from_the_panel(procs, echo, browser, tmp_path):  # noqa: F811
    from tests.e2e import free_port

    web_port = free_port()
    ca = procs.workdir / "server-data" / "tls" / "ca.pem"  # made at the first start, before the CA is read
    config = tmp_path / "server.toml"
    config.write_text(f'auth.method = "certificate"\ntransport.tls.trustedCaFile = "{ca}"\n')
    server = procs.server("--config", str(config), "--web-port", str(web_port),
                          env={"GOTAXY_ADMIN_PASSWORD": PASSWORD})
    wait_for_panel(web_port)
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.set_default_timeout(15000)
    expect = sync_api.expect
    page.goto(f"http://127.0.0.1:{web_port}/")
    page.fill('#login-form [name="password"]', PASSWORD)
    page.click('#login-form button[type="submit"]')
    page.click('#nav a[data-page="certificates"]')
    expect(page.locator("#certs-mode")).to_contain_text("requires a client certificate, and no token")
    expect(page.locator("#certs-table")).to_contain_text("No client certificate issued")

    page.fill('#cert-form [name="name"]', "bad name")
    page.click('#cert-form button[type="submit"]')
    expect(page.locator('#cert-form [data-error="name"]')).to_contain_text("must be")
    page.fill('#cert-form [name="name"]', "laptop")
    page.click('#cert-form button[type="submit"]')
    expect(page.locator("#cert-issued")).to_be_visible()
    expect(page.locator("#cert-config")).to_contain_text('transport.tls.keyFile = "laptop.key"')
    files = {}
    for link, name in (("#cert-download-cert", "laptop.pem"), ("#cert-download-key", "laptop.key")):
        with page.expect_download() as download:
            page.click(link)
        assert download.value.suggested_filename == name
        target = tmp_path / name
        download.value.save_as(str(target))
        os.chmod(target, 0o600)
        files[name] = target
    assert b"PRIVATE KEY" in files["laptop.key"].read_bytes()
    page.click("#cert-forget")
    expect(page.locator("#cert-issued")).to_be_hidden()
    row = page.locator("#certs-table tbody tr", has_text="laptop")
    expect(row).to_contain_text("valid")
    serial = row.get_attribute("data-serial")

    client = cert_client(procs, server, files["laptop.pem"], files["laptop.key"], f"echo=tcp:127.0.0.1:{echo.port}")
    assert echo_once(tunnel_port(client, "echo"), b"from the panel") == b"from the panel"

    row.locator("button").click()
    expect(page.locator(f'#certs-table tr[data-serial="{serial}"]')).to_contain_text("revoked")
    server.wait_for(rf"client laptop: client certificate revoked \(serial {serial}\)", timeout=15)
    assert client.wait_exit(30) == 2
    assert re.search(r"was revoked on the server", client.output())
    context.close()
