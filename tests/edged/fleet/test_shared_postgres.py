"""Two `edged fleet serve` processes share one real PostgreSQL: a node's batches pushed to
both at once, and epochs closed on both at once, count every receipt exactly once."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edged.devtools.daemon import Daemon, clean_environment
from edged.devtools.simulated_node import SimulatedNode
from sync import merkle
from sync.auth import sign_request
from sync.batch import Batch
from tests.support.receipt_factory import key_from

pytestmark = pytest.mark.subprocess


@pytest.fixture
def fleets(tmp_path: Path, postgres_dsn: str) -> Iterator[list[Daemon]]:
    env = clean_environment(EDGED_FLEET_DATABASE=postgres_dsn)
    daemons = [Daemon(tmp_path / f"fleet{i}" / "data", command=("fleet", "serve"),
                      extra_args=(), env=env) for i in range(2)]
    try:
        for daemon in daemons:
            daemon.start()
        yield daemons
    finally:
        for daemon in daemons:
            daemon.stop()


def _fleet_key(fleet: Daemon) -> bytes:
    return bytes.fromhex(fleet.request_json("GET", "/fleet/summary")["body"]["fleet"])


def test_two_fleet_processes_never_count_a_receipt_twice(fleets: list[Daemon]) -> None:
    node = SimulatedNode(key_from("shared"), fee=10)
    enrolled = fleets[0].request_json("POST", "/fleet/nodes", {"node": node.origin.hex()})
    assert enrolled["status"] == 201
    assert fleets[1].request_json("GET", "/fleet/nodes")["body"]["nodes"][0]["node"] \
        == node.origin.hex()  # one database: enrolled at one fleet, known to both
    node.append(60)
    batches = [node.batch(0, 15)] + [
        Batch(node.origin, node.raws[start:start + 15], node.checkpoint(start + 15),
              merkle.consistency_proof(start, start + 15, node._tree), start)
        for start in range(15, 60, 15)]
    keys = [_fleet_key(fleet) for fleet in fleets]
    stored = [0, 0]

    def push_all(index: int) -> None:
        with httpx.Client(base_url=fleets[index].url, timeout=30) as client:
            for batch in batches:
                body = batch.encode()
                headers = sign_request(node.key, "POST", "/v1/sync/push", body,
                                       int(time.time() * 1000), secrets.token_bytes(16),
                                       keys[index])
                reply = client.post("/v1/sync/push", content=body, headers=headers)
                if reply.status_code == 200:
                    stored[index] += reply.json()["stored"]
                else:  # the other process stored it first: this proof is stale
                    assert reply.status_code == 400, reply.text

    threads = [threading.Thread(target=push_all, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(stored) == 60

    closes: list[int] = []

    def close(index: int) -> None:
        closes.append(fleets[index].request_json("POST", "/fleet/epochs")["status"])

    threads = [threading.Thread(target=close, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(closes) == [201, 409]
    for fleet in fleets:
        epochs = fleet.request_json("GET", "/fleet/epochs")["body"]["epochs"]
        assert [(e["epoch"], e["receipts"], e["total"]) for e in epochs] == [(1, 60, 600)]
