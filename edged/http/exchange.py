"""A node's sync routes: the signed endpoints it shares with the fleet
(:mod:`edged.http.sync_endpoint`: hello, heads, push) plus ``pull``, all authenticated by the
caller's node signature (sync.auth), not by API keys, so only trusted keys get through;
the rest is for the local operator."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from edged.errors import InvalidRequest
from edged.exchange import EXCHANGE
from edged.http.common import accepts, json_response
from edged.http.sync_endpoint import MSGPACK, add_sync_endpoint_routes, signed
from edged.schema import Query
from edged.settings import SETTINGS


def add_exchange_routes(app: web.Application) -> None:
    add_sync_endpoint_routes(app)
    app.router.add_get("/v1/sync/pull", pull)
    app.router.add_get("/v1/sync/evidence", evidence)
    app.router.add_post("/api/sync/now", sync_now)
    app.router.add_get("/api/sync/status", sync_status)


Count = Annotated[int, Field(ge=0, le=10**18 - 1)]


class PullQuery(Query):
    origin: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$",
                                 description="the origin's node key, 64 hex digits")]
    have: Count = 0
    known: Count = 0
    limit: Count = 1000


@signed  # the signature (over the path and query) is checked before the query
@accepts(query=PullQuery)
async def pull(request: web.Request, *, query: PullQuery) -> web.Response:
    try:
        batch = await asyncio.to_thread(request.app[EXCHANGE].make_batch,
                                        bytes.fromhex(query.origin), query.have, query.known,
                                        query.limit)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    return web.Response(body=batch.encode(), content_type=MSGPACK)


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
