"""The HTTP metrics node and fleet share: requests by route group, model and status, and
their latency, counted by the outermost middleware; and the Prometheus text exposition.

A small core of its own so that the fleet manager imports none of the node's services.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

Handler = Callable[[web.Request], Any]

# Seconds. Requests run from a health check (~1 ms) to a long generation (minutes).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
CLIENT_CLOSED = 499  # nginx's code for a client that went away before the answer


def route_group(path: str, groups: Sequence[tuple[str, str]]) -> str:
    """The route group of ``path``: a fixed, small set of label values."""
    for prefix, group in groups:
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            return group
    return "other"


def exposition(registry: CollectorRegistry) -> web.Response:
    """The registry in the Prometheus text format."""
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


class HttpMetrics:
    """Requests by route group, model and status, and their latency; node and fleet."""

    def __init__(self, registry: CollectorRegistry, groups: Sequence[tuple[str, str]],
                 model_of: Callable[[web.Request], str] = lambda request: "") -> None:
        self._groups = groups
        self._model_of = model_of
        self.requests = Counter(
            "edged_http_requests", "HTTP requests answered, by route group, model (for the "
            "routes that name one) and status code", ["route_group", "model", "status"],
            registry=registry)
        self.latency = Histogram(
            "edged_http_request_duration_seconds", "Time from a request's arrival to the "
            "end of its answer (a whole stream for streamed answers)", ["route_group"],
            buckets=REQUEST_BUCKETS, registry=registry)

    async def measure(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer ``request`` with ``handler``, counting and timing it."""
        started = time.perf_counter()
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            group = route_group(request.path, self._groups)
            self.requests.labels(group, self._model_of(request), str(status)).inc()
            self.latency.labels(group).observe(time.perf_counter() - started)


HTTP_METRICS = web.AppKey("http_metrics", HttpMetrics)


@web.middleware
async def http_metrics_middleware(request: web.Request,
                                  handler: Handler) -> web.StreamResponse:
    """The outermost middleware of node and fleet (``app[HTTP_METRICS]``): it sees the
    status the error and security middlewares settled on."""
    return await request.app[HTTP_METRICS].measure(request, handler)
