"""Model advertisements: only a fresh one, signed by the peer's key for this node, is used."""

from __future__ import annotations

from typing import Any

import pytest
from nacl.signing import SigningKey

from attribution import canonical
from edged.federation_adverts import ADVERT_DOMAIN, AdvertError, parse_advert

NOW = 1_700_000_000_000
PEER = SigningKey(b"\x01" * 32)
ME = bytes(SigningKey(b"\x02" * 32).verify_key)
MODEL = {"name": "tiny", "runtime": "llama.cpp", "weights": "ab" * 32,
         "manifest": "cd" * 32, "kinds": ["chat", "completion"], "owner": "lab",
         "price": {"request": 3}, "free_slots": 4, "queued": 1}


def _signed(key: SigningKey = PEER, **changes: Any) -> dict[str, Any]:
    advert = {"v": 1, "node": bytes(key.verify_key).hex(), "aud": ME.hex(), "ts": NOW,
              "models": [dict(MODEL)], **changes}
    return {"advert": advert,
            "signature": key.sign(ADVERT_DOMAIN + canonical.encode(advert)).signature.hex()}


def _parse(answer: dict[str, Any], now: int = NOW) -> list[Any]:
    return parse_advert(answer, node=bytes(PEER.verify_key), audience=ME, now_ms=now,
                        url="http://127.0.0.1:1", fetched=0.0)


def test_a_good_advertisement_is_read() -> None:
    [model] = _parse(_signed())
    assert (model.name, model.kinds, model.free_slots, model.queued) == (
        "tiny", ("chat", "completion"), 4, 1)
    assert model.weights == bytes.fromhex("ab" * 32) and model.price == {"request": 3}
    assert model.to_openai()["node"] == bytes(PEER.verify_key).hex()


@pytest.mark.parametrize("answer", [
    _signed(SigningKey(b"\x03" * 32)),  # another key signed it
    _signed(aud="00" * 32),  # made for another node
    _signed(ts=NOW - 31_000),  # stale
    _signed(ts=NOW + 31_000),
    _signed(models=[{**MODEL, "free_slots": -1}]),
    _signed(models=[{**MODEL, "weights": "zz"}]),
    _signed(models="tiny"),
    {**_signed(), "signature": "00" * 64},
    {"advert": {"v": 1}},
])
def test_a_bad_advertisement_is_refused(answer: dict[str, Any]) -> None:
    with pytest.raises(AdvertError):
        _parse(answer)


def test_a_changed_advertisement_no_longer_verifies() -> None:
    answer = _signed()
    answer["advert"]["models"][0]["free_slots"] = 64
    with pytest.raises(AdvertError):
        _parse(answer)
