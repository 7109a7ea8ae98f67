"""HTTP shell of the fleet manager: the operator's ``/fleet/...`` API and the dashboard."""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from typing import Annotated, Any, ClassVar

from aiohttp import web
from pydantic import Field

from edged.errors import InvalidRequest, NotReady
from edged.fleet.service import FleetService
from edged.http.common import READY, accepts, json_response
from edged.peers import validate_key
from edged.schema import Body

FLEET = web.AppKey("fleet", FleetService)
DASHBOARD_HEADERS = {
    "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'"}


def add_fleet_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    page = resources.files("edged.fleet").joinpath("dashboard.html").read_bytes()

    async def dashboard(request: web.Request) -> web.Response:
        """The dashboard page (read once): static, it fetches /fleet/summary itself."""
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers=DASHBOARD_HEADERS)

    app.router.add_get("/fleet/", dashboard)
    app.router.add_get("/fleet/summary", summary)
    app.router.add_get("/fleet/nodes", list_nodes)
    app.router.add_post("/fleet/nodes", enroll_node)
    app.router.add_delete("/fleet/nodes/{node}", revoke_node)
    app.router.add_get("/fleet/epochs", list_epochs)
    app.router.add_post("/fleet/epochs", close_epoch)
    app.router.add_get("/fleet/epochs/{epoch}", get_epoch)
    app.router.add_get("/fleet/epochs/{epoch}/proof/{payee}", get_payout_proof)
    app.router.add_get("/fleet/receipts/{origin}/{seq}/proof", get_inclusion_proof)
    app.router.add_get("/fleet/payees", list_payees)
    app.router.add_put("/fleet/payees/{payee}", set_payee_address)
    app.router.add_get("/fleet/settlement", settlement)
    app.router.add_post("/fleet/settle", settle)
    app.router.add_get("/fleet/equivocations", equivocations)
    app.router.add_post("/fleet/chain/deploy", deploy_contract)


def _fleet(request: web.Request) -> FleetService:
    if not request.app[READY].is_set():
        raise NotReady("the fleet manager is starting")
    return request.app[FLEET]


def _node_key(value: Any) -> bytes:
    try:
        return bytes.fromhex(validate_key(value if isinstance(value, str) else ""))
    except InvalidRequest:
        raise InvalidRequest("a node key is 64 hex digits", param="node") from None


def _path_integer(request: web.Request, name: str, message: str) -> int:
    """A path parameter of ASCII digits (``str.isdigit`` also takes "³", which ``int``
    refuses: found by the fuzz as a 500)."""
    raw = request.match_info[name]
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise InvalidRequest(message, param=name)
    return int(raw)


def _epoch(request: web.Request) -> int:
    return _path_integer(request, "epoch", "an epoch is a positive integer")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = request.app[READY].is_set()
    return json_response({"status": "ready" if ready else "starting"}, status=200 if ready
                         else 503)



async def summary(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_fleet(request).summary))


async def list_nodes(request: web.Request) -> web.Response:
    return json_response({"nodes": await asyncio.to_thread(_fleet(request).nodes)})


class EnrollNode(Body):
    endpoint: ClassVar[str] = "/fleet/nodes"
    # Any case, surrounding blanks allowed: normalised by edged.peers.validate_key.
    node: Annotated[str, Field(pattern=r"^\s*[0-9a-fA-F]{64}\s*$",
                               description="the node's key, 64 hex digits")]
    label: Annotated[str, Field(max_length=128)] = ""


@accepts(body=EnrollNode)
async def enroll_node(request: web.Request, *, body: EnrollNode) -> web.Response:
    fleet = _fleet(request)
    record = await asyncio.to_thread(fleet.store.enroll, _node_key(body.node), body.label)
    return json_response(record.to_json(fleet.clock_ms()), status=201)


async def revoke_node(request: web.Request) -> web.Response:
    fleet = _fleet(request)
    record = await asyncio.to_thread(fleet.store.revoke,
                                     _node_key(request.match_info["node"]))
    return json_response(record.to_json(fleet.clock_ms()))


async def list_epochs(request: web.Request) -> web.Response:
    return json_response({"epochs": await asyncio.to_thread(_fleet(request).epoch_list)})


async def close_epoch(request: web.Request) -> web.Response:
    fleet = _fleet(request)
    closed = await asyncio.to_thread(fleet.epochs.close)
    return json_response(closed, status=201)


async def get_epoch(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_fleet(request).epoch, _epoch(request)))


async def get_payout_proof(request: web.Request) -> web.Response:
    fleet = _fleet(request)
    proof = await asyncio.to_thread(fleet.epochs.proof, _epoch(request),
                                    request.match_info["payee"])
    return json_response(proof)


async def get_inclusion_proof(request: web.Request) -> web.Response:
    origin = _node_key(request.match_info["origin"])
    seq = _path_integer(request, "seq", "seq is a non-negative integer")
    fleet = _fleet(request)
    return json_response(await asyncio.to_thread(fleet.store.inclusion_proof, origin, seq))


async def list_payees(request: web.Request) -> web.Response:
    return json_response({"addresses": await asyncio.to_thread(_fleet(request).epochs.addresses)})


class PayeeAddress(Body):
    endpoint: ClassVar[str] = "/fleet/payees/{payee}"
    # Checked by the epochs (code payee_not_address), as every address the fleet stores.
    address: Annotated[str, Field(description="the payee's address, 0x and 40 hex digits")]


@accepts(body=PayeeAddress)
async def set_payee_address(request: web.Request, *, body: PayeeAddress) -> web.Response:
    payee = request.match_info["payee"]
    await asyncio.to_thread(_fleet(request).epochs.set_address, payee, body.address)
    return json_response({"payee": payee, "address": body.address.lower()})


async def settlement(request: web.Request) -> web.Response:
    settler = _fleet(request).settler
    plan = await asyncio.to_thread(settler.plan)
    status = await asyncio.to_thread(settler.status)
    return json_response({**status, "plan": plan})


async def settle(request: web.Request) -> web.Response:
    settler = _fleet(request).settler
    return json_response(await asyncio.to_thread(settler.settle))


async def equivocations(request: web.Request) -> web.Response:
    return json_response({"equivocations": await asyncio.to_thread(
        _fleet(request).store.equivocations)})


async def deploy_contract(request: web.Request) -> web.Response:
    settler = _fleet(request).settler
    address = await asyncio.to_thread(settler.deploy)
    return json_response({"contract": address,
                          "next": "set chain_contract to this address in the fleet's settings"},
                         status=201)
