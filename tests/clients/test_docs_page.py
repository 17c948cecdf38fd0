"""`/docs` works offline (issue #10): headless Chromium (Debian's package) opens
the page on the running system (`hairfluencer dev`, tests/clients/conftest.py) and
sees every operation listed, while every host but the app's resolves to nothing and
Chromium's network log shows that no request went anywhere but 127.0.0.1.

The page is opened under a made-up host name mapped to 127.0.0.1, not under
127.0.0.1 itself: Swagger UI skips some outside requests (its validator badge)
when the page's address contains "localhost" or "127.0.0.1", and those must not
hide here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from api.docs_ui import ASSETS_URL

pytestmark = pytest.mark.clients

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS_HOST = "hairfluencer-docs.test"  # a site of its own, mapped to 127.0.0.1 by Chromium

if CHROMIUM is None:
    if os.environ.get("CI") == "true":  # devstack/bootstrap.sh installs it on CI
        raise RuntimeError("chromium is not installed: the /docs browser test cannot run on CI")
    pytest.skip("chromium is not installed (apt-get install chromium): no browser to open /docs",
                allow_module_level=True)


def _chromium(url: str, profile: Path, net_log: Path) -> str:
    """The DOM of `url` after Swagger UI has rendered, as headless Chromium sees it."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions",
        "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable,NetworkTimeServiceQuerying",
        f"--user-data-dir={profile}",
        # Only the app's host resolves: anything else the page tried would fail.
        f"--host-resolver-rules=MAP {DOCS_HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=direct://",
        f"--log-net-log={net_log}",
        "--virtual-time-budget=15000", "--dump-dom", url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@dataclass
class NetLog:
    page_urls: set[str]  # what the page asked for (its own requests, initiated or isolated by it)
    other_urls: set[str]  # what Chromium itself asked for (update checks, account lookups...)
    tcp_addresses: set[str]  # every address Chromium tried to open a TCP connection to
    udp_sent_to: set[str]  # every address Chromium sent a UDP datagram to


def _read_net_log(path: Path) -> NetLog:
    """Chromium's network log (--log-net-log): requests, including those that failed."""
    log = json.loads(path.read_text())
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    result = NetLog(set(), set(), set(), set())
    udp_peers: dict[int, str] = {}
    for event in log["events"]:
        name, params = names.get(event["type"]), event.get("params") or {}
        if name == "URL_REQUEST_START_JOB" and "url" in params:
            by_page = DOCS_HOST in f"{params.get('initiator')} {params.get('network_isolation_key')}"
            (result.page_urls if by_page else result.other_urls).add(params["url"])
        elif name == "TCP_CONNECT" and "address_list" in params:
            result.tcp_addresses.update(params["address_list"])
        elif name == "TCP_CONNECT_ATTEMPT" and "address" in params:
            result.tcp_addresses.add(params["address"])
        elif name == "UDP_CONNECT" and "address" in params:
            # connect() on a UDP socket sends nothing: Chromium does it to probe routes
            # (its IPv6 reachability check); only a datagram sent would leave the machine.
            udp_peers[event["source"]["id"]] = params["address"]
        elif name == "UDP_BYTES_SENT":
            result.udp_sent_to.add(params.get("address") or udp_peers.get(event["source"]["id"], "?"))
    return result


def _is_loopback(address: str) -> bool:
    return address.startswith("127.0.0.1:")


def test_docs_render_every_operation_with_no_request_leaving_the_machine(
        system: dict[str, str], tmp_path: Path) -> None:
    live_api = system["base"]
    port = urlsplit(live_api).port
    spec = httpx.get(f"{live_api}/openapi.json", timeout=10).json()
    operations = {(method, path) for path, item in spec["paths"].items()
                  for method in item if method in {"get", "post", "put", "patch", "delete"}}
    assert ("post", "/v1/uploads/presign") in operations

    net_log = tmp_path / "netlog.json"
    dom = _chromium(f"http://{DOCS_HOST}:{port}/docs", tmp_path / "profile", net_log)

    # Swagger UI has rendered: one block per operation, with its path.
    assert 'id="swagger-ui-container"' in dom
    assert 'class="swagger-ui"' in dom, dom[-2000:]
    for method, path in operations:
        assert f'data-path="{path}"' in dom, (method, path, dom[-2000:])
    assert dom.count('class="opblock opblock-') == len(operations)

    log = _read_net_log(net_log)
    origin = f"http://{DOCS_HOST}:{port}"
    assert {f"{origin}/docs", f"{origin}{ASSETS_URL}swagger-ui-bundle.js",
            f"{origin}{ASSETS_URL}swagger-ui.css", f"{origin}/openapi.json"} <= log.page_urls, log
    # Nothing the page asked for is anywhere else (a CDN, fonts, a validator badge).
    assert {url for url in log.page_urls if urlsplit(url).hostname != DOCS_HOST} == set()
    # And nothing at all left 127.0.0.1: Chromium's own background requests
    # (log.other_urls: update checks, account lookups) never resolved to an address.
    assert log.tcp_addresses and all(_is_loopback(a) for a in log.tcp_addresses), log.tcp_addresses
    assert all(_is_loopback(a) for a in log.udp_sent_to), log.udp_sent_to


def test_docs_page_and_assets_headers(system: dict[str, str]) -> None:
    live_api = system["base"]
    with httpx.Client(base_url=live_api, timeout=10) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "cdn." not in page.text and "https://" not in page.text
        assert f'src="{ASSETS_URL}swagger-ui-bundle.js"' in page.text
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert page.headers["Cache-Control"] == "no-store"

        bundle = client.get(f"{ASSETS_URL}swagger-ui-bundle.js")
        assert bundle.status_code == 200
        assert bundle.headers["Content-Type"].startswith(("text/javascript", "application/javascript"))
        assert "max-age=31536000" in bundle.headers["Cache-Control"]
        assert "immutable" in bundle.headers["Cache-Control"]
        assert client.get(f"{ASSETS_URL}swagger-ui.css").headers["Content-Type"].startswith("text/css")

        # The package's demo page points at petstore.swagger.io: not served.
        assert client.get(f"{ASSETS_URL}index.html").status_code == 404
        assert client.get(f"{ASSETS_URL}swagger-initializer.js").status_code == 404
        assert client.get(f"{ASSETS_URL}..%2Fswagger-ui.css").status_code == 404
