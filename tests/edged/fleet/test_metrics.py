"""GET /metrics on the fleet manager: ingest, epochs and settlement on a real anvil chain
(down once, then up), and the API key rule."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from attribution.payees import split_ppm
from edged.devtools.simulated_node import SimulatedNode
from edged.fleet.app import create_fleet_app
from edged.settings import Settings
from tests.edged.fleet.test_api import _push
from tests.edged.test_metrics import Samples, scrape, value
from tests.support.anvil import AnvilNode, RpcGate
from tests.support.receipt_factory import key_from

Client = TestClient[Any, web.Application]
PAYEES = split_ppm([("0x" + "d1" * 20, "owner", 60), ("0x" + "d2" * 20, "operator", 40)])
API_KEY = "fleet-metrics-key"

FLEET_FAMILIES = {
    "edged_http_requests": "counter",
    "edged_http_request_duration_seconds": "histogram",
    "edged_fleet_ingest_seconds": "histogram",
    "edged_fleet_receipts_ingested": "counter",
    "edged_fleet_node_lag_seconds": "gauge",
    "edged_fleet_epochs_closed": "counter",
    "edged_fleet_latest_epoch": "gauge",
    "edged_fleet_epochs_settled": "counter",
    "edged_fleet_settlement_transactions": "gauge",
    "edged_fleet_chain_errors": "counter",
    "edged_fleet_chain_consecutive_failures": "gauge",
}


@pytest.fixture
def gate(anvil: AnvilNode) -> Iterator[RpcGate]:
    gate = RpcGate(anvil.url)
    try:
        yield gate
    finally:
        gate.close()


@pytest.fixture
async def fleet(tmp_path: Path, operator_key_file: Path,
                gate: RpcGate) -> AsyncIterator[Client]:
    settings = Settings(data_dir=tmp_path / "fleet", install_demo_model=False,
                        chain_url=gate.url, chain_account_key_file=operator_key_file,
                        chain_confirmations=2)
    async with TestClient(TestServer(create_fleet_app(settings))) as client:
        yield client


def _types(samples: Samples) -> dict[str, str]:
    return samples["__types__"][0][0]


@pytest.mark.chain
async def test_ingest_epochs_and_settlement_move_the_fleet_families(
        fleet: Client, gate: RpcGate) -> None:
    assert (await fleet.post("/fleet/chain/deploy")).status == 201
    node = SimulatedNode(key_from("metrics"), fee=500, payees=PAYEES)
    await fleet.post("/fleet/nodes", json={"node": node.origin.hex()})
    node.append(4)
    batch = node.batch(0).encode()
    assert (await _push(fleet, node, batch)).status == 200
    assert (await _push(fleet, node, batch)).status == 400  # a stale batch is refused
    assert (await fleet.post("/fleet/epochs")).status in (200, 201)

    gate.down = True
    assert (await fleet.post("/fleet/settle")).status == 503
    gate.down = False
    assert (await fleet.post("/fleet/settle")).status == 200

    text, samples = await scrape(fleet)
    for name, kind in FLEET_FAMILIES.items():
        assert _types(samples).get(name) == kind, name
    fingerprint = node.origin.hex()[:16]
    assert value(samples, "edged_fleet_receipts_ingested_total", node=fingerprint) == 4
    assert value(samples, "edged_fleet_node_lag_seconds", node=fingerprint) >= 0
    assert value(samples, "edged_fleet_ingest_seconds_count", outcome="stored") == 1
    assert value(samples, "edged_fleet_ingest_seconds_count", outcome="invalid_batch") == 1
    assert value(samples, "edged_fleet_epochs_closed_total") == 1
    assert value(samples, "edged_fleet_latest_epoch") == 1
    assert value(samples, "edged_fleet_epochs_settled_total") == 1
    assert value(samples, "edged_fleet_chain_errors_total") == 1
    assert value(samples, "edged_fleet_chain_consecutive_failures") == 0

    # The same transactions, by state, as the fleet's own settlement report lists them.
    report = await (await fleet.get("/fleet/settlement")).json()
    listed = Counter(tx["status"] for tx in report["transactions"])
    assert sum(listed.values()) >= 3  # deploy, the checkpoint, the epoch's root
    for state in ("pending", "included", "final", "failed"):
        assert value(samples, "edged_fleet_settlement_transactions", state=state) \
            == listed[state], state

    assert value(samples, "edged_http_requests_total", route_group="sync", status="200") == 1
    assert value(samples, "edged_http_requests_total", route_group="sync", status="400") == 1
    assert value(samples, "edged_http_requests_total", route_group="fleet", status="503") == 1
    assert node.origin.hex() not in text  # nodes are named by fingerprint only


async def test_fleet_metrics_need_the_api_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "fleet", install_demo_model=False,
                        api_keys=(API_KEY,))
    async with TestClient(TestServer(create_fleet_app(settings))) as fleet:
        assert (await fleet.get("/metrics")).status == 401
        _, samples = await scrape(fleet, {"Authorization": f"Bearer {API_KEY}"})
    for name, kind in FLEET_FAMILIES.items():
        assert _types(samples).get(name) == kind, name
    assert value(samples, "edged_http_requests_total", route_group="other",
                 status="401") == 1
    assert value(samples, "edged_fleet_epochs_closed_total") == 0
