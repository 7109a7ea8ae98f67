"""Peer trust: enrolment, refusal of bad keys, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edged.errors import InvalidRequest, NotFound
from edged.peers import PeerStore

Client = TestClient[Any, web.Application]
KEY = "ab" * 32


def test_trust_untrust_and_persistence(tmp_path: Path) -> None:
    store = PeerStore(tmp_path / "peers.json", own_key="cd" * 32)
    store.trust(KEY.upper(), "lab")
    assert [p.key for p in store.trusted()] == [KEY]
    assert PeerStore(tmp_path / "peers.json", own_key="cd" * 32).is_trusted(bytes.fromhex(KEY))
    store.untrust(KEY)
    assert store.trusted() == []
    with pytest.raises(NotFound):
        store.untrust(KEY)


@pytest.mark.parametrize("key", ["", "ab" * 31, "zz" * 32, "../" + "a" * 61, "cd" * 32])
def test_bad_keys_and_self_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidRequest):
        PeerStore(tmp_path / "peers.json", own_key="cd" * 32).trust(key)


async def test_peers_api(client: Client) -> None:
    assert (await (await client.get("/api/peers")).json()) == {"trusted": [], "static": []}
    created = await client.post("/api/peers/trust", json={"key": KEY, "label": "lab"})
    assert created.status == 201
    listed = await (await client.get("/api/peers")).json()
    assert listed["trusted"][0]["fingerprint"] == KEY[:16]
    assert (await client.post("/api/peers/trust", json={"key": "nope"})).status == 400
    assert (await client.delete(f"/api/peers/trust/{KEY}")).status == 200
    assert (await client.delete(f"/api/peers/trust/{KEY}")).status == 404
