"""The one error hierarchy: every error's status is its class's, and each protocol's error
shape comes from one renderer (``edged.http.common.error_response``)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

import edged.errors
import edged.fleet.store
import edged.http.sync_endpoint
import edged.settings
import sync.auth
from edged.errors import EdgedError, InvalidRequest, NotFound
from edged.fleet.store import FleetForbidden, FleetRefused
from edged.http.common import error_middleware, error_response
from edged.settings import SettingsError
from sync.auth import AuthError, UntrustedCaller

DEFINING_MODULES = (edged.errors, edged.fleet.store, edged.settings, edged.http.sync_endpoint,
                    sync.auth)


def every_error_class() -> list[type[EdgedError]]:
    found: list[type[EdgedError]] = []
    pending = [EdgedError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def make(cls: type[EdgedError]) -> EdgedError:
    return cls("message", "some_code") if issubclass(cls, FleetRefused) else cls("message")


def test_the_hierarchy_covers_every_module_that_defines_errors() -> None:
    modules = {cls.__module__ for cls in every_error_class()}
    assert {module.__name__ for module in DEFINING_MODULES} <= modules
    assert {AuthError, UntrustedCaller, edged.http.sync_endpoint.SyncRefused, FleetRefused,
            SettingsError} <= set(every_error_class())


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda cls: cls.__qualname__)
def test_status_and_type_are_class_attributes_never_set_per_instance(
        cls: type[EdgedError]) -> None:
    error = make(cls)
    assert "status" not in vars(error) and "type" not in vars(error)
    assert error.status == cls.status and 400 <= cls.status <= 599


def test_a_settings_error_is_not_an_http_request_error() -> None:
    assert not issubclass(SettingsError, InvalidRequest)


def test_sync_auth_refusals_answer_401_and_403() -> None:
    assert (AuthError.status, UntrustedCaller.status) == (401, 403)
    assert FleetForbidden("revoked", "revoked_node").type == "permission_error"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/models", "/v1/sync/push",
                                  "/fleet/epochs"])
def test_openai_shape_everywhere_but_v2(path: str) -> None:
    response = error_response(NotFound("no such thing", param="id"), path)
    assert response.status == 404
    assert response.text == ('{"error":{"message":"no such thing","type":"invalid_request_error",'
                             '"param":"id","code":"not_found"}}')


def test_the_open_inference_protocol_shape_under_v2() -> None:
    response = error_response(UntrustedCaller("not trusted"), "/v2/models/m/infer")
    assert response.status == 403
    assert response.text == '{"error":"not trusted"}'


async def test_failures_edged_did_not_raise_are_shaped_per_protocol_too(
        aiohttp_client: Any) -> None:
    """An unexpected exception and an aiohttp HTTP error go through the same renderer:
    OIP's shape under /v2, OpenAI's elsewhere."""
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def teapot(request: web.Request) -> web.Response:
        raise web.HTTPConflict(reason="taken")

    app = web.Application(middlewares=[error_middleware])
    for prefix in ("/v1", "/v2"):
        app.router.add_get(f"{prefix}/boom", boom)
        app.router.add_get(f"{prefix}/teapot", teapot)
    client = await aiohttp_client(app)
    for prefix in ("/v1", "/v2"):
        crashed = await client.get(f"{prefix}/boom")
        conflict = await client.get(f"{prefix}/teapot")
        assert (crashed.status, conflict.status) == (500, 409)
        if prefix == "/v2":
            assert await crashed.json() == {"error": "internal server error"}
            assert await conflict.json() == {"error": "taken"}
        else:
            assert (await crashed.json())["error"]["code"] == "internal_error"
            assert (await conflict.json())["error"] == {
                "message": "taken", "type": "invalid_request_error", "param": None,
                "code": None}
