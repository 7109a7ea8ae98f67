"""The fleet manager over HTTP: nodes push with the signed exchange (only enrolled keys),
the operator enrolls, revokes, closes epochs and fetches proofs; errors in one shape."""

from __future__ import annotations

import io
import secrets
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edged.app import create_app
from edged.devtools.simulated_node import SimulatedNode
from edged.fleet.api import FLEET
from edged.fleet.app import create_fleet_app
from edged.fleet.store import FleetRefused
from edged.ledger import LEDGER
from edged.manifest import RUNTIMES
from edged.settings import Settings
from sync.auth import sign_request
from tests.edged.conftest import FAKE_MODEL, fake_loader, install_fake_model, make_settings
from tests.support.receipt_factory import key_from
from tests.support.waiting import wait_until

Client = TestClient[Any, web.Application]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings(data_dir=tmp_path / "fleet-data", install_demo_model=False)
    async with TestClient(TestServer(create_fleet_app(settings))) as client:
        yield client


async def _push(fleet: Client, node: SimulatedNode, body: bytes) -> Any:
    headers = sign_request(node.key, "POST", "/v1/sync/push", body, int(time.time() * 1000),
                           secrets.token_bytes(16), fleet.app[FLEET].origin)
    return await fleet.post("/v1/sync/push", data=io.BytesIO(body), headers=headers)


async def _serve(node: Client, count: int) -> None:
    for number in range(count):
        reply = await node.post("/v1/completions", json={"model": FAKE_MODEL,
                                                         "prompt": f"p{number}",
                                                         "max_tokens": 2})
        assert reply.status == 200


def _assert_error(body: Any, code: str) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code


async def test_only_enrolled_nodes_may_push(fleet: Client) -> None:
    node = SimulatedNode(key_from("a"))
    node.append(3)
    body = node.batch(0, ts=int(time.time() * 1000) - 1000).encode()  # signed a second ago
    reply = await _push(fleet, node, body)
    assert reply.status == 403  # the request signature is from a key nobody enrolled
    unsigned = await fleet.post("/v1/sync/push", data=body)
    assert unsigned.status == 401
    _assert_error(await unsigned.json(), "invalid_api_key")

    enrolled = await fleet.post("/fleet/nodes", json={"node": node.origin.hex(), "label": "a"})
    assert enrolled.status == 201
    reply = await _push(fleet, node, body)  # its checkpoint was signed before enrollment
    assert reply.status == 403
    _assert_error(await reply.json(), "before_enrollment")
    reply = await _push(fleet, node, node.batch(0).encode())
    assert reply.status == 200 and (await reply.json()) == {"stored": 3}

    revoked = await fleet.delete(f"/fleet/nodes/{node.origin.hex()}")
    assert revoked.status == 200 and (await revoked.json())["revoked_ms"] is not None
    node.append(1)
    reply = await _push(fleet, node, node.batch(3).encode())
    assert reply.status == 403
    nodes = (await (await fleet.get("/fleet/nodes")).json())["nodes"]
    assert [(n["label"], n["size"]) for n in nodes] == [("a", 3)]


async def test_bad_operator_input_is_refused_in_the_error_shape(fleet: Client) -> None:
    bodies: list[Any] = [{"node": "zz"}, {"node": 5}, [], {"node": "ab" * 32, "label": 7}]
    for body in bodies:
        reply = await fleet.post("/fleet/nodes", json=body)
        assert reply.status == 400, body
        assert (await reply.json())["error"]["type"] == "invalid_request_error"
    reply = await fleet.get("/fleet/epochs/1")
    assert reply.status == 404
    _assert_error(await reply.json(), "unknown_epoch")
    for bad in ("x", "%C2%B3", "1" * 19):  # "³" is a Unicode digit, not an epoch (a 500 once)
        reply = await fleet.get(f"/fleet/epochs/{bad}")
        assert reply.status == 400
        assert (await reply.json())["error"]["param"] == "epoch"
    reply = await fleet.post("/fleet/epochs")
    assert reply.status == 409
    _assert_error(await reply.json(), "empty_epoch")
    reply = await fleet.put("/fleet/payees/someone", json={"address": "nope"})
    assert reply.status == 400
    _assert_error(await reply.json(), "payee_not_address")
    reply = await fleet.get("/fleet/summary", headers={"Host": "evil.example"})
    assert reply.status == 403  # DNS rebinding: the Host allowlist applies here too
    reply = await fleet.post("/fleet/chain/deploy")
    assert reply.status == 409
    _assert_error(await reply.json(), "no_chain")


@pytest.mark.parametrize(("method", "path", "body", "param"), [
    ("post", "/fleet/nodes", {"node": "ab" * 32, "lable": "typo"}, "lable"),
    ("post", "/fleet/nodes", {"node": "ab" * 32, "label": "x" * 129}, "label"),
    ("post", "/fleet/nodes", {"node": "ab" * 31}, "node"),
    ("post", "/fleet/nodes", {}, "node"),
    ("put", "/fleet/payees/someone", {}, "address"),
    ("put", "/fleet/payees/someone", {"address": "0x" + "ab" * 20, "chain": 1}, "chain"),
])
async def test_operator_bodies_are_checked_against_their_declaration(
        fleet: Client, method: str, path: str, body: dict[str, Any], param: str) -> None:
    reply = await getattr(fleet, method)(path, json=body)
    assert reply.status == 400
    error = (await reply.json())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_a_node_key_is_normalised_and_the_bodies_are_documented(fleet: Client) -> None:
    node = SimulatedNode(key_from("a"))
    reply = await fleet.post("/fleet/nodes", json={"node": f" {node.origin.hex().upper()} "})
    assert reply.status == 201
    nodes = (await (await fleet.get("/fleet/nodes")).json())["nodes"]
    assert [n["node"] for n in nodes] == [node.origin.hex()]
    document = await (await fleet.get("/openapi.json")).json()
    schema = document["paths"]["/fleet/nodes"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert set(schema["properties"]) == {"node", "label"} and schema["required"] == ["node"]
    assert schema["additionalProperties"] is False


async def test_epoch_and_proof_endpoints(fleet: Client) -> None:
    node = SimulatedNode(key_from("a"), fee=100)
    await fleet.post("/fleet/nodes", json={"node": node.origin.hex()})
    node.append(4)
    assert (await _push(fleet, node, node.batch(0).encode())).status == 200
    closed = await (await fleet.post("/fleet/epochs")).json()
    assert closed["total"] == 400 and closed["unresolved"] == ["operator-a"]
    reply = await fleet.get("/fleet/epochs/1/proof/operator-a")
    assert reply.status == 409
    _assert_error(await reply.json(), "payee_not_address")
    await fleet.put("/fleet/payees/operator-a", json={"address": "0x" + "33" * 20})
    proof = await (await fleet.get("/fleet/epochs/1/proof/operator-a")).json()
    assert proof["amount"] == "40" and proof["leaf_count"] == 3
    plan = await (await fleet.get("/fleet/settlement")).json()
    assert plan["mode"] == "local"
    assert [a["action"] for a in plan["plan"]] == ["recordCheckpoint", "postEpoch"]
    assert plan["plan"][1]["value"] == "400"
    settled = await (await fleet.post("/fleet/settle")).json()
    assert settled == {"mode": "local", "settled": [1], "blocked": {}}
    listed = await (await fleet.get("/fleet/epochs")).json()
    assert listed["epochs"][0]["settlement"] == "local"
    inclusion = await fleet.get(f"/fleet/receipts/{node.origin.hex()}/2/proof")
    assert inclusion.status == 200 and (await inclusion.json())["seq"] == 2
    refused = await fleet.get(f"/fleet/receipts/{node.origin.hex()}/%C2%B2/proof")  # "²"
    assert refused.status == 400 and (await refused.json())["error"]["param"] == "seq"


async def test_a_node_pushes_to_the_fleet_it_trusts(fleet: Client, data_dir: Path,
                                                    aiohttp_client: Any) -> None:
    """A real node app (fake runtime) pushes its receipts to the fleet over HTTP."""
    fleet_url = str(fleet.make_url("")).rstrip("/")
    settings = make_settings(data_dir, fleet_url=fleet_url)
    node = await aiohttp_client(create_app(settings, loader=fake_loader(), runtimes=RUNTIMES))
    node_key = (await (await node.get("/api/node")).json())["public_key"]
    await _serve(node, 3)

    result = await (await node.post("/api/sync/now")).json()
    assert result["fleet"][fleet_url].startswith("error")  # the fleet's key is not trusted
    await node.post("/api/peers/trust", json={"key": fleet.app[FLEET].origin.hex()})
    result = await (await node.post("/api/sync/now")).json()
    assert result["fleet"][fleet_url].startswith("error")  # not enrolled at the fleet yet
    # The node signed a checkpoint of its log before it was enrolled; its pushes must
    # still go through (they are signed afresh).
    before = node.app[LEDGER].cut_checkpoint(int(time.time() * 1000) - 60_000)
    assert before.checkpoint.size == 3
    await fleet.post("/fleet/nodes", json={"node": node_key, "label": "n1"})
    result = await (await node.post("/api/sync/now")).json()
    assert result["fleet"] == {fleet_url: "ok: 3 new"}
    nodes = (await (await fleet.get("/fleet/nodes")).json())["nodes"]
    assert nodes[0]["size"] == 3 and nodes[0]["lag_ms"] is not None
    status = await (await node.get("/api/sync/status")).json()
    assert status["fleet"]["stored"] == 3 and status["fleet"]["last_error"] is None
    result = await (await node.post("/api/sync/now")).json()
    assert result["fleet"] == {fleet_url: "ok: 0 new"}


async def test_a_full_size_batch_arrives_whole(fleet: Client) -> None:
    """A push of thousands of receipts (megabytes, in many TCP reads) is read whole."""
    node = SimulatedNode(key_from("big"))
    await fleet.post("/fleet/nodes", json={"node": node.origin.hex()})
    node.append(4096)
    body = node.batch(0).encode()
    assert len(body) > 2_000_000
    reply = await _push(fleet, node, body)
    assert reply.status == 200, await reply.text()
    assert (await reply.json()) == {"stored": 4096}


async def test_epochs_close_by_themselves_every_epoch_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=tmp_path / "fleet-data", install_demo_model=False,
                        epoch_interval=0.2)
    async with TestClient(TestServer(create_fleet_app(settings))) as fleet:
        node = SimulatedNode(key_from("a"))
        await fleet.post("/fleet/nodes", json={"node": node.origin.hex()})
        node.append(3)
        assert (await _push(fleet, node, node.batch(0).encode())).status == 200

        async def listed() -> list[dict[str, Any]]:
            epochs: list[dict[str, Any]] = (await (await fleet.get("/fleet/epochs")).json())[
                "epochs"]
            return epochs

        epochs = await wait_until(listed, what="the fleet closes an epoch by itself")
        assert [(e["epoch"], e["receipts"]) for e in epochs] == [(1, 3)]

        # Count the periodic closer's attempts from now on: once two have finished with
        # nothing new, no empty epoch may have been closed.
        epochs_service = fleet.app[FLEET].epochs
        close = epochs_service.close
        attempts: list[str] = []

        def counted_close() -> dict[str, Any]:
            try:
                closed = close()
            except FleetRefused as refused:
                attempts.append(refused.code or "")
                raise
            attempts.append("closed")
            return closed

        monkeypatch.setattr(epochs_service, "close", counted_close)
        await wait_until(lambda: len(attempts) >= 2,
                         what="the closer tries twice more with nothing new")
        assert attempts[:2] == ["empty_epoch", "empty_epoch"]
        epochs = await listed()
        assert len(epochs) == 1


async def test_a_node_forwards_a_peers_receipts_to_the_fleet(fleet: Client, data_dir: Path,
                                                              tmp_path: Path,
                                                              aiohttp_client: Any) -> None:
    """Store and forward: node B pulled node A's receipts; A never talks to the fleet, yet
    the fleet gets them (verified against A's own signed checkpoint) through B."""
    node_a = await aiohttp_client(create_app(make_settings(data_dir), loader=fake_loader(),
                                             runtimes=RUNTIMES))
    b_dir = tmp_path / "b"
    install_fake_model(b_dir)
    fleet_url = str(fleet.make_url("")).rstrip("/")
    a_url = str(node_a.make_url("")).rstrip("/")
    node_b = await aiohttp_client(create_app(
        make_settings(b_dir, fleet_url=fleet_url, peers=(a_url,)), loader=fake_loader(),
        runtimes=RUNTIMES))
    key_a = (await (await node_a.get("/api/node")).json())["public_key"]
    key_b = (await (await node_b.get("/api/node")).json())["public_key"]
    await node_a.post("/api/peers/trust", json={"key": key_b})
    await node_b.post("/api/peers/trust", json={"key": key_a})
    await node_b.post("/api/peers/trust", json={"key": fleet.app[FLEET].origin.hex()})
    for key in (key_a, key_b):
        await fleet.post("/fleet/nodes", json={"node": key})
    await _serve(node_a, 4)
    result = await (await node_b.post("/api/sync/now")).json()
    assert result["peers"] == {a_url: "ok: 4 new"}
    assert result["fleet"] == {fleet_url: "ok: 4 new"}
    held = {n["node"]: n["size"] for n in (await (await fleet.get("/fleet/nodes")).json())
            ["nodes"]}
    assert held == {key_a: 4, key_b: 0}


def _fleet_processes(tmp_path: Path, reload_s: float) -> tuple[web.Application, ...]:
    """Two fleet apps sharing one database, as two fleet processes sharing a PostgreSQL;
    the second reads all enrolled keys again every ``reload_s``."""
    shared = "sqlite:" + str(tmp_path / "shared.sqlite3")
    return (create_fleet_app(Settings(data_dir=tmp_path / "first", install_demo_model=False,
                                      fleet_database=shared)),
            create_fleet_app(Settings(data_dir=tmp_path / "second", install_demo_model=False,
                                      fleet_database=shared), enrollment_reload_s=reload_s))


async def _signed_heads(fleet: Client, node: SimulatedNode) -> int:
    reply = await fleet.get("/v1/sync/heads", headers=sign_request(
        node.key, "GET", "/v1/sync/heads", b"", int(time.time() * 1000),
        secrets.token_bytes(16), fleet.app[FLEET].origin))
    return reply.status


async def test_a_node_enrolled_at_another_fleet_process_is_accepted_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown caller's key is read from the database in a thread; no sync request
    reads the database on the event loop."""
    first_app, second_app = _fleet_processes(tmp_path, reload_s=3600)
    async with TestClient(TestServer(first_app)) as first, \
            TestClient(TestServer(second_app)) as second:
        loop_thread = threading.get_ident()
        used_on_loop: list[str] = []
        db = second.app[FLEET].store.db

        def spy_on(name: str) -> None:
            original = getattr(db, name)

            def spy() -> Any:
                if threading.get_ident() == loop_thread:
                    used_on_loop.append(name)
                return original()
            monkeypatch.setattr(db, name, spy)

        spy_on("reading")
        spy_on("transaction")

        node = SimulatedNode(key_from("a"))
        node.append(3)
        enrolled = await first.post("/fleet/nodes", json={"node": node.origin.hex()})
        assert enrolled.status == 201
        reply = await _push(second, node, node.batch(0).encode())
        assert reply.status == 200 and (await reply.json()) == {"stored": 3}
        assert await _signed_heads(second, node) == 200

        revoked = await first.delete(f"/fleet/nodes/{node.origin.hex()}")
        assert revoked.status == 200
        node.append(1)
        reply = await _push(second, node, node.batch(3).encode())
        assert reply.status == 403  # ingest reads the node's row itself
        _assert_error(await reply.json(), "revoked_node")
        stranger = SimulatedNode(key_from("stranger"))
        stranger.append(1)
        assert (await _push(second, stranger, stranger.batch(0).encode())).status == 403
        assert await _signed_heads(second, stranger) == 403
    assert used_on_loop == []


async def test_enrollments_at_another_fleet_process_are_read_again_periodically(
        tmp_path: Path) -> None:
    first_app, second_app = _fleet_processes(tmp_path, reload_s=0.05)
    async with TestClient(TestServer(first_app)) as first, \
            TestClient(TestServer(second_app)) as second:
        store = second.app[FLEET].store
        node = SimulatedNode(key_from("a"))

        async def until(enrolled: bool) -> None:
            await wait_until(lambda: store.is_enrolled(node.origin) == enrolled,
                             what=f"the second process reads enrolled={enrolled}")

        assert (await first.post("/fleet/nodes", json={"node": node.origin.hex()})).status \
            == 201
        await until(enrolled=True)
        assert await _signed_heads(second, node) == 200
        assert (await first.delete(f"/fleet/nodes/{node.origin.hex()}")).status == 200
        await until(enrolled=False)
        assert await _signed_heads(second, node) == 403
