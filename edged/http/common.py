"""What every handler shares: reading JSON bodies, and the one error shape."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from attribution.receipt import SignedReceipt
from edged import bounded_json
from edged.errors import (
    EdgedError,
    InvalidJSON,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_body,
)
from edged.ledger import LEDGER
from edged.schema import Body, Query, param_name, validated

Q = TypeVar("Q", bound=Query)

logger = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The "model" a JSON body names, unchecked (edged.metrics labels it only if registered).
REQUESTED_MODEL = web.RequestKey("requested_model", str)
# Set once the application has started (node and fleet); /readyz answers 503 until then.
READY = web.AppKey("ready", asyncio.Event)


async def read_json(request: web.Request) -> Any:
    """The body as JSON, or an error in the OpenAI shape."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("the request body is too large") from None
    if not raw:
        return {}
    body = json_body(raw)
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        request[REQUESTED_MODEL] = body["model"]
    return body


def json_body(raw: bytes) -> Any:
    """A request body's JSON, whose every string is valid Unicode text: JSON's escapes can
    spell a lone surrogate (``"\\ud800"``), which no tokenizer, hash or UTF-8 encoder
    takes; one check here covers every field, free-form schemas included."""
    try:
        body = bounded_json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidJSON("the request body is not valid JSON") from None
    if b"\\u" in raw:  # only an escape (always "\\u") spells a surrogate; UTF-8 cannot
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            param = param_name(_invalid_text_at(body) or (), body) or None
            raise InvalidRequest(f"'{param}' is not valid Unicode text (a lone surrogate)"
                                 if param else "the request body holds text that is not valid "
                                 "Unicode (a lone surrogate)", param=param) from None
    return body


def _invalid_text_at(value: Any, loc: tuple[int | str, ...] = ()
                     ) -> tuple[int | str, ...] | None:
    """Where the first string UTF-8 cannot encode is (for a key: the object holding it,
    so the key itself is never repeated in the error); None if there is none."""
    if isinstance(value, str):
        return loc if _not_utf8(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _not_utf8(key):
                return loc
            if (found := _invalid_text_at(item, (*loc, key))) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _invalid_text_at(item, (*loc, index))) is not None:
                return found
    return None


def _not_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


async def read_body(request: web.Request, limit: int, message: str) -> bytes:
    """The whole request body, read as a stream; :class:`PayloadTooLarge` past ``limit``.

    (``request.content.read(n)`` returns only what has arrived so far, not ``n`` bytes.)"""
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(message)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(message)
    return bytes(body)


def json_response(data: Any, *, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=lambda value: json.dumps(
        value, separators=(",", ":"), allow_nan=False))


def error_response(exc: EdgedError, path: str = "") -> web.Response:
    """An error in its protocol's shape (see :func:`render_error`)."""
    return render_error(path, exc.status, exc.message, exc.type, exc.param, exc.code,
                        exc.headers)


def render_error(path: str, status: int, message: str, kind: str,
                 param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> web.Response:
    """The one renderer of error answers: the Open Inference Protocol's
    ``{"error": message}`` under /v2, OpenAI's ``{"error": {...}}`` everywhere else
    (/v1, /api, /v1/sync and the fleet manager)."""
    body: Any = {"error": message} if path.startswith("/v2") else error_body(
        message, kind, param, code)
    return json_response(body, status=status, headers=dict(headers) if headers else None)


def status_error(path: str, status: int, message: str) -> web.Response:
    """An error whose status aiohttp (not edged) chose."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return render_error(path, status, message, kind)


def internal_error(path: str) -> web.Response:
    """An unexpected failure: its words never carry what failed (logged separately)."""
    return render_error(path, 500, "internal server error", "server_error",
                        code="internal_error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into ``{"error": {...}}`` with the right status."""
    path = request.path
    try:
        return await handler(request)
    except EdgedError as exc:
        return error_response(exc, path)
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("the request body is too large"), path)
    except web.HTTPNotFound:
        return error_response(NotFound(f"no route for {request.method} {path}"), path)
    except web.HTTPMethodNotAllowed:
        return error_response(MethodNotAllowed(f"{request.method} is not allowed here"), path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return status_error(path, exc.status, exc.reason)
    except Exception:
        # The traceback names code locations only; request content is never logged.
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return internal_error(path)


class ClientSafeServerLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, minus what a client sent.

    When aiohttp cannot parse a request, the exception's text quotes the offending bytes,
    which may be an ``Authorization`` header line; such errors are logged by class only.
    Anything else aiohttp logs (a bug below the middleware) keeps its traceback."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info if isinstance(exc_info, BaseException) else (
            exc_info[1] if isinstance(exc_info, tuple) else None)
        if isinstance(error, HttpProcessingError):
            kwargs["exc_info"] = None
            msg, args = f"{msg}: %s", (*args, type(error).__name__)
        super().log(level, msg, *args, **kwargs)


def server_handler_args() -> dict[str, Any]:
    """``web.Application(handler_args=...)`` for every app edged serves."""
    return {"logger": ClientSafeServerLogger(logging.getLogger("aiohttp.server"), {})}


RECEIPT_ID = re.compile(r"^[0-9a-f]{64}$")


def accepts(*, body: type[Body] | None = None, query: type[Query] | None = None
            ) -> Callable[[Callable[..., Awaitable[web.StreamResponse]]], Handler]:
    """Declare what a handler reads, once: its JSON ``body`` and its ``query`` models
    (:mod:`edged.schema`). The wrapper validates both before the handler runs (a failure
    is a 400 naming its param, and the handler never sees an unchecked value), passes them
    as the keyword arguments ``body`` and ``query``, and keeps the models on itself, where
    the OpenAPI document (:mod:`edged.http.openapi`) reads them."""

    def decorate(handler: Callable[..., Awaitable[web.StreamResponse]]) -> Handler:
        @functools.wraps(handler)
        async def validating(request: web.Request) -> web.StreamResponse:
            arguments: dict[str, Any] = {}
            if query is not None:
                arguments["query"] = validated_query(request, query)
            if body is not None:
                arguments["body"] = validated(body, await read_json(request))
            return await handler(request, **arguments)

        validating.body_model = body  # type: ignore[attr-defined]
        validating.query_model = query  # type: ignore[attr-defined]
        return validating

    return decorate


def validated_query(request: web.Request, model: type[Q]) -> Q:
    """``request``'s query parameters as ``model``; a repeated parameter counts with its
    first value, as ``request.query.get`` gives it."""
    return validated(model, {name: request.query.get(name) for name in request.query})


def receipt_leaf(text: str, param: str = "id") -> bytes:
    """A receipt id (64 hex digits, any case) as its 32-byte leaf hash; 400 otherwise."""
    text = text.lower()
    if not RECEIPT_ID.fullmatch(text):
        raise InvalidRequest("a receipt id is 64 hex digits", param=param)
    return bytes.fromhex(text)


def is_local(request: web.Request) -> bool:
    """Whether the caller is on this machine (a loopback address)."""
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def stored_receipt(request: web.Request) -> tuple[bytes, SignedReceipt]:
    """The receipt the path's ``{id}`` names, with its leaf: 400 for a malformed id, 404
    when this node's ledger does not hold it."""
    leaf = receipt_leaf(request.match_info["id"])
    receipt = request.app[LEDGER].get(leaf)
    if receipt is None:
        raise NotFound("no receipt with that id", param="id")
    return leaf, receipt

