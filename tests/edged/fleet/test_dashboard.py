"""The fleet dashboard (``GET /fleet/``) in a real headless Chromium.

A fleet manager runs in-process on a real port; two simulated nodes are enrolled and push
signed batches exactly as real nodes do; epochs are closed over the operator API. The page
is then driven with Playwright: what it shows, that it refreshes itself, that payee ids are
shown as text (never markup), and that a failed fetch keeps the last data under a banner.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Page, async_playwright, expect

from attribution.payees import split_ppm
from edged.devtools.simulated_node import SimulatedNode
from edged.fleet.api import FLEET
from edged.fleet.app import create_fleet_app
from edged.settings import Settings
from sync.auth import sign_request
from tests.support.receipt_factory import key_from

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
# A payee id is any string a node signs; this one would run script if shown as markup.
XSS_PAYEE = '<img src=x onerror="window.__pwned=1">'
OWNER, DATA = "0x" + "11" * 20, "0x" + "22" * 20
REFRESH_TIMEOUT_MS = 10_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Fleet:
    """The fleet manager under test, and the operator/node calls the tests make on it."""

    def __init__(self, client: TestClient[Any, web.Application]) -> None:
        self.client = client
        self.service = client.app[FLEET]  # type: ignore[index]

    @property
    def url(self) -> str:
        # The security middleware serves only loopback Host names.
        return f"http://127.0.0.1:{self.client.port}/fleet/"

    async def enroll(self, node: SimulatedNode, label: str) -> None:
        response = await self.client.post("/fleet/nodes", json={"node": node.origin.hex(),
                                                                 "label": label})
        assert response.status == 201, await response.text()

    async def push(self, node: SimulatedNode, have: int) -> None:
        """Push receipts ``[have, node.size)`` signed as the node, as ``edged sync`` does."""
        body = node.batch(have).encode()
        headers = sign_request(node.key, "POST", "/v1/sync/push", body,
                               self.service.clock_ms(), secrets.token_bytes(16),
                               self.service.origin)
        response = await self.client.post("/v1/sync/push", data=body, headers=headers)
        assert response.status == 200, await response.text()
        assert (await response.json())["stored"] == node.size - have

    async def close_epoch(self) -> dict[str, Any]:
        response = await self.client.post("/fleet/epochs")
        assert response.status == 201, await response.text()
        return await response.json()

    async def set_address(self, payee: str, address: str) -> None:
        response = await self.client.put("/fleet/payees/" + quote(payee, safe=""),
                                         json={"address": address})
        assert response.status == 200, await response.text()

    async def settle(self) -> dict[str, Any]:
        response = await self.client.post("/fleet/settle")
        assert response.status == 200, await response.text()
        return await response.json()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    app = create_fleet_app(Settings(data_dir=tmp_path / "data", install_demo_model=False))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Fleet(client)


@pytest.fixture
async def browser_page() -> AsyncIterator[Page]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard tests need Debian's chromium "
                    "(`make test` installs it; or `apt-get install chromium`)", pytrace=False)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                   args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900},
                                                service_workers="block")
            try:
                yield await context.new_page()
            finally:
                await context.close()
        finally:
            await browser.close()


async def two_nodes_one_epoch(fleet: Fleet) -> tuple[SimulatedNode, SimulatedNode]:
    """edge-a: 10 receipts (fee 1000: 60% OWNER, 30% DATA, 10% operator-a); edge-b: 4
    receipts (fee 1000: 50% OWNER, 50% XSS_PAYEE). Epoch 1 owes OWNER 8000, DATA 3000,
    XSS_PAYEE 2000 and operator-a 1000: 14 receipts, 14000 in all."""
    a = SimulatedNode(key_from("dashboard-a"))
    b = SimulatedNode(key_from("dashboard-b"),
                      payees=split_ppm([(OWNER, "owner", 50), (XSS_PAYEE, "data", 50)]))
    await fleet.enroll(a, "edge-a")
    await fleet.enroll(b, "edge-b")
    a.append(6)
    await fleet.push(a, 0)
    a.append(4)
    await fleet.push(a, 6)
    b.append(4)
    await fleet.push(b, 0)
    epoch = await fleet.close_epoch()
    assert (epoch["epoch"], epoch["receipts"], epoch["total"]) == (1, 14, 14000)
    return a, b


async def bar_widths(page: Page) -> list[tuple[str, float, float]]:
    """(payee, CSS width in %, rendered width in px) of each payee bar, top to bottom."""
    return await page.eval_on_selector_all(
        "#payees .bar", "bars => bars.map(b => [b.dataset.payee, parseFloat(b.style.width), "
        "b.getBoundingClientRect().width])")


def save_screenshot(png: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "fleet-dashboard.png"
    path.write_bytes(png)
    extra = os.environ.get("EDGED_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(extra) / path.name)
    return path


async def test_dashboard_shows_the_fleet_and_refreshes_itself(
        fleet: Fleet, browser_page: Page, tmp_path: Path) -> None:
    page = browser_page
    a, _b = await two_nodes_one_epoch(fleet)
    await fleet.set_address("operator-a", "0x" + "33" * 20)
    await fleet.set_address(XSS_PAYEE, "0x" + "44" * 20)
    assert (await fleet.settle())["settled"] == [1]

    origin = fleet.url.removesuffix("/fleet/")
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: problems.append(
        f"{message.text} ({message.location.get('url')})") if message.type == "error"
        # The browser asks for /favicon.ico by itself; the fleet has none (a 404).
        and not message.location.get("url", "").endswith("/favicon.ico") else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    response = await page.goto(fleet.url)
    assert response is not None and response.status == 200

    # Header: the fleet key's fingerprint and the settlement mode.
    await expect(page.locator("#fleet-key")).to_have_text(fleet.service.origin.hex()[:16])
    await expect(page.locator("#mode")).to_have_text("local")
    await expect(page.locator("#updated")).to_have_text(re.compile(r"^updated \d\d:\d\d:\d\d$"))
    await expect(page.locator("#error")).to_be_hidden()

    # Nodes: labels, receipts held, lag, state.
    rows = page.locator("#nodes tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.locator("[data-testid=node-label]")).to_have_text(["edge-a", "edge-b"])
    await expect(rows.locator("[data-testid=node-size]")).to_have_text(["10", "4"])
    await expect(rows.locator("[data-testid=node-state]")).to_have_text(["active", "active"])
    await expect(rows.locator("[data-testid=node-lag]")).to_have_text(
        [re.compile(r"^\d+ m?s$")] * 2)  # seconds since each node's checkpoint

    # Epochs: one row, its total, settled into the local ledger.
    epochs = page.locator("#epochs tbody tr")
    await expect(epochs).to_have_count(1)
    await expect(epochs.first).to_have_attribute("data-epoch", "1")
    await expect(epochs.first.locator("[data-testid=epoch-receipts]")).to_have_text("14")
    await expect(epochs.first.locator("[data-testid=epoch-total]")).to_have_text("14,000")
    await expect(epochs.first.locator("[data-testid=epoch-settlement]")).to_have_text("local")

    # Top payees: bars ordered by amount, the largest 100% wide.
    await expect(page.locator("#payees .bar")).to_have_count(4)
    widths = await bar_widths(page)
    assert [(payee, css) for payee, css, _px in widths] == [
        (OWNER, 100.0), (DATA, 37.5), (XSS_PAYEE, 25.0), ("operator-a", 12.5)]
    pixels = [px for _payee, _css, px in widths]
    assert pixels == sorted(pixels, reverse=True) and pixels[-1] > 0

    # A payee id with markup in it is shown as text: no element is made, no script runs.
    await expect(page.locator("#payees [data-testid=payee-name]").nth(2)).to_have_text(
        XSS_PAYEE)
    assert await page.locator("img").count() == 0
    assert await page.evaluate("window.__pwned") is None

    # More receipts and a second epoch: the page picks them up by itself, without reload.
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    a.append(6)
    await fleet.push(a, 10)
    second = await fleet.close_epoch()
    assert (second["epoch"], second["receipts"], second["total"]) == (2, 6, 6000)
    await expect(epochs).to_have_count(2, timeout=REFRESH_TIMEOUT_MS)
    await expect(epochs.first).to_have_attribute("data-epoch", "2")  # newest first
    await expect(epochs.first.locator("[data-testid=epoch-total]")).to_have_text("6,000")
    await expect(epochs.locator("[data-testid=epoch-settlement]")).to_have_text(
        ["unsettled", "local"])
    await expect(rows.locator("[data-testid=node-size]")).to_have_text(["16", "4"])
    widths = await bar_widths(page)
    assert [(payee, css) for payee, css, _px in widths][:2] == [(OWNER, 100.0), (DATA, 41.37)]
    assert navigations == []

    # Everything the page loaded came from the fleet itself, without an error.
    assert requests and all(url.startswith(origin + "/") for url in requests), requests
    assert problems == []

    png = await page.screenshot(full_page=True)
    path = save_screenshot(png, tmp_path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 1280 and height >= 600


async def test_dashboard_keeps_the_last_data_under_a_banner_when_the_fetch_fails(
        fleet: Fleet, browser_page: Page) -> None:
    page = browser_page
    await two_nodes_one_epoch(fleet)
    await page.goto(fleet.url)
    rows = page.locator("#nodes tbody tr")
    await expect(rows).to_have_count(2)
    await expect(page.locator("#error")).to_be_hidden()

    await page.route("**/fleet/summary", lambda route: route.fulfill(
        status=503, content_type="application/json",
        body='{"error": {"message": "the fleet manager is starting"}}'))
    banner = page.locator("#error")
    await expect(banner).to_be_visible(timeout=REFRESH_TIMEOUT_MS)
    await expect(banner).to_contain_text("HTTP 503: the fleet manager is starting")
    await expect(banner).to_contain_text("showing data from")
    await expect(rows).to_have_count(2)  # the last data stays
    await expect(page.locator("#epochs tbody tr")).to_have_count(1)

    await page.unroute("**/fleet/summary")
    await expect(banner).to_be_hidden(timeout=REFRESH_TIMEOUT_MS)


async def test_dashboard_shows_chain_health_every_settlement_state_and_exact_amounts(
        fleet: Fleet, browser_page: Page) -> None:
    """A chain-mode summary (served by a route: no chain here), with one epoch in each
    settlement state, a failing chain, and amounts beyond 2**53 that must stay exact."""
    page = browser_page
    states = ["unsettled", "local", "pending", "included", "final", "failed", "unsent"]
    huge = 2**53 + 1  # JSON.parse would round this to 2**53
    summary = {
        "fleet": "ab" * 32, "now_ms": 1_800_000_060_000,
        "nodes": [{"node": "cd" * 32, "label": "", "enrolled_ms": 1_800_000_000_000,
                   "revoked_ms": None, "frozen": True, "size": 7,
                   "checkpoint_ts": 1_800_000_000_000, "last_ingest_ms": 1_800_000_000_000,
                   "lag_ms": 5_400_000}],
        "epochs": [{"epoch": n, "closed_ms": 1_800_000_000_000 + n, "receipts": n,
                    "total": huge if n == 1 else n, "settlement": state}
                   for n, state in enumerate(states, 1)],
        "top_payees": [{"payee": OWNER, "amount": huge}, {"payee": DATA, "amount": 2**52}],
        "settlement": {"mode": "chain", "failures": 3, "last_error": "connection refused",
                       "last_ok": 1_800_000_000.5, "retry_in_s": 95.0}}
    body = json.dumps(summary)
    await page.route("**/fleet/summary", lambda route: route.fulfill(
        status=200, content_type="application/json", body=body))
    await page.goto(fleet.url)

    await expect(page.locator("#mode")).to_have_text("chain")
    await expect(page.locator("#fleet-key")).to_have_text("ab" * 8)
    node = page.locator("#nodes tbody tr")
    await expect(node.locator("[data-testid=node-label]")).to_have_text("cd" * 8)
    await expect(node.locator("[data-testid=node-state]")).to_have_text("frozen")
    await expect(node.locator("[data-testid=node-lag]")).to_have_text("1 h 30 min")

    badges = page.locator("#epochs [data-testid=epoch-settlement]")
    await expect(badges).to_have_text(states[::-1])  # newest first
    classes = await badges.evaluate_all("bs => bs.map(b => b.className)")
    assert classes == [f"badge {state}" for state in states[::-1]]
    colours = await badges.evaluate_all("bs => bs.map(b => getComputedStyle(b).color)")
    assert len(set(colours)) >= 4  # grey, green, amber, blue, red: not all alike
    await expect(page.locator("#epochs tr[data-epoch='1'] [data-testid=epoch-total]")
                 ).to_have_text(f"{huge:,}")

    widths = await bar_widths(page)
    assert [(payee, css) for payee, css, _px in widths] == [(OWNER, 100.0), (DATA, 49.99)]
    await expect(page.locator("#health-failures")).to_have_text("3")
    await expect(page.locator("#health-error")).to_have_text("connection refused")
    await expect(page.locator("#health-retry")).to_have_text("1 min 35 s")


async def test_dashboard_asks_for_the_api_key_of_a_fleet_that_needs_one(
        tmp_path: Path, browser_page: Page) -> None:
    """With api_keys (a fleet reachable beyond loopback needs them) the page itself, which
    holds no data, loads without one and asks for the key; the data needs the key."""
    settings = Settings(data_dir=tmp_path / "data", install_demo_model=False,
                        api_keys=("fleet-secret",))
    app = create_fleet_app(settings)
    async with TestClient(TestServer(app, host="127.0.0.1"),
                          headers={"Authorization": "Bearer fleet-secret"}) as client:
        assert (await client.get("/fleet/summary", headers={"Authorization": ""})).status \
            == 401
        fleet = Fleet(client)
        await two_nodes_one_epoch(fleet)
        page = browser_page
        await page.goto(fleet.url)
        login = page.locator("#login")
        await expect(login).to_be_visible()
        await expect(page.locator("#error")).to_contain_text("HTTP 401")
        await page.fill("#api-key", "wrong")
        await page.click("#login button")
        await expect(login).to_be_visible(timeout=REFRESH_TIMEOUT_MS)  # refused: asks again
        await page.fill("#api-key", "fleet-secret")
        await page.click("#login button")
        await expect(page.locator("#nodes tbody tr")).to_have_count(2)
        await expect(login).to_be_hidden()
        await expect(page.locator("#error")).to_be_hidden()
