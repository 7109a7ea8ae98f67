"""The node's Merkle log over HTTP: checkpoints, inclusion and consistency proofs."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from edged.errors import InvalidRequest, NotFound
from edged.http.common import accepts, json_response, stored_receipt
from edged.ledger import LEDGER, Ledger
from edged.schema import Query
from sync.checkpoint import SignedCheckpoint
from sync.clock import unix_millis


def add_sync_routes(app: web.Application) -> None:
    app.router.add_get("/v1/sync/checkpoint", get_checkpoint)
    app.router.add_get("/v1/sync/consistency", get_consistency)
    app.router.add_get("/v1/receipts/{id}/proof", get_inclusion_proof)


def checkpoint_json(signed: SignedCheckpoint) -> dict[str, Any]:
    return {**signed.to_json(), "raw": base64.b64encode(signed.encode()).decode()}


async def _checkpoint_covering(ledger: Ledger, size: int | None) -> SignedCheckpoint:
    """The checkpoint of exactly ``size`` receipts (or of the whole log), cutting one on
    demand when the log has grown past the latest."""
    latest = ledger.latest_checkpoint()
    if size is None:
        if latest is None or latest.checkpoint.size < ledger.count():
            latest = await asyncio.to_thread(ledger.cut_checkpoint, unix_millis())
        return latest
    existing = ledger.checkpoint_at(size)
    if existing is None:
        fresh = await asyncio.to_thread(ledger.cut_checkpoint, unix_millis())
        if fresh.checkpoint.size != size:
            raise NotFound(f"no checkpoint of size {size}; the latest is "
                           f"{fresh.checkpoint.size}", param="size")
        existing = fresh
    return existing


Size = Annotated[int, Field(ge=0, le=2**63 - 1)]  # a tree size: a count of receipts


class CheckpointQuery(Query):
    fresh: bool = Field(False, description="cut a new checkpoint even if the log has not grown")


@accepts(query=CheckpointQuery)
async def get_checkpoint(request: web.Request, *, query: CheckpointQuery) -> web.Response:
    ledger = request.app[LEDGER]
    if query.fresh:
        signed = await asyncio.to_thread(ledger.cut_checkpoint, unix_millis())
    else:
        signed = await _checkpoint_covering(ledger, None)
    return json_response(checkpoint_json(signed))


class ProofQuery(Query):
    size: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = Field(
        None, description="the tree size; the whole log's if absent")


@accepts(query=ProofQuery)
async def get_inclusion_proof(request: web.Request, *, query: ProofQuery) -> web.Response:
    ledger = request.app[LEDGER]
    _, receipt = stored_receipt(request)
    checkpoint = await _checkpoint_covering(ledger, query.size)
    size = checkpoint.checkpoint.size
    if receipt.seq >= size:
        raise InvalidRequest("the receipt is not in a tree of that size", param="size")
    proof = await asyncio.to_thread(ledger.inclusion_proof, receipt.seq, size)
    return json_response({"id": receipt.leaf.hex(), "seq": receipt.seq, "size": size,
                          "proof": [step.hex() for step in proof],
                          "checkpoint": checkpoint_json(checkpoint)})


class ConsistencyQuery(Query):
    first: Size = 0
    second: Size | None = Field(None, description="the whole log's size if absent")


@accepts(query=ConsistencyQuery)
async def get_consistency(request: web.Request, *, query: ConsistencyQuery) -> web.Response:
    ledger = request.app[LEDGER]
    count = ledger.count()
    first, second = query.first, count if query.second is None else query.second
    for name, value in (("first", first), ("second", second)):  # the log's size: not static
        if value > count:
            raise InvalidRequest(f"'{name}' must be within 0..{count}", param=name)
    if first > second:
        raise InvalidRequest("'first' must not exceed 'second'", param="first")
    proof = await asyncio.to_thread(ledger.consistency_proof, first, second)
    return json_response({"first": first, "second": second,
                          "first_root": ledger.root(first).hex(),
                          "second_root": ledger.root(second).hex(),
                          "proof": [step.hex() for step in proof]})
