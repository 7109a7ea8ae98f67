"""Peer trust over HTTP (/api/peers): thin shells over :class:`edged.peers.PeerStore`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edged.errors import InvalidRequest
from edged.http.common import json_response, read_json
from edged.peers import PEERS, TrustedPeer
from edged.settings import SETTINGS


def add_peer_routes(app: web.Application) -> None:
    app.router.add_get("/api/peers", list_peers)
    app.router.add_post("/api/peers/trust", trust_peer)
    app.router.add_delete("/api/peers/trust/{key}", untrust_peer)


def _peer_json(peer: TrustedPeer) -> dict[str, Any]:
    return {"key": peer.key, "fingerprint": peer.fingerprint, "label": peer.label,
            "added": peer.added, "trusted": True}


async def list_peers(request: web.Request) -> web.Response:
    store = request.app[PEERS]
    return json_response({"trusted": [_peer_json(p) for p in store.trusted()],
                          "static": list(request.app[SETTINGS].peers)})


async def trust_peer(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("key"), str):
        raise InvalidRequest("'key' is required", param="key")
    label = body.get("label") or ""
    if not isinstance(label, str):
        raise InvalidRequest("'label' must be a string", param="label")
    return json_response(_peer_json(request.app[PEERS].trust(body["key"], label)), status=201)


async def untrust_peer(request: web.Request) -> web.Response:
    request.app[PEERS].untrust(request.match_info["key"])
    return json_response({"untrusted": request.match_info["key"].lower()})
