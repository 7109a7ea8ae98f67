"""Peer trust: enrolment, refusal of bad keys, persistence."""

from __future__ import annotations

import json
import os
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


def _count_file_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times peers.json is parsed, as a one-item list."""
    reads = [0]
    parse = json.loads

    def counting(text: Any, **kwargs: Any) -> Any:
        reads[0] += 1
        return parse(text, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    return reads


def test_trust_checks_read_the_file_only_when_it_changed(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "peers.json"
    store = PeerStore(path, own_key="cd" * 32)
    store.trust(KEY, "lab")
    reads = _count_file_reads(monkeypatch)
    for _ in range(100):
        assert store.is_trusted(bytes.fromhex(KEY))
        assert not store.is_trusted(bytes.fromhex("ef" * 32))
    assert reads[0] == 0  # its own write is what it holds

    other = PeerStore(path, own_key="cd" * 32)  # e.g. `edged peers trust` in another process
    other.trust("ef" * 32)
    assert store.is_trusted(bytes.fromhex("ef" * 32))
    assert store.is_trusted(bytes.fromhex(KEY))
    assert reads[0] == 2  # `other` read the file before writing it, `store` once after

    other.untrust(KEY)
    assert not store.is_trusted(bytes.fromhex(KEY))
    path.write_text(json.dumps({"trusted": {KEY: {"label": "by hand", "added": 1}}}))
    assert store.is_trusted(bytes.fromhex(KEY)) and not store.is_trusted(bytes.fromhex("ef" * 32))
    assert [(p.key, p.label) for p in store.trusted()] == [(KEY, "by hand")]
    path.unlink()
    assert not store.is_trusted(bytes.fromhex(KEY)) and store.trusted() == []


def test_an_edit_of_the_same_size_and_time_is_seen(tmp_path: Path) -> None:
    """A rewrite keeping the file's size and modification time still replaces the file
    (another inode), as every write of a PeerStore does."""
    path = tmp_path / "peers.json"
    store = PeerStore(path, own_key="cd" * 32)
    store.trust(KEY, "aa")
    before = path.stat()
    replacement = tmp_path / "edited.json"
    replacement.write_text(path.read_text().replace(KEY, "ef" * 32))
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    replacement.replace(path)
    assert not store.is_trusted(bytes.fromhex(KEY))
    assert store.is_trusted(bytes.fromhex("ef" * 32))


async def test_peers_api(client: Client) -> None:
    assert (await (await client.get("/api/peers")).json()) == {"trusted": [], "static": []}
    created = await client.post("/api/peers/trust", json={"key": KEY, "label": "lab"})
    assert created.status == 201
    listed = await (await client.get("/api/peers")).json()
    assert listed["trusted"][0]["fingerprint"] == KEY[:16]
    assert (await client.post("/api/peers/trust", json={"key": "nope"})).status == 400
    assert (await client.delete(f"/api/peers/trust/{KEY}")).status == 200
    assert (await client.delete(f"/api/peers/trust/{KEY}")).status == 404
