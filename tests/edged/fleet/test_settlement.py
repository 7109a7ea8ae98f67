"""The fleet settling on a real anvil chain: a chain that goes down is retried with backoff
and loses nothing; an account without funds gets a clear error; a settled epoch's status
follows its transactions to final."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from attribution.payees import split_ppm
from edged.devtools.simulated_node import SimulatedNode
from edged.fleet.api import FLEET
from edged.fleet.app import create_fleet_app
from edged.settings import Settings
from tests.edged.fleet.test_api import _push
from tests.support.anvil import AnvilNode, RpcGate
from tests.support.receipt_factory import key_from

pytestmark = pytest.mark.chain
Client = TestClient[Any, web.Application]
PAYEES = split_ppm([("0x" + "c1" * 20, "owner", 70), ("0x" + "c2" * 20, "operator", 30)])



@pytest.fixture
def gate(anvil: AnvilNode) -> Iterator[RpcGate]:
    gate = RpcGate(anvil.url)
    try:
        yield gate
    finally:
        gate.close()


def _settings(tmp_path: Path, chain_url: str, key_file: Path) -> Settings:
    return Settings(data_dir=tmp_path / "fleet", install_demo_model=False, chain_url=chain_url,
                    chain_account_key_file=key_file, chain_confirmations=2)


@pytest.fixture
async def fleet(tmp_path: Path, operator_key_file: Path,
                gate: RpcGate) -> AsyncIterator[Client]:
    settings = _settings(tmp_path, gate.url, operator_key_file)
    async with TestClient(TestServer(create_fleet_app(settings))) as client:
        yield client


async def _closed_epoch(fleet: Client) -> dict[str, Any]:
    node = SimulatedNode(key_from("a"), fee=999, payees=PAYEES)
    await fleet.post("/fleet/nodes", json={"node": node.origin.hex()})
    node.append(5)
    assert (await _push(fleet, node, node.batch(0).encode())).status == 200
    closed: dict[str, Any] = await (await fleet.post("/fleet/epochs")).json()
    return closed


async def test_a_chain_that_is_down_is_retried_and_nothing_is_lost(
        fleet: Client, gate: RpcGate, anvil: AnvilNode) -> None:
    deployed = await fleet.post("/fleet/chain/deploy")
    assert deployed.status == 201
    await _closed_epoch(fleet)

    gate.down = True
    reply = await fleet.post("/fleet/settle")
    assert reply.status == 503
    error = (await reply.json())["error"]
    assert error["code"] == "chain_unavailable" and "nothing is lost" in error["message"]
    status = await (await fleet.get("/fleet/settlement")).json()
    assert status["health"]["failures"] == 1 and status["health"]["retry_in_s"] > 0
    assert status["chain"]["reachable"] is False
    summary = await (await fleet.get("/fleet/summary")).json()
    assert summary["settlement"]["failures"] == 1  # the dashboard shows it too

    gate.down = False
    reply = await fleet.post("/fleet/settle")
    assert reply.status == 200, await reply.text()
    epoch = await (await fleet.get("/fleet/epochs/1")).json()
    assert epoch["settlement"] in ("pending", "included")
    anvil.mine(2)
    assert (await fleet.post("/fleet/settle")).status == 200
    epoch = await (await fleet.get("/fleet/epochs/1")).json()
    assert epoch["settlement"] == "final"
    status = await (await fleet.get("/fleet/settlement")).json()
    assert status["health"]["failures"] == 0
    adapter = fleet.app[FLEET].settler.adapter
    assert adapter.epoch(1)["total"] == epoch["total"] == 5 * 999


async def test_an_account_without_funds_gets_a_clear_error(tmp_path: Path,
                                                           anvil: AnvilNode) -> None:
    # No key file yet: the fleet creates one (0600) for a new, unfunded account.
    settings = _settings(tmp_path, anvil.url, tmp_path / "keys" / "new-account.key")
    async with TestClient(TestServer(create_fleet_app(settings))) as fleet:
        assert (tmp_path / "keys" / "new-account.key").stat().st_mode & 0o777 == 0o600
        address = fleet.app[FLEET].settler.adapter.address
        reply = await fleet.post("/fleet/chain/deploy")
        assert reply.status == 402
        error = (await reply.json())["error"]
        assert error["code"] == "insufficient_funds" and address in error["message"]
        assert anvil.balance(address) == 0


async def test_the_fleet_settles_by_itself_every_settle_interval(
        tmp_path: Path, anvil: AnvilNode, operator_key_file: Path) -> None:
    settings = dataclasses.replace(_settings(tmp_path, anvil.url, operator_key_file),
                                   settle_interval=0.2, chain_confirmations=1)
    async with TestClient(TestServer(create_fleet_app(settings))) as fleet:
        assert (await fleet.post("/fleet/chain/deploy")).status == 201
        await _closed_epoch(fleet)
        for _ in range(100):
            epoch = await (await fleet.get("/fleet/epochs/1")).json()
            if epoch["settlement"] == "final":
                break
            anvil.mine(1)
            await asyncio.sleep(0.1)
        assert epoch["settlement"] == "final"
        assert fleet.app[FLEET].settler.adapter.epoch(1)["total"] == 5 * 999


async def test_an_epoch_that_owes_nothing_does_not_block_the_next(fleet: Client,
                                                                  anvil: AnvilNode) -> None:
    """A free model's epoch has an empty payout tree: its checkpoints are anchored, nothing
    is posted (the contract refuses empty epochs), and the next epoch settles."""
    assert (await fleet.post("/fleet/chain/deploy")).status == 201
    node = SimulatedNode(key_from("free"), fee=0, payees=PAYEES)
    await fleet.post("/fleet/nodes", json={"node": node.origin.hex()})
    node.append(3)
    assert (await _push(fleet, node, node.batch(0).encode())).status == 200
    assert (await (await fleet.post("/fleet/epochs")).json())["total"] == 0
    node.fee = 50
    node.append(2)
    assert (await _push(fleet, node, node.batch(3).encode())).status == 200
    assert (await (await fleet.post("/fleet/epochs")).json())["total"] == 100
    plan = (await (await fleet.get("/fleet/settlement")).json())["plan"]
    assert {"action": "postEpoch", "epoch": 1, "status": "nothing to pay"} in plan
    settled = await (await fleet.post("/fleet/settle")).json()
    assert settled["settled"] == [1, 2] and settled["blocked"] == {}
    anvil.mine(2)
    await fleet.post("/fleet/settle")
    for epoch, total in ((1, 0), (2, 100)):
        summary = await (await fleet.get(f"/fleet/epochs/{epoch}")).json()
        assert summary["settlement"] == "final" and summary["total"] == total, summary
    adapter = fleet.app[FLEET].settler.adapter
    assert adapter.epoch(2)["total"] == 100 and adapter.epoch(1)["leaf_count"] == 0
