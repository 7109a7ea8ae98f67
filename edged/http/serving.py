"""Serving an app on a TCP port: aiohttp's runner, with one change.

A request aiohttp cannot parse (a bad header line, an oversized field) is answered by
aiohttp itself, before any middleware runs, as ``text/plain`` quoting the offending
bytes. Here it is answered in the one error shape, with the status phrase only, so
that a client sees the same errors everywhere and nothing it sent is echoed or logged
(the app's ``handler_args`` carry the logger: ``edged.http.common.server_handler_args``).
"""

from __future__ import annotations

import asyncio
import contextlib
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from edged.http.common import status_error


def status_error_response(status: int, path: str = "") -> web.Response:
    """The error shape for a status aiohttp chose, worded by the status alone."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return status_error(path, status, phrase)


class _ShapedErrorHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; refuses mid-response
        response = status_error_response(status, request.path)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _ShapedErrorHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer parser-level errors in the error shape."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(plain.request_handler, request_factory=plain.request_factory,
                       handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                       **plain._kwargs)


async def serve(app: web.Application, host: str, port: int, **runner_args: Any) -> None:
    """Serve ``app`` until cancelled or SIGINT/SIGTERM, then run its cleanup."""
    runner = AppRunner(app, handle_signals=True, **runner_args)
    try:  # a start-up that fails part way still closes what it opened
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` in the foreground (the CLI's ``serve`` commands)."""
    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(serve(app, host, port, access_log=None))

