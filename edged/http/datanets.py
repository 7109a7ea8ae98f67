"""Datanet management (/api/datanets) and the local-only evidence endpoint."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

from aiohttp import web
from pydantic import Field

from attribution import canonical
from attribution.spans import DuplicatePolicy
from edged.datanet_documents import parse_document_lines
from edged.datanets import (
    CONTRIBUTOR_PATTERN,
    DATANETS,
    DEFAULT_DUPLICATES,
    PAYOUT_PATTERN,
    AddReport,
)
from edged.errors import EdgedError, Forbidden, InternalError
from edged.http.common import accepts, is_local, json_response, read_body, stored_receipt
from edged.inference import SERVICE
from edged.ledger import LEDGER
from edged.manifest import Name
from edged.schema import Body, Query
from edged.settings import SETTINGS

logger = logging.getLogger(__name__)
NDJSON = "application/x-ndjson"


def add_datanet_routes(app: web.Application) -> None:
    app.router.add_get("/api/datanets", list_datanets)
    app.router.add_post("/api/datanets", create_datanet)
    app.router.add_get("/api/datanets/{name}", show_datanet)
    app.router.add_delete("/api/datanets/{name}", remove_datanet)
    app.router.add_post("/api/datanets/{name}/documents", add_documents)
    app.router.add_delete("/api/datanets/{name}/contributors/{contributor}", remove_contributor)
    app.router.add_post("/api/datanets/{name}/compact", compact_datanet)
    app.router.add_get("/v1/receipts/{id}/evidence", receipt_evidence)


async def list_datanets(request: web.Request) -> web.Response:
    states = await asyncio.to_thread(request.app[DATANETS].all)
    return json_response({"datanets": [s.public_view() for s in states]})


async def show_datanet(request: web.Request) -> web.Response:
    state = await asyncio.to_thread(request.app[DATANETS].get, request.match_info["name"])
    return json_response(state.public_view())


class CreateDatanet(Body):
    endpoint: ClassVar[str] = "/api/datanets"
    name: Name  # also a path component: the rule model names follow
    duplicates: DuplicatePolicy = Field(DEFAULT_DUPLICATES,
                                        description="who is credited for duplicated spans")


@accepts(body=CreateDatanet)
async def create_datanet(request: web.Request, *, body: CreateDatanet) -> web.Response:
    """Create a datanet, with its duplicate policy (``first`` unless named)."""
    state = await asyncio.to_thread(request.app[DATANETS].create, body.name,
                                    duplicates=body.duplicates)
    return json_response(state.public_view(), status=201)


async def remove_datanet(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    users = [m.name for m in request.app[SERVICE].store.list() if name in m.datanets]
    await asyncio.to_thread(request.app[DATANETS].remove, name, in_use_by=users)
    return json_response({"deleted": name})


class DocumentsQuery(Query):
    # The store refuses ".." in an id too (the pattern engine has no lookahead).
    contributor: Annotated[str, Field(pattern=CONTRIBUTOR_PATTERN.pattern,
                                      description="the contributor the documents are from")]
    payout: str | None = Field(None, pattern="^(?:" + PAYOUT_PATTERN.pattern.strip("^$") + ")?$",
                               description="the contributor's payout address (empty: none)")


@accepts(query=DocumentsQuery)
async def add_documents(request: web.Request, *, query: DocumentsQuery
                        ) -> web.StreamResponse:
    """Body: JSON Lines, one ``{"id": ..., "text": ...}`` per document, for one contributor
    (query ``contributor``, optional ``payout``). Streamed, so it may exceed the usual body
    limit up to ``max_datanet_upload_bytes``; indexed as one new segment. The answer
    reports, per document, what other contributors already held (counts and ids).

    With ``Accept: application/x-ndjson`` the answer is 200 and JSON Lines instead: a
    ``{"progress": ...}`` line per step (see ``_stream_add``), then ``{"result": ...}``
    holding the answer above, or ``{"error": {...}, "status": n}``."""
    limit = request.app[SETTINGS].max_datanet_upload_bytes
    body = await read_body(request, limit, "the documents exceed max_datanet_upload_bytes")
    documents = await asyncio.to_thread(parse_document_lines, body)
    add = functools.partial(request.app[DATANETS].add_documents, request.match_info["name"],
                            query.contributor, documents, payout=query.payout or None)
    if NDJSON in request.headers.get("Accept", ""):
        return await _stream_add(request, add, documents=len(documents), received=len(body))
    report = await asyncio.to_thread(add)
    return json_response(report.to_wire(), status=201)


async def _stream_add(request: web.Request, add: Callable[..., AddReport], *,
                      documents: int, received: int) -> web.StreamResponse:
    """Run ``add`` in a thread and stream its progress, one JSON line per call:
    ``{"progress": {"stage", "documents": {"done", "total"}, "bytes"}}`` (``bytes``: the
    upload's size; stages as ``AddProgress``), then the result or the error line.
    Nothing is sent before the first progress call, so what fails before indexing starts
    (an unknown datanet, a bad contributor id) gets the ordinary error answer."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def progress(stage: str, done: int) -> None:
        event = {"stage": stage, "documents": {"done": done, "total": documents},
                 "bytes": received}
        loop.call_soon_threadsafe(events.put_nowait, {"progress": event})

    def run() -> AddReport:
        try:
            return add(progress=progress)
        finally:
            loop.call_soon_threadsafe(events.put_nowait, None)

    outcome = asyncio.ensure_future(asyncio.to_thread(run))
    outcome.add_done_callback(_mark_retrieved)
    response: web.StreamResponse | None = None
    while (event := await events.get()) is not None:
        if response is None:
            response = web.StreamResponse(headers={"Content-Type": NDJSON})
            await response.prepare(request)
        await response.write(_json_line(event))
    try:
        final: dict[str, Any] = {"result": (await outcome).to_wire()}
    except EdgedError as exc:
        if response is None:
            raise
        final = {**exc.body(), "status": exc.status}
    except Exception:
        if response is None:
            raise
        logger.exception("adding documents failed after streaming began")
        final = {**InternalError("internal server error").body(), "status": 500}
    if response is None:
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
    await response.write(_json_line(final))
    await response.write_eof()
    return response


def _json_line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _mark_retrieved(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished add's exception, so a client gone mid-stream (the handler then
    never awaits it) leaves no "exception was never retrieved" behind."""
    if not task.cancelled():
        task.exception()


async def remove_contributor(request: web.Request) -> web.Response:
    state = await asyncio.to_thread(request.app[DATANETS].remove_contributor,
                                    request.match_info["name"],
                                    request.match_info["contributor"])
    return json_response(state.public_view())


async def compact_datanet(request: web.Request) -> web.Response:
    state = await asyncio.to_thread(request.app[DATANETS].compact, request.match_info["name"])
    return json_response(state.public_view())


async def receipt_evidence(request: web.Request) -> web.Response:
    """The evidence behind a receipt's attribution: for an authorised caller on this
    machine only (it names documents; it never leaves the node and is never synced)."""
    if not is_local(request):
        raise Forbidden("evidence is served to local callers only")
    leaf, receipt = stored_receipt(request)
    raw = request.app[LEDGER].get_evidence(leaf)
    evidence: dict[str, Any] = canonical.decode(raw) if raw is not None else {}
    return json_response({"id": leaf.hex(), "method": receipt.fields["attr"]["method"],
                          "evidence": evidence})
