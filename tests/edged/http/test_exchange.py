"""Sync endpoints under attack: every bad request or batch is refused and stores nothing."""

from __future__ import annotations

import asyncio
import io
import secrets
import time
from typing import Any

import msgpack
from aiohttp import web
from aiohttp.test_utils import TestClient
from nacl.signing import SigningKey

from edged.exchange import EXCHANGE
from edged.http.sync_endpoint import MAX_CONCURRENT_PUSHES, PUSH_SLOTS
from edged.keys import NODE_KEYS
from edged.peers import PEERS
from sync import merkle
from sync.auth import sign_request
from sync.batch import Batch
from sync.checkpoint import Checkpoint
from tests.support.receipt_factory import make_chain

Client = TestClient[Any, web.Application]


def _log(key: SigningKey, count: int, *, model_name: str = "tiny-model") -> list[bytes]:
    return [receipt.raw for receipt in make_chain(key, count, model_name=model_name)]


def _batch(key: SigningKey, raws: list[bytes], start: int = 0, known: int = 0) -> Batch:
    leaves = [merkle.leaf_hash(raw) for raw in raws]
    checkpoint = Checkpoint(bytes(key.verify_key), len(raws), merkle.reference_root(leaves),
                            int(time.time() * 1000)).sign(key)
    proof = merkle.reference_consistency_proof(known, leaves) if known else []
    return Batch(bytes(key.verify_key), raws[start:], checkpoint, proof, known)


def _headers(client: Client, key: SigningKey, method: str, path: str,
             body: bytes = b"") -> dict[str, str]:
    """Signed for the node behind ``client`` (the audience), as a peer would."""
    return sign_request(key, method, path, body, int(time.time() * 1000),
                        secrets.token_bytes(16), client.app[NODE_KEYS].public_key)


async def _push(client: Client, key: SigningKey, body: bytes) -> Any:
    return await client.post("/v1/sync/push", data=body,
                             headers=_headers(client, key, "POST", "/v1/sync/push", body))


def _held(client: Client, origin: SigningKey) -> int:
    return client.app[EXCHANGE].replicas.size(bytes(origin.verify_key))


async def test_push_and_pull_with_a_trusted_peer(client: Client) -> None:
    peer = SigningKey.generate()
    client.app[PEERS].trust(bytes(peer.verify_key).hex())
    raws = _log(peer, 6)
    response = await _push(client, peer, _batch(peer, raws[:4]).encode())
    assert response.status == 200 and (await response.json())["stored"] == 4
    more = _batch(peer, raws, start=4, known=4)
    assert (await (await _push(client, peer, more.encode())).json())["stored"] == 2
    again = await _push(client, peer, more.encode())  # a re-send is deduped
    assert again.status == 400 or (await again.json())["stored"] == 0
    assert _held(client, peer) == 6

    path = "/v1/sync/heads"
    heads = await (await client.get(path, headers=_headers(client, peer, "GET", path))).json()
    sizes = {h["origin"]: h["size"] for h in heads["heads"]}
    assert sizes[bytes(peer.verify_key).hex()] == 6
    path = f"/v1/sync/pull?origin={bytes(peer.verify_key).hex()}&have=2&known=0&limit=10"
    pulled = await client.get(path, headers=_headers(client, peer, "GET", path))
    assert pulled.status == 200
    assert Batch.decode(await pulled.read()).receipts == raws[2:]


async def test_bad_requests_and_batches_store_nothing(client: Client) -> None:
    peer, stranger = SigningKey.generate(), SigningKey.generate()
    client.app[PEERS].trust(bytes(peer.verify_key).hex())
    raws = _log(peer, 5)
    good = _batch(peer, raws).encode()

    unsigned = await client.post("/v1/sync/push", data=good)
    assert unsigned.status == 401
    assert (await _push(client, stranger, good)).status == 403  # unknown caller key
    headers = _headers(client, peer, "POST", "/v1/sync/push", good)
    assert (await client.post("/v1/sync/push", data=good + b"x", headers=headers)).status == 401
    stale = sign_request(peer, "POST", "/v1/sync/push", good, 1_000, secrets.token_bytes(16),
                         client.app[NODE_KEYS].public_key)
    assert (await client.post("/v1/sync/push", data=good, headers=stale)).status == 401

    tampered = bytearray(raws[2])
    tampered[60] ^= 1
    forged = _batch(peer, raws)
    forged_sig = Batch(forged.origin, forged.receipts, type(forged.checkpoint)(
        forged.checkpoint.checkpoint, bytes(64)), [], 0)
    foreign = _batch(stranger, _log(stranger, 3))  # an untrusted origin
    attacks = {
        "tampered receipt": Batch(forged.origin, raws[:2] + [bytes(tampered)] + raws[3:],
                                  forged.checkpoint).encode(),
        "gap": Batch(forged.origin, raws[:2] + raws[3:], forged.checkpoint).encode(),
        "reordered": Batch(forged.origin, [raws[1], raws[0], *raws[2:]],
                           forged.checkpoint).encode(),
        "forged signature": forged_sig.encode(),
        "another origin's receipts": Batch(forged.origin, _log(stranger, 5),
                                           forged.checkpoint).encode(),
        "malformed": b"\x93not msgpack at all",
        "truncated": good[: len(good) // 2],
        "deeply nested": msgpack.packb(_nest(200)),
    }
    for name, body in attacks.items():
        response = await _push(client, peer, body)
        assert response.status == 400, name
        assert _held(client, peer) == 0, name
    assert (await _push(client, peer, foreign.encode())).status == 403
    assert client.app[EXCHANGE].replicas.size(bytes(stranger.verify_key)) == 0

    replayed_headers = _headers(client, peer, "POST", "/v1/sync/push", good)
    first = await client.post("/v1/sync/push", data=good, headers=replayed_headers)
    assert first.status == 200
    replay = await client.post("/v1/sync/push", data=good, headers=replayed_headers)
    assert replay.status == 401


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_shrinking_and_equivocating_checkpoints(client: Client) -> None:
    peer = SigningKey.generate()
    client.app[PEERS].trust(bytes(peer.verify_key).hex())
    raws = _log(peer, 6)
    assert (await _push(client, peer, _batch(peer, raws[:6]).encode())).status == 200
    shrinking = _batch(peer, raws[:3], start=3, known=0)
    assert (await _push(client, peer, shrinking.encode())).status == 400

    fork = _log(peer, 6, model_name="fork")  # a second history under the same key
    fork_leaves = [merkle.leaf_hash(raw) for raw in fork]
    same_size = Checkpoint(bytes(peer.verify_key), 6, merkle.reference_root(fork_leaves),
                           int(time.time() * 1000)).sign(peer)
    equivocating = Batch(bytes(peer.verify_key), [], same_size, [], 6)
    response = await _push(client, peer, equivocating.encode())
    assert response.status == 409
    evidence = await (await client.get("/v1/sync/evidence")).json()
    assert evidence["equivocations"][0]["origin"] == bytes(peer.verify_key).hex()
    more = _batch(peer, _log(peer, 8), start=6, known=6)
    assert (await _push(client, peer, more.encode())).status == 403  # frozen
    assert _held(client, peer) == 6


async def test_oversized_push_is_413(client: Client) -> None:
    peer = SigningKey.generate()
    client.app[PEERS].trust(bytes(peer.verify_key).hex())
    body = b"\x00" * (9 * 1024 * 1024)
    response = await client.post("/v1/sync/push", data=io.BytesIO(body),
                                 headers=_headers(client, peer, "POST", "/v1/sync/push", body))
    assert response.status == 413
    assert _held(client, peer) == 0


async def test_a_misbehaving_peer_does_not_stop_the_round(client: Client, aiohttp_server: Any,
                                                         ) -> None:
    peer = SigningKey.generate()
    client.app[PEERS].trust(bytes(peer.verify_key).hex())

    async def bad_heads(request: web.Request) -> web.Response:
        return web.json_response({"heads": [{"origin": bytes(peer.verify_key).hex(),
                                             "size": "9"}]})

    async def huge_heads(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (3 * 1024 * 1024))

    async def hello(request: web.Request) -> web.Response:  # the peer proves its key
        from edged.http.sync_endpoint import HELLO_DOMAIN

        challenge = bytes.fromhex(request.query["challenge"])
        return web.json_response({"public_key": bytes(peer.verify_key).hex(), "signature":
                                  peer.sign(HELLO_DOMAIN + challenge).signature.hex()})

    servers = []
    for handler in (bad_heads, huge_heads):
        app = web.Application()
        app.router.add_get("/v1/sync/hello", hello)
        app.router.add_get("/v1/sync/heads", handler)
        servers.append(await aiohttp_server(app))
    urls = [str(s.make_url("")).rstrip("/") for s in servers]
    results = await client.app[EXCHANGE].sync_round(urls)
    assert set(results) == set(urls)
    assert all(result == "error: SyncRefused" for result in results.values())  # got to heads
    states = client.app[EXCHANGE].states
    assert all(states[url].failures == 1 for url in urls)  # each backs off on its own


async def test_a_request_signed_for_another_node_is_refused(client: Client) -> None:
    peer = SigningKey.generate()
    client.app[PEERS].trust(bytes(peer.verify_key).hex())
    other_node = bytes(SigningKey.generate().verify_key)
    path = "/v1/sync/heads"
    for audience in (other_node, None):
        headers = sign_request(peer, "GET", path, b"", int(time.time() * 1000),
                               secrets.token_bytes(16), audience)
        assert (await client.get(path, headers=headers)).status == 401
    assert (await client.get(path, headers=_headers(client, peer, "GET", path))).status == 200


async def test_hello_proves_the_node_key(client: Client) -> None:
    from nacl.signing import VerifyKey

    from edged.http.sync_endpoint import HELLO_DOMAIN

    challenge = secrets.token_bytes(16)
    hello = await (await client.get("/v1/sync/hello",
                                    params={"challenge": challenge.hex()})).json()
    assert hello["public_key"] == client.app[NODE_KEYS].public_key.hex()
    VerifyKey(bytes.fromhex(hello["public_key"])).verify(
        HELLO_DOMAIN + challenge, bytes.fromhex(hello["signature"]))
    assert (await client.get("/v1/sync/hello", params={"challenge": "zz"})).status == 400


async def _stalled_body(first: bytes, release: asyncio.Event, rest: bytes = b"") -> Any:
    """A request body that sends ``first``, then waits for ``release`` to send the rest."""
    yield first
    await release.wait()
    if rest:
        yield rest


async def test_push_headers_are_checked_before_the_body_is_read(client: Client) -> None:
    peer, stranger = SigningKey.generate(), SigningKey.generate()
    client.app[PEERS].trust(bytes(peer.verify_key).hex())
    body = _batch(peer, _log(peer, 2)).encode()
    never = asyncio.Event()
    cases = [
        ({}, 401),  # unsigned
        (_headers(client, stranger, "POST", "/v1/sync/push", body), 403),  # untrusted key
        (sign_request(peer, "POST", "/v1/sync/push", body, 1_000, secrets.token_bytes(16),
                      client.app[NODE_KEYS].public_key), 401),  # stale
    ]
    for headers, status in cases:
        # The body never finishes: only an answer given before reading it can arrive.
        response = await asyncio.wait_for(client.post(
            "/v1/sync/push", data=_stalled_body(body[:100], never),
            headers={**headers, "Content-Length": str(len(body))}), timeout=10)
        assert response.status == status
        assert (await response.json())["error"]["type"]
        response.close()
    assert _held(client, peer) == 0


async def test_concurrent_pushes_are_bounded(client: Client) -> None:
    peers = [SigningKey.generate() for _ in range(MAX_CONCURRENT_PUSHES + 1)]
    for peer in peers:
        client.app[PEERS].trust(bytes(peer.verify_key).hex())
    bodies = [_batch(peer, _log(peer, 2)).encode() for peer in peers]
    release = asyncio.Event()
    slow = [asyncio.create_task(client.post(
        "/v1/sync/push", data=_stalled_body(body[:10], release, body[10:]),
        headers={**_headers(client, peer, "POST", "/v1/sync/push", body),
                 "Content-Length": str(len(body))}))
        for peer, body in zip(peers[:-1], bodies[:-1], strict=True)]
    slots = client.app[PUSH_SLOTS]
    for _ in range(1000):  # until every slow push holds a slot
        if slots.locked():
            break
        await asyncio.sleep(0.01)
    assert slots.locked()
    last, body = peers[-1], bodies[-1]
    refused = await _push(client, last, body)
    assert refused.status == 429 and refused.headers["Retry-After"]
    assert (await refused.json())["error"]["code"] == "rate_limited"
    release.set()
    assert [r.status for r in await asyncio.gather(*slow)] == [200] * MAX_CONCURRENT_PUSHES
    assert [_held(client, peer) for peer in peers] == [2] * MAX_CONCURRENT_PUSHES + [0]
    assert (await _push(client, last, body)).status == 200  # a slot is free again
