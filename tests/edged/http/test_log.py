"""The Merkle log over HTTP: checkpoints, inclusion and consistency proofs."""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from sync import merkle
from sync.checkpoint import SignedCheckpoint
from tests.edged.conftest import FAKE_MODEL

Client = TestClient[Any, web.Application]
REQUEST = {"model": FAKE_MODEL, "prompt": "hi", "max_tokens": 2}


async def _serve(client: Client, count: int) -> list[bytes]:
    leaves = []
    for _ in range(count):
        body = await (await client.post("/v1/completions", json=REQUEST)).json()
        leaves.append(bytes.fromhex(body["receipt"]["id"]))
    return leaves


def _checkpoint(body: dict[str, Any]) -> SignedCheckpoint:
    signed = SignedCheckpoint.decode(base64.b64decode(body["raw"]))
    signed.verify()
    assert signed.to_json() == {k: v for k, v in body.items() if k != "raw"}
    return signed


async def test_checkpoint_proofs_and_consistency(client: Client) -> None:
    leaves = await _serve(client, 5)
    first = _checkpoint(await (await client.get("/v1/sync/checkpoint")).json())
    assert first.checkpoint.size == 5
    assert first.checkpoint.root == merkle.reference_root(leaves)
    node = (await (await client.get("/api/node")).json())["public_key"]
    assert first.checkpoint.origin.hex() == node

    leaves += await _serve(client, 6)
    second = _checkpoint(await (await client.get("/v1/sync/checkpoint")).json())
    assert second.checkpoint.size == 11
    consistency = await (await client.get("/v1/sync/consistency",
                                          params={"first": 5, "second": 11})).json()
    merkle.verify_consistency(5, 11, first.checkpoint.root, second.checkpoint.root,
                              [bytes.fromhex(h) for h in consistency["proof"]])

    for seq in (0, 4, 10):
        proof = await (await client.get(f"/v1/receipts/{leaves[seq].hex()}/proof")).json()
        assert proof["seq"] == seq and proof["size"] == 11
        merkle.verify_inclusion(leaves[seq], seq, 11, [bytes.fromhex(h) for h in proof["proof"]],
                                second.checkpoint.root)
    old = await (await client.get(f"/v1/receipts/{leaves[2].hex()}/proof",
                                  params={"size": 5})).json()
    merkle.verify_inclusion(leaves[2], 2, 5, [bytes.fromhex(h) for h in old["proof"]],
                            first.checkpoint.root)


async def test_same_log_same_checkpoint_and_bad_queries(client: Client) -> None:
    await _serve(client, 3)
    a = await (await client.get("/v1/sync/checkpoint")).json()
    b = await (await client.get("/v1/sync/checkpoint", params={"fresh": "1"})).json()
    assert a == b  # the log did not grow: the node does not sign a second checkpoint
    leaf = (await (await client.get("/v1/receipts")).json())["data"][2]["id"]
    assert (await client.get(f"/v1/receipts/{leaf}/proof", params={"size": 2})).status in (
        400, 404)
    assert (await client.get("/v1/sync/consistency", params={"first": 3, "second": 1})
            ).status == 400
    assert (await client.get("/v1/sync/consistency", params={"second": 99})).status == 400
    assert (await client.get("/v1/receipts/" + "00" * 32 + "/proof")).status == 404
