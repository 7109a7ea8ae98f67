"""Security middleware: Host allowlist, CORS policy, API keys, body limit.

- Host: only names that mean this node (localhost, the loopback addresses, the bind
  address, and configured ``allowed_hosts``) are served; anything else is a DNS
  rebinding attempt and gets 403.
- Origin: browsers may call only from configured origins (exact match, never ``*``);
  a request with any other Origin is refused; preflights are answered here.
- API keys: when configured, every endpoint but the health checks needs
  ``Authorization: Bearer <key>`` (compared in constant time).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from edged.errors import Forbidden, PayloadTooLarge, Unauthorized
from edged.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CORS_ORIGIN = web.RequestKey("cors_origin", str)  # the Origin that passed the policy
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
# Federated inference (edged.http.federation) adds its models, routed requests and receipts.
NODE_SIGNED_PATHS = frozenset({"/v1/sync/hello", "/v1/sync/heads", "/v1/sync/pull",
                               "/v1/sync/push", "/v1/sync/models", "/v1/sync/chat/completions",
                               "/v1/sync/completions", "/v1/sync/receipt"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")
CORS_ALLOW_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project"
CORS_EXPOSE_HEADERS = "X-Edged-Receipt, X-Edged-Node, Retry-After"
CORS_METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS"


def allowed_host_names(settings: Settings) -> frozenset[str]:
    names = {*LOOPBACK_NAMES, settings.host.lower(), *(h.lower() for h in settings.allowed_hosts)}
    return frozenset(names)


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _streamed_upload(path: str) -> bool:
    """Uploads read as streams with limits of their own (weights, datanet documents)."""
    return path.startswith("/api/blobs/") or (
        path.startswith("/api/datanets/") and path.endswith("/documents")) or (
        path.startswith("/api/models/") and path.endswith("/examples"))


def security_middleware(
    settings: Settings, *, public_paths: frozenset[str] = PUBLIC_PATHS,
) -> web.middleware:  # type: ignore[valid-type]
    """``public_paths`` need no API key (health checks; the fleet's dashboard page, which
    holds no data and asks for a key itself)."""
    host_names = allowed_host_names(settings)
    origins = frozenset(settings.cors_origins)
    keys = tuple(key.encode() for key in settings.api_keys)

    def authorised(header: str) -> bool:
        # Compared as sent: only ASCII space and tab around the value are dropped (str.strip
        # would also drop Unicode spaces such as U+00A0 and could leave an empty token).
        scheme, _, token = header.strip(" \t").partition(" ")
        token = token.strip(" \t")
        if scheme.lower() != "bearer" or not token:
            return False
        presented = token.encode("utf-8", "surrogateescape")
        # Check every key so timing does not reveal which one nearly matched.
        return any([hmac.compare_digest(presented, key) for key in keys])

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in NODE_SIGNED_PATHS and "Origin" not in request.headers:
            # Peers reach us by any address and carry their own node signature, checked
            # by the handler; browsers (Origin) never get this way around the checks.
            return await handler(request)
        if _host_name(request.headers.get("Host", "")) not in host_names:
            raise Forbidden("this Host is not served here", param="Host")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in origins:
            raise Forbidden("this Origin may not call the API", param="Origin")
        if origin is not None:
            request[CORS_ORIGIN] = origin
        if request.method == "OPTIONS" and origin is not None:
            response: web.StreamResponse = web.Response(status=204)
        else:
            if keys and request.path not in public_paths and not authorised(
                    request.headers.get("Authorization", "")):
                raise Unauthorized("a valid API key is required (Authorization: Bearer ...)")
            if (request.content_length or 0) > settings.max_body_bytes and not (
                    _streamed_upload(request.path)):
                raise PayloadTooLarge("the request body is too large")
            response = await handler(request)
        return response

    return middleware


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: by the time a response is prepared its Origin (if
    any) has passed the middleware's check, so it is echoed back; streamed responses
    get the headers too."""
    origin = request.get(CORS_ORIGIN)
    if origin is None:
        return  # no Origin, or a refused one: refused origins learn nothing
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
    response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
    response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
