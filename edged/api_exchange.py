"""Node-to-node sync over HTTP. ``heads``, ``pull`` and ``push`` are authenticated by the
caller's node signature (sync.auth), not by API keys, and only trusted keys get through;
the rest is for the local operator."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from edged.appkeys import EXCHANGE, REQUEST_VERIFIER, SETTINGS, SYNC_ENDPOINT
from edged.errors import EdgedError, Forbidden, InvalidRequest, TooManyRequests, Unauthorized
from edged.exchange import HELLO_DOMAIN, MSGPACK, SyncRefused
from edged.http_common import json_response, read_body
from sync.auth import AuthError
from sync.batch import MAX_BATCH_BYTES

# Pushes read up to MAX_BATCH_BYTES each: only this many bodies are read at once.
MAX_CONCURRENT_PUSHES = 4
PUSH_SLOTS = web.AppKey("push_slots", asyncio.Semaphore)


def add_sync_endpoint_routes(app: web.Application) -> None:
    """The signed endpoints a node and a fleet manager both answer (app[SYNC_ENDPOINT])."""
    app[PUSH_SLOTS] = asyncio.Semaphore(MAX_CONCURRENT_PUSHES)
    app.router.add_get("/v1/sync/hello", hello)
    app.router.add_get("/v1/sync/heads", heads)
    app.router.add_post("/v1/sync/push", push)


def add_exchange_routes(app: web.Application) -> None:
    add_sync_endpoint_routes(app)
    app.router.add_get("/v1/sync/pull", pull)
    app.router.add_get("/v1/sync/evidence", evidence)
    app.router.add_post("/api/sync/now", sync_now)
    app.router.add_get("/api/sync/status", sync_status)


def _auth_error(exc: AuthError) -> EdgedError:
    return (Forbidden if exc.status == 403 else Unauthorized)(exc.message)


async def _authenticate(request: web.Request, body: bytes = b"") -> bytes:
    try:
        return request.app[REQUEST_VERIFIER].verify(request.method, request.path_qs,
                                                    request.headers, body)
    except AuthError as exc:
        raise _auth_error(exc) from None


def _refused(exc: SyncRefused) -> EdgedError:
    error = EdgedError(exc.message)
    error.status, error.type = exc.status, "invalid_request_error"
    error.code = {400: "invalid_batch", 403: "forbidden", 409: "equivocation"}.get(exc.status)
    return error


async def hello(request: web.Request) -> web.Response:
    """Who answers here: the node key a caller signs its sync requests for, with a
    signature over the caller's challenge (proof this server holds that key)."""
    challenge = request.query.get("challenge", "")
    if len(challenge) != 32 or not all(c in "0123456789abcdef" for c in challenge):
        raise InvalidRequest("'challenge' is 16 random bytes in lowercase hex",
                             param="challenge")
    service = request.app[SYNC_ENDPOINT]
    signature = service.signing_key.sign(HELLO_DOMAIN + bytes.fromhex(challenge)).signature
    return json_response({"public_key": service.origin.hex(), "signature": signature.hex()})


async def heads(request: web.Request) -> web.Response:
    await _authenticate(request)
    service = request.app[SYNC_ENDPOINT]
    return json_response({"heads": await asyncio.to_thread(service.heads)})


def _hex_query(request: web.Request, name: str) -> bytes:
    try:
        value = bytes.fromhex(request.query.get(name, ""))
    except ValueError:
        value = b""
    if len(value) != 32:
        raise InvalidRequest(f"'{name}' must be 64 hex digits", param=name)
    return value


def _count_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidRequest(f"'{name}' must be a non-negative integer", param=name)
    return int(raw)


async def pull(request: web.Request) -> web.Response:
    await _authenticate(request)
    origin = _hex_query(request, "origin")
    have = _count_query(request, "have", 0)
    known = _count_query(request, "known", 0)
    limit = _count_query(request, "limit", 1000)
    try:
        batch = await asyncio.to_thread(request.app[EXCHANGE].make_batch, origin, have, known,
                                        limit)
    except SyncRefused as exc:
        raise _refused(exc) from None
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    return web.Response(body=batch.encode(), content_type=MSGPACK)


async def push(request: web.Request) -> web.Response:
    # Nobody gets a body read before their headers pass: a trusted key, a fresh
    # timestamp, an unused nonce. The signature over the body is checked after.
    try:
        request.app[REQUEST_VERIFIER].precheck(request.headers)
    except AuthError as exc:
        raise _auth_error(exc) from None
    slots = request.app[PUSH_SLOTS]
    if slots.locked():
        raise TooManyRequests("too many pushes at once; try again shortly")
    async with slots:  # held while the body is in memory
        body = await read_body(request, MAX_BATCH_BYTES, "batch too large")
        await _authenticate(request, body)
        try:
            stored = await asyncio.to_thread(request.app[SYNC_ENDPOINT].ingest, body)
        except SyncRefused as exc:
            raise _refused(exc) from None
    return json_response({"stored": stored})


async def evidence(request: web.Request) -> web.Response:
    items = request.app[EXCHANGE].replicas.evidence()
    return json_response({"equivocations": [
        {"origin": origin.hex(), "first": first.to_json(), "second": second.to_json(),
         "ts": ts} for origin, first, second, ts in items]})


async def sync_now(request: web.Request) -> web.Response:
    return json_response(await request.app[EXCHANGE].sync_now(_peer_urls(request.app)))


def _peer_urls(app: web.Application) -> list[str]:
    return list(app[SETTINGS].peers) + [url for url, _ in app[EXCHANGE].discovered()]


async def sync_status(request: web.Request) -> web.Response:
    service = request.app[EXCHANGE]
    peers: list[dict[str, Any]] = []
    for url in _peer_urls(request.app):
        state = service.states.get(url)
        peers.append({"url": url, "last_ok": state.last_ok if state else None,
                      "last_error": state.last_error if state else None,
                      "received": state.received if state else 0,
                      "failures": state.failures if state else 0})
    origins = [{"origin": h.origin.hex(), "held": h.size, "frozen": h.frozen}
               for h in service.replicas.heads()]
    fleet_url = request.app[SETTINGS].fleet_url.rstrip("/")
    fleet = service.states.get(fleet_url) if fleet_url else None
    return json_response({"peers": peers, "origins": origins, "fleet": None if not fleet_url else {
        "url": fleet_url, "last_ok": fleet.last_ok if fleet else None,
        "last_error": fleet.last_error if fleet else None,
        "stored": fleet.received if fleet else 0, "failures": fleet.failures if fleet else 0}})
