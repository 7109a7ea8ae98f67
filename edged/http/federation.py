"""Federated inference over HTTP (edged.federation holds the logic).

Served to trusted peers, authenticated by their node signature (sync.auth) like the
receipt exchange, and refused unless the ``federation`` setting is on:
``GET /v1/sync/models`` (this node's signed model advertisement),
``POST /v1/sync/chat/completions`` and ``/v1/sync/completions`` (a routed request, served
from a local model that does not opt out) and ``GET /v1/sync/receipt?id=`` (one of this
node's receipts). :func:`relay_if_remote` is the client side: the OpenAI handlers call it
for a model this node does not hold.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from edged.errors import (
    Forbidden,
    InternalError,
    ModelNotFound,
    NotFound,
)
from edged.federation import (
    FEDERATION,
    GENERATE_PATHS,
    MODELS_PATH,
    NODE_HEADER,
    RECEIPT_HEADER,
    RECEIPT_PATH,
    UNKNOWN_RECEIPT,
    RelayBroken,
    UpstreamError,
)
from edged.http.common import json_body, json_response, read_body, validated_query
from edged.http.sync_endpoint import REQUEST_VERIFIER
from edged.ledger import LEDGER
from edged.openai_requests import ChatBody, CompletionBody, GenerateRequest
from edged.schema import Query, validated
from edged.settings import SETTINGS

FEDERATED_PATHS = frozenset({MODELS_PATH, RECEIPT_PATH, *GENERATE_PATHS.values()})


def add_federation_routes(app: web.Application) -> None:
    app.router.add_get(MODELS_PATH, advertise_models)
    app.router.add_post(GENERATE_PATHS["chat"], routed_chat)
    app.router.add_post(GENERATE_PATHS["completion"], routed_completion)
    app.router.add_get(RECEIPT_PATH, routed_receipt)


async def _trusted_peer(request: web.Request, body: bytes = b"") -> bytes:
    """The caller's node key: a valid signature for this node, fresh, unused, trusted."""
    key = request.app[REQUEST_VERIFIER].verify(request.method, request.path_qs,
                                               request.headers, body)
    if not request.app[FEDERATION].enabled:
        raise Forbidden("federation is off on this node")
    return key


async def advertise_models(request: web.Request) -> web.Response:
    key = await _trusted_peer(request)
    return json_response(request.app[FEDERATION].signed_advert(key))


async def routed_chat(request: web.Request) -> web.StreamResponse:
    return await _serve_routed(request, ChatBody)


async def routed_completion(request: web.Request) -> web.StreamResponse:
    return await _serve_routed(request, CompletionBody)


# Their bodies are read only once the peer's signature over the raw bytes checks out, so
# the handlers validate them (with these models) rather than edged.http.common.accepts;
# the models are shown to /openapi.json the same way accepts shows them.
routed_chat.body_model = ChatBody  # type: ignore[attr-defined]
routed_completion.body_model = CompletionBody  # type: ignore[attr-defined]


async def _serve_routed(request: web.Request,
                        model: type[ChatBody] | type[CompletionBody]) -> web.StreamResponse:
    """A peer routed a request here: served like a local one, with this node's receipt."""
    # Nobody gets a body read before their headers pass.
    request.app[REQUEST_VERIFIER].precheck(request.headers)
    settings = request.app[SETTINGS]
    body = await read_body(request, settings.max_body_bytes, "the request body is too large")
    await _trusted_peer(request, body)
    data = json_body(body)
    # Off the loop: a response format is compiled to a grammar (see edged.http.openai).
    parsed = await asyncio.to_thread(validated(model, data).request,
                                     default_max_tokens=settings.default_max_tokens)
    if request.app[FEDERATION].servable(parsed.model) is None:
        raise ModelNotFound(f"model {parsed.model!r} is not served to peers here",
                            param="model")
    from edged.http.openai import generate_locally  # the OpenAI handlers import this module

    return await generate_locally(request, parsed)


class ReceiptById(Query):
    id: Annotated[str, Field(pattern="^[0-9a-fA-F]{64}$", description="a receipt id")]


async def routed_receipt(request: web.Request) -> web.Response:
    await _trusted_peer(request)  # first: nothing is parsed for an untrusted caller
    from edged.http.node import receipt_json

    query = validated_query(request, ReceiptById)
    receipt = request.app[LEDGER].get(bytes.fromhex(query.id.lower()))
    if receipt is None:
        raise NotFound("no receipt with that id", param="id")
    return json_response(receipt_json(receipt))


routed_receipt.query_model = ReceiptById  # type: ignore[attr-defined]  # as the bodies above


async def relay_if_remote(request: web.Request,
                          parsed: GenerateRequest) -> web.StreamResponse | None:
    """Answer a request for a model held by no local manifest by routing it to a trusted
    peer; None when it is not routed (federation off, a local model, or no peer serves
    it: the local path then answers as usual)."""
    federation = request.app.get(FEDERATION)
    if federation is None or not federation.routes(parsed.model) \
            or not federation.candidates(parsed.model, parsed.kind):
        return None
    body = await request.read()  # as the client sent it (already read and checked)
    if not parsed.stream:
        status, answer, outcome = await federation.relay_whole(parsed, body)
        headers = {"Content-Type": "application/json", NODE_HEADER: outcome.peer.node.hex()}
        if outcome.serving_receipt != UNKNOWN_RECEIPT:
            headers[RECEIPT_HEADER] = outcome.serving_receipt.hex()
        return web.Response(status=status, body=answer, headers=headers)
    response = web.StreamResponse()
    try:
        async with federation.relay_stream(parsed, body) as relay:
            assert relay.outcome is not None
            response.headers.update({"Content-Type": "text/event-stream",
                                     "Cache-Control": "no-cache",
                                     NODE_HEADER: relay.outcome.peer.node.hex()})
            await response.prepare(request)
            async for payload in relay:
                await response.write(b"data: " + payload + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except UpstreamError as exc:  # the peer's own error answer, before any output
        return web.Response(status=exc.status, body=exc.body,
                            headers={"Content-Type": exc.content_type})
    except RelayBroken:
        # The peer failed mid-stream: never re-routed (output was handed out already).
        await response.write(_event(InternalError("the serving peer failed mid-stream").body()))
        await response.write(b"data: [DONE]\n\n")
    except ConnectionError:
        pass  # the client went away: the upstream response is closed, the peer cancels
    return response


def remote_model_objects(app: web.Application) -> list[dict[str, Any]]:
    """``GET /v1/models`` entries for the trusted peers' models (none when federation is
    off): marked ``remote``, with the serving node's key."""
    federation = app.get(FEDERATION)
    return [] if federation is None else [m.to_openai() for m in federation.remote_models()]


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
