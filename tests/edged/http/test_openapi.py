"""The OpenAPI document at /openapi.json: its access rules, that it covers every route,
and that the OpenAI bodies it documents are the ones the parser accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from edged.app import create_app
from edged.errors import UnsupportedParameter
from edged.fleet.app import create_fleet_app
from edged.http.openapi import OPENAPI_PATH
from edged.manifest import RUNTIMES
from edged.openai_requests import ChatBody, CompletionBody, EmbeddingBody
from edged.schema import Body, json_schema, refused_fields, validated
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, fake_loader, make_settings


def routes(client: TestClient[Any, Any]) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route, without aiohttp's automatic HEADs."""
    found = {(route.method, route.resource.canonical) for route in client.app.router.routes()
             if route.resource is not None}
    return {(method, path) for method, path in found
            if not (method == "HEAD" and ("GET", path) in found)}


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items()
            for method in item}


async def test_the_node_documents_every_route_it_serves(client: TestClient[Any, Any]) -> None:
    response = await client.get(OPENAPI_PATH)
    assert response.status == 200
    document = await response.json()
    assert document["openapi"] == "3.1.0"
    assert documented(document) == routes(client)
    assert {"/v1/chat/completions", "/api/models/{name}", "/v2/models/{name}/infer",
            "/v1/sync/push", OPENAPI_PATH} <= set(document["paths"])
    params = document["paths"]["/v1/receipts"]["get"]["parameters"]
    assert {p["name"] for p in params if p["in"] == "query"} == {"after_seq", "limit"}


async def test_the_fleet_manager_documents_every_route_it_serves(
        aiohttp_client: AppClientFactory, tmp_path: Path) -> None:
    client = await aiohttp_client(create_fleet_app(make_settings(tmp_path / "fleet")))
    document = await (await client.get(OPENAPI_PATH)).json()
    assert documented(document) == routes(client)
    assert "/fleet/nodes/{node}" in document["paths"]


@pytest.mark.parametrize("fleet", [False, True])
async def test_the_document_needs_an_api_key_when_keys_are_set(
        aiohttp_client: AppClientFactory, tmp_path: Path, fleet: bool) -> None:
    settings = make_settings(tmp_path / "data", api_keys=("sekret",))
    app = create_fleet_app(settings) if fleet else create_app(
        settings, runtimes=RUNTIMES, loader=fake_loader())
    client = await aiohttp_client(app)
    refused = await client.get(OPENAPI_PATH)
    assert refused.status == 401
    assert (await refused.json())["error"]["type"] == "authentication_error"
    allowed = await client.get(OPENAPI_PATH, headers={"Authorization": "Bearer sekret"})
    assert allowed.status == 200
    assert (await allowed.json())["openapi"] == "3.1.0"


@pytest.mark.parametrize(("path", "model"), [
    ("/v1/chat/completions", ChatBody), ("/v1/completions", CompletionBody),
    ("/v1/embeddings", EmbeddingBody), ("/v1/sync/chat/completions", ChatBody),
    ("/v1/sync/completions", CompletionBody)], ids=lambda value: str(value))
async def test_the_documented_bodies_are_the_validators_models(
        client: TestClient[Any, Any], path: str, model: type[Body]) -> None:
    document = await (await client.get(OPENAPI_PATH)).json()
    body = document["paths"][path]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    definitions: dict[str, Any] = {}
    assert body == json_schema(model, definitions)
    assert definitions.items() <= document["components"]["schemas"].items()
    assert body["additionalProperties"] is False
    assert set(body["properties"]) == set(model.model_fields)
    for name in refused_fields(model):  # null, or the one value that asks for nothing
        assert {"type": "null"} in body["properties"][name]["anyOf"]


async def test_every_reference_in_the_document_resolves(client: TestClient[Any, Any]) -> None:
    document = await (await client.get(OPENAPI_PATH)).json()
    references: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            references.extend([value["$ref"]] if isinstance(value.get("$ref"), str) else [])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(document)
    assert "#/components/schemas/TextMessage" in references
    for reference in references:
        assert reference.startswith("#/components/schemas/")
        assert reference.removeprefix("#/components/schemas/") in document["components"][
            "schemas"]


def test_a_field_outside_the_document_is_refused_by_the_parser() -> None:
    with pytest.raises(UnsupportedParameter) as refused:
        validated(ChatBody, {"model": FAKE_MODEL, "not_a_field": 1,
                             "messages": [{"role": "user", "content": "hi"}]})
    assert refused.value.param == "not_a_field"


async def test_a_large_response_format_is_compiled_off_the_event_loop(
        client: TestClient[Any, Any]) -> None:
    """Found by the fuzz (test_fuzz.py): compiling a response format's schema to a grammar
    ran on the event loop; a schema this size takes well over the watchdog's 50 ms."""
    fields = {f"field_{i}": {"type": "array", "items": {"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "integer"}}}} for i in range(1500)}
    schema = {"type": "object", "properties": fields, "required": sorted(fields)}
    response = await client.post("/v1/chat/completions", json={
        "model": FAKE_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "big", "schema": schema}}})
    # Parsed and compiled (the fake runtime then refuses grammars at generation).
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "response_format"


def test_json_bodies_and_queries_are_read_only_through_their_declarations() -> None:
    """No handler reads a JSON body or a query parameter past its model: the readers are
    edged.http.common (accepts, validated_query, json_body) and the federated routes,
    which call json_body and validate with the same models after the peer's signature
    checks out; so what /openapi.json shows is what the handlers check."""
    root = Path(__file__).resolve().parents[3]
    reads = ("read_json(", "request.query", "json_body(", "json.loads(", "request.json(",
             "request.post(")
    readers = {str(path.relative_to(root))
               for folder in ("edged/http", "edged/fleet")
               for path in (root / folder).rglob("*.py")
               if any(read in path.read_text() for read in reads)}
    assert readers == {"edged/http/common.py", "edged/http/federation.py"}
