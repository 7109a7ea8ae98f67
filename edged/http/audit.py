"""The local-only receipt audit (``GET /v1/receipts/{id}/audit``, ``edged receipts audit``).

Like the evidence it reads, an audit is served only to callers on this machine (plus an
API key when keys are set): it names contributors and documents' counts, never text."""

from __future__ import annotations

import asyncio
import ipaddress

from aiohttp import web

from edged.audit import NodeData, audit_receipt
from edged.bindings import BINDINGS
from edged.datanets import DATANETS
from edged.errors import Forbidden, InvalidRequest, NotFound
from edged.http.common import json_response
from edged.inference import SERVICE
from edged.ledger import LEDGER


def add_audit_routes(app: web.Application) -> None:
    app.router.add_get("/v1/receipts/{id}/audit", audit)


async def audit(request: web.Request) -> web.Response:
    """Recompute a receipt's split (``edged.audit``); ``ok`` false lists the problems."""
    if not _is_loopback(request.remote):
        raise Forbidden("receipt audits are served to local callers only")
    receipt_id = request.match_info["id"].lower()
    try:
        leaf = bytes.fromhex(receipt_id)
    except ValueError:
        leaf = b""
    if len(leaf) != 32:
        raise InvalidRequest("a receipt id is 64 hex digits", param="id")
    ledger = request.app[LEDGER]
    receipt = ledger.get(leaf)
    if receipt is None:
        raise NotFound("no receipt with that id", param="id")
    service = request.app[SERVICE]
    node = NodeData(service.store, request.app[DATANETS], request.app[BINDINGS],
                    service.attributor)
    report = await asyncio.to_thread(audit_receipt, receipt, ledger.get_evidence(leaf), node)
    return json_response(report.to_wire())


def _is_loopback(remote: str | None) -> bool:
    try:
        return ipaddress.ip_address(remote or "").is_loopback
    except ValueError:
        return False
