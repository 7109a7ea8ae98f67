"""A peer's heads answer is read by its declaration (edged.exchange.client.PeerHeads)."""

from __future__ import annotations

import json

import pytest

from edged.exchange.client import MAX_HEADS, parse_heads
from edged.http.sync_endpoint import SyncRefused

ORIGIN = "ab" * 32


def test_well_formed_heads_become_origins_and_sizes() -> None:
    body = json.dumps({"heads": [{"origin": ORIGIN, "size": 3},
                                 {"origin": ORIGIN.upper(), "size": 0}], "extra": 1})
    assert parse_heads(body.encode()) == [(bytes.fromhex(ORIGIN), 3),
                                          (bytes.fromhex(ORIGIN), 0)]


@pytest.mark.parametrize("answer", [
    b"not json", b"[]", b"{}", json.dumps({"heads": {}}).encode(),
    json.dumps({"heads": [{"origin": ORIGIN[:-1], "size": 1}]}).encode(),
    json.dumps({"heads": [{"origin": "g" * 64, "size": 1}]}).encode(),
    json.dumps({"heads": [{"origin": ORIGIN, "size": True}]}).encode(),
    json.dumps({"heads": [{"origin": ORIGIN, "size": -1}]}).encode(),
    json.dumps({"heads": [{"origin": ORIGIN, "size": "1"}]}).encode(),
    json.dumps({"heads": [{"origin": ORIGIN, "size": 1}] * (MAX_HEADS + 1)}).encode(),
], ids=range(10))
def test_anything_else_is_refused(answer: bytes) -> None:
    with pytest.raises(SyncRefused, match="malformed heads"):
        parse_heads(answer)
