"""``GET /openapi.json``: an OpenAPI 3.1 document of every route an application serves.

Derived, never written by hand where the code already declares something:

- paths, methods and path parameters come from the application's router
  (``app.router.routes()``), so a route cannot exist undocumented;
- request bodies and query parameters come from the Pydantic models each handler
  declares (``edged.http.common.accepts``; :mod:`edged.schema`), the same models that
  validate them, so the document, the validator and the fuzzer cannot drift;
- the error responses are the shapes :func:`edged.http.common.error_response` writes:
  OpenAI's ``{"error": {"message", "type", "param", "code"}}``, and the Open Inference
  Protocol's ``{"error": "..."}`` under ``/v2``.

Bodies read as bytes (uploads, signed sync batches) are documented as such; every JSON
body has its model, and a route without either reads no body.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from edged.errors import EdgedError
from edged.http.security import NODE_SIGNED_PATHS, PUBLIC_PATHS
from edged.schema import json_schema, query_parameters

OPENAPI_PATH = "/openapi.json"
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
# Bodies read as bytes: weights, documents, example sets, signed sync batches.
_BYTE_BODIES = frozenset({"/api/blobs/{digest}", "/api/models/{name}/examples",
                          "/api/datanets/{name}/documents", "/v1/sync/push"})
_STRING = {"type": "string"}


def _error_types() -> list[str]:
    """Every ``type`` an error can carry (the middleware's own two included)."""
    found, todo = {"invalid_request_error", "server_error"}, [EdgedError]
    while todo:
        cls = todo.pop()
        found.add(cls.type)
        todo.extend(cls.__subclasses__())
    return sorted(found)


_OPENAI_ERROR = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "additionalProperties": False,
        "properties": {"message": _STRING,
                       "type": {"enum": _error_types()},
                       "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "null"]}}}}}
_OIP_ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
              "properties": {"error": _STRING}}


ERROR_SCHEMAS = {"Error": _OPENAI_ERROR, "OIPError": _OIP_ERROR}


def add_openapi_route(app: web.Application, title: str) -> None:
    """Serve the document of ``app``'s routes (built once, on first request, off the
    event loop: generating the models' JSON schemas takes tens of milliseconds)."""
    document: list[bytes] = []

    async def openapi(request: web.Request) -> web.Response:
        if not document:
            document.append(await asyncio.to_thread(
                lambda: json.dumps(openapi_document(request.app, title),
                                   separators=(",", ":")).encode()))
        return web.Response(body=document[0], content_type="application/json")

    app.router.add_get(OPENAPI_PATH, openapi)


def openapi_document(app: web.Application, title: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of ``app``."""
    routes: dict[str, dict[str, Any]] = {}  # path -> {method: handler}
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if route.method == "*" or not canonical:
            continue
        routes.setdefault(_PARAM.sub(r"{\1}", canonical), {})[route.method] = route.handler
    paths: dict[str, Any] = {}
    definitions = dict(ERROR_SCHEMAS)
    for path, methods in sorted(routes.items()):
        item: dict[str, Any] = {}
        for method, handler in methods.items():
            if method == "HEAD" and "GET" in methods:
                continue  # aiohttp's automatic HEAD of a GET
            item[method.lower()] = _operation(method, path, handler, definitions)
        paths[path] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {
            "schemas": definitions,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        # An API key when the node has keys; none when it has none.
        "security": [{"apiKey": []}, {}],
    }


def _operation(method: str, path: str, handler: Any,
               definitions: dict[str, Any]) -> dict[str, Any]:
    doc = (getattr(handler, "__doc__", None) or "").strip()
    error = "OIPError" if path.startswith("/v2") else "Error"
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()} {path}",
        "responses": {
            "200": {"description": "success"},
            "default": {"description": "an error",
                        "content": {"application/json": {
                            "schema": {"$ref": f"#/components/schemas/{error}"}}}},
        },
    }
    if doc:
        operation["summary"] = doc.splitlines()[0]
    if path in PUBLIC_PATHS or path in NODE_SIGNED_PATHS:
        operation["security"] = []  # open, or signed by a node key (sync.auth)
    parameters = [{"name": name, "in": "path", "required": True, "schema": _STRING}
                  for name in _PARAM.findall(path)]
    query_model = getattr(handler, "query_model", None)
    if query_model is not None:
        parameters += query_parameters(query_model)
    if parameters:
        operation["parameters"] = parameters
    body_model = getattr(handler, "body_model", None)
    if body_model is not None:
        schema = json_schema(body_model, definitions)
        # A body whose every field is optional may be left out (an empty body is {}).
        operation["requestBody"] = {"required": bool(schema.get("required")), "content": {
            "application/json": {"schema": schema}}}
    elif path in _BYTE_BODIES:
        operation["requestBody"] = {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}
    # any other route reads no body (POST /api/sync/now, /fleet/epochs...): none documented
    return operation
