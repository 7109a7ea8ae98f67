"""Signed sync requests: good requests verify; every kind of bad one is refused with 401/403."""

from __future__ import annotations

import hashlib

import pytest
from nacl.signing import SigningKey

from attribution import canonical
from sync.auth import (
    HEADER_NODE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    SIGNATURE_DOMAIN,
    AuthError,
    RequestVerifier,
    sign_request,
)
from tests.support.receipt_factory import key_from

CALLER = key_from("auth-caller")
STRANGER = key_from("auth-stranger")
NOW = 1_700_000_000_000
PATH = "/v1/sync/pull?origin=ab&from=0"
BODY = b"\x82\xa1a\x01\xa1b\x02"


class Clock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def nonce(i: int = 0) -> bytes:
    return hashlib.sha256(f"nonce-{i}".encode()).digest()[:16]


def verifier(clock: Clock | None = None, window_ms: int = 30_000) -> RequestVerifier:
    trusted = {bytes(CALLER.verify_key)}
    return RequestVerifier(trusted.__contains__, window_ms=window_ms,
                           clock_ms=clock or Clock())


def signed(i: int = 0, *, ts: int = NOW, method: str = "POST", path: str = PATH,
           body: bytes = BODY, key: SigningKey = CALLER) -> dict[str, str]:
    return sign_request(key, method, path, body, ts, nonce(i))


def refused(v: RequestVerifier, headers: dict[str, str], *, method: str = "POST",
            path: str = PATH, body: bytes = BODY) -> int:
    before = v.remembered()
    with pytest.raises(AuthError) as info:
        v.verify(method, path, headers, body)
    assert v.remembered() == before  # a refusal changes nothing
    return info.value.status


def test_good_request_verifies() -> None:
    v = verifier()
    headers = signed()
    assert set(headers) == {HEADER_NODE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE}
    assert headers[HEADER_NODE] == bytes(CALLER.verify_key).hex()
    assert headers[HEADER_TIMESTAMP] == str(NOW) and headers[HEADER_NONCE] == nonce().hex()
    assert v.verify("POST", PATH, headers, BODY) == bytes(CALLER.verify_key)
    # header names are case-insensitive; the method is upper-cased on both sides
    lower = {name.lower(): value for name, value in signed(1, method="post").items()}
    assert v.verify("post", PATH, lower, BODY) == bytes(CALLER.verify_key)


def test_signature_covers_the_documented_bytes() -> None:
    headers = signed()
    message = SIGNATURE_DOMAIN + canonical.encode({
        "method": "POST", "path": PATH, "ts": NOW, "nonce": nonce(),
        "body": hashlib.sha256(BODY).digest()})
    CALLER.verify_key.verify(message, bytes.fromhex(headers[HEADER_SIGNATURE]))


@pytest.mark.parametrize("missing", [HEADER_NODE, HEADER_TIMESTAMP, HEADER_NONCE,
                                     HEADER_SIGNATURE])
def test_unsigned_or_incomplete(missing: str) -> None:
    v = verifier()
    assert refused(v, {}) == 401
    headers = signed()
    del headers[missing]
    assert refused(v, headers) == 401


@pytest.mark.parametrize("name,value", [
    (HEADER_NODE, "zz" * 32), (HEADER_NODE, "ab"), (HEADER_NONCE, "00" * 15),
    (HEADER_SIGNATURE, "AB" * 64), (HEADER_TIMESTAMP, "-5"), (HEADER_TIMESTAMP, "1e3"),
    (HEADER_TIMESTAMP, "0" + str(NOW)), (HEADER_TIMESTAMP, "9" * 40),
    (HEADER_TIMESTAMP, "١٢٣"),
])
def test_malformed_headers(name: str, value: str) -> None:
    headers = {**signed(), name: value}
    assert refused(verifier(), headers) == 401


def test_bad_signature() -> None:
    headers = signed()
    sig = bytearray(bytes.fromhex(headers[HEADER_SIGNATURE]))
    sig[10] ^= 1
    assert refused(verifier(), {**headers, HEADER_SIGNATURE: sig.hex()}) == 401
    # a signature by another key, presented as the caller's
    stranger = signed(key=STRANGER)
    assert refused(verifier(), {**signed(), HEADER_SIGNATURE: stranger[HEADER_SIGNATURE]}) == 401


def test_timestamp_altered() -> None:
    headers = {**signed(), HEADER_TIMESTAMP: str(NOW + 1)}
    assert refused(verifier(), headers) == 401


@pytest.mark.parametrize("skew", [30_001, -30_001, 10**9])
def test_stale_timestamp(skew: int) -> None:
    assert refused(verifier(), signed(ts=NOW - skew)) == 401


def test_edges_of_window_accepted() -> None:
    v = verifier()
    assert v.verify("POST", PATH, signed(1, ts=NOW - 30_000), BODY)
    assert v.verify("POST", PATH, signed(2, ts=NOW + 30_000), BODY)


def test_replayed_nonce() -> None:
    v = verifier()
    headers = signed()
    v.verify("POST", PATH, headers, BODY)
    assert refused(v, headers) == 401
    # a fresh nonce is fine, and another verifier instance has its own memory
    v.verify("POST", PATH, signed(1), BODY)
    verifier().verify("POST", PATH, headers, BODY)


def test_unknown_key_is_403() -> None:
    v = verifier()
    assert refused(v, signed(key=STRANGER)) == 403
    assert v.remembered() == 0


def test_body_altered() -> None:
    assert refused(verifier(), signed(), body=BODY + b"\x00") == 401
    assert refused(verifier(), signed(), body=b"") == 401


def test_path_or_method_altered() -> None:
    assert refused(verifier(), signed(), path="/v1/sync/pull?origin=ab&from=1") == 401
    assert refused(verifier(), signed(), path="/v1/sync/push") == 401
    assert refused(verifier(), signed(), method="PUT") == 401


def test_replay_memory_is_bounded_by_the_window() -> None:
    clock = Clock()
    v = verifier(clock, window_ms=1_000)
    for i in range(50):
        v.verify("POST", PATH, signed(i, ts=clock.now), BODY)
        clock.now += 100
    # only nonces whose timestamps are still inside the window are held
    assert v.remembered() <= 11
    old = signed(0, ts=NOW)
    assert refused(v, old) == 401  # stale now, so forgetting its nonce is safe


def test_sign_request_arguments() -> None:
    with pytest.raises(ValueError):
        sign_request(CALLER, "GET", PATH, b"", NOW, b"short")
    with pytest.raises(ValueError):
        sign_request(CALLER, "GET", PATH, b"", -1, nonce())
    with pytest.raises(ValueError):
        RequestVerifier(lambda key: True, window_ms=0)
