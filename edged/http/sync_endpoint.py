"""The signed sync endpoints a node and a fleet manager both answer: hello, heads, push.

The small core the two roles share (DESIGN.md, "Sync between nodes"): what answers them
(:class:`SyncEndpoint`, ``app[SYNC_ENDPOINT]``), who checks the caller's signature
(``app[REQUEST_VERIFIER]``), the refusal they raise, and the routes. A node adds pull and
its operator routes in :mod:`edged.http.exchange`; the fleet adds nothing of the node's.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

from aiohttp import web
from pydantic import Field

from edged.errors import EdgedError, TooManyRequests
from edged.http.common import accepts, json_response, read_body
from edged.schema import Query
from sync.auth import RequestVerifier
from sync.batch import MAX_BATCH_BYTES

MSGPACK = "application/msgpack"
HELLO_DOMAIN = b"edged/sync-hello/v1\0"
# Pushes read up to MAX_BATCH_BYTES each: only this many bodies are read at once.
MAX_CONCURRENT_PUSHES = 4


class SyncRefused(EdgedError):
    """A batch or request this node will not accept: malformed or unprovable (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_batch"


class SyncForbidden(SyncRefused):
    """Receipts of an untrusted or frozen origin, or a peer that is not trusted (403)."""

    status = 403
    code = "forbidden"


class SyncEquivocation(SyncRefused):
    """A batch that proves its origin equivocated; the origin is now frozen (409)."""

    status = 409
    code = "equivocation"


class SyncEndpoint(Protocol):
    """What answers the signed sync endpoints (hello, heads, push): a node's
    :class:`edged.exchange.ExchangeService`, or a fleet manager."""

    @property
    def signing_key(self) -> Any: ...

    @property
    def origin(self) -> bytes: ...

    def heads(self) -> list[dict[str, Any]]: ...

    def ingest(self, data: bytes) -> int: ...


SYNC_ENDPOINT = web.AppKey("sync_endpoint", SyncEndpoint)
REQUEST_VERIFIER = web.AppKey("request_verifier", RequestVerifier)
PUSH_SLOTS = web.AppKey("push_slots", asyncio.Semaphore)


def add_sync_endpoint_routes(app: web.Application) -> None:
    """The signed endpoints a node and a fleet manager both answer (app[SYNC_ENDPOINT])."""
    app[PUSH_SLOTS] = asyncio.Semaphore(MAX_CONCURRENT_PUSHES)
    app.router.add_get("/v1/sync/hello", hello)
    app.router.add_get("/v1/sync/heads", heads)
    app.router.add_post("/v1/sync/push", push)


async def authenticate(request: web.Request, body: bytes = b"") -> bytes:
    """The caller's node key, checked by ``app[REQUEST_VERIFIER]``; raises
    :class:`sync.auth.AuthError` (401, or 403 for an untrusted key) if refused."""
    return request.app[REQUEST_VERIFIER].verify(request.method, request.path_qs,
                                                request.headers, body)


def signed(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
           ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``handler`` behind :func:`authenticate` (a request without a body): the caller's
    signature is checked before anything else, its query included. The models
    :func:`edged.http.common.accepts` keeps on ``handler`` stay visible (``wraps``)."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        await authenticate(request)
        return await handler(request)

    return checked


class HelloQuery(Query):
    challenge: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$",
                                    description="16 random bytes in lowercase hex")]


@accepts(query=HelloQuery)
async def hello(request: web.Request, *, query: HelloQuery) -> web.Response:
    """Who answers here: the node key a caller signs its sync requests for, with a
    signature over the caller's challenge (proof this server holds that key)."""
    service = request.app[SYNC_ENDPOINT]
    signature = service.signing_key.sign(
        HELLO_DOMAIN + bytes.fromhex(query.challenge)).signature
    return json_response({"public_key": service.origin.hex(), "signature": signature.hex()})


async def heads(request: web.Request) -> web.Response:
    await authenticate(request)
    service = request.app[SYNC_ENDPOINT]
    return json_response({"heads": await asyncio.to_thread(service.heads)})


async def push(request: web.Request) -> web.Response:
    # No body model: a push is a msgpack batch, signed over its raw bytes (sync.auth).
    # Nobody gets a body read before their headers pass: a trusted key, a fresh
    # timestamp, an unused nonce. The signature over the body is checked after.
    request.app[REQUEST_VERIFIER].precheck(request.headers)
    slots = request.app[PUSH_SLOTS]
    if slots.locked():
        raise TooManyRequests("too many pushes at once; try again shortly")
    async with slots:  # held while the body is in memory
        body = await read_body(request, MAX_BATCH_BYTES, "batch too large")
        await authenticate(request, body)
        stored = await asyncio.to_thread(request.app[SYNC_ENDPOINT].ingest, body)
    return json_response({"stored": stored})
