"""The local-only receipt audit (``GET /v1/receipts/{id}/audit``, ``edged receipts audit``).

Like the evidence it reads, an audit is served only to callers on this machine (plus an
API key when keys are set): it names contributors and documents' counts, never text."""

from __future__ import annotations

import asyncio

from aiohttp import web

from edged.audit import NodeData, audit_receipt
from edged.bindings import BINDINGS
from edged.datanets import DATANETS
from edged.errors import Forbidden
from edged.http.common import is_local, json_response, stored_receipt
from edged.inference import SERVICE
from edged.ledger import LEDGER


def add_audit_routes(app: web.Application) -> None:
    app.router.add_get("/v1/receipts/{id}/audit", audit)


async def audit(request: web.Request) -> web.Response:
    """Recompute a receipt's split (``edged.audit``); ``ok`` false lists the problems."""
    if not is_local(request):
        raise Forbidden("receipt audits are served to local callers only")
    leaf, receipt = stored_receipt(request)
    service = request.app[SERVICE]
    node = NodeData(service.store, request.app[DATANETS], request.app[BINDINGS],
                    service.attributor)
    evidence = request.app[LEDGER].get_evidence(leaf)
    report = await asyncio.to_thread(audit_receipt, receipt, evidence, node)
    return json_response(report.to_wire())
