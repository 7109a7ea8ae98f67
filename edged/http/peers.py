"""Peer trust over HTTP (/api/peers): thin shells over :class:`edged.peers.PeerStore`."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from aiohttp import web
from pydantic import Field

from edged.http.common import accepts, json_response
from edged.peers import PEERS, TrustedPeer
from edged.schema import Body
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


class TrustPeer(Body):
    endpoint: ClassVar[str] = "/api/peers/trust"
    # Any case, surrounding blanks allowed: the store normalises (edged.peers.validate_key).
    key: Annotated[str, Field(pattern=r"^\s*[0-9a-fA-F]{64}\s*$",
                              description="the peer's node key, 64 hex digits")]
    label: Annotated[str, Field(max_length=64)] | None = Field(
        None, description="a name for the operator")


@accepts(body=TrustPeer)
async def trust_peer(request: web.Request, *, body: TrustPeer) -> web.Response:
    peer = request.app[PEERS].trust(body.key, body.label or "")
    return json_response(_peer_json(peer), status=201)


async def untrust_peer(request: web.Request) -> web.Response:
    request.app[PEERS].untrust(request.match_info["key"])
    return json_response({"untrusted": request.match_info["key"].lower()})
