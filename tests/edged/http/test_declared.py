"""The node's smaller bodies and query parameters are checked against their one
declaration (edged.schema models on each handler, via ``accepts``): a value off it is a
400 naming its param, before the handler runs, and /openapi.json documents the same."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from nacl.signing import SigningKey

from edged.http.openapi import OPENAPI_PATH
from edged.keys import NODE_KEYS
from edged.peers import PEERS
from sync.auth import sign_request

Client = TestClient[Any, web.Application]
KEY = "ab" * 32


@pytest.mark.parametrize(("path", "body", "param", "code"), [
    ("/api/datanets", {}, "name", "invalid_request"),
    ("/api/datanets", {"name": 7}, "name", "invalid_request"),
    ("/api/datanets", {"name": "books", "duplicates": None}, "duplicates",
     "invalid_request"),
    ("/api/datanets", {"name": "books", "policy": "first"}, "policy", "unsupported_parameter"),
    ("/api/peers/trust", {}, "key", "invalid_request"),
    ("/api/peers/trust", {"key": "nope"}, "key", "invalid_request"),
    ("/api/peers/trust", {"key": KEY, "label": 7}, "label", "invalid_request"),
    ("/api/peers/trust", {"key": KEY, "label": "x" * 65}, "label", "invalid_request"),
    ("/api/peers/trust", {"key": KEY, "note": "x"}, "note", "unsupported_parameter"),
])
async def test_a_body_off_its_declaration_is_a_400_naming_the_field(
        client: Client, path: str, body: dict[str, Any], param: str, code: str) -> None:
    response = await client.post(path, json=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["param"], error["code"]) == (param, code), error


async def test_a_body_that_is_not_an_object_is_a_400(client: Client) -> None:
    for path in ("/api/datanets", "/api/peers/trust"):
        response = await client.post(path, json=["books"])
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_request"


async def test_declared_bodies_keep_their_answers(client: Client) -> None:
    created = await client.post("/api/datanets", json={"name": "books"})
    assert created.status == 201 and (await created.json())["duplicates"] == "first"
    trusted = await client.post("/api/peers/trust",
                                json={"key": f" {KEY.upper()}\n", "label": None})
    assert trusted.status == 201
    assert (await trusted.json())["key"] == KEY and (await trusted.json())["label"] == ""


@pytest.mark.parametrize(("path", "query", "param"), [
    ("/v1/sync/hello", {}, "challenge"),
    ("/v1/sync/hello", {"challenge": "AB" * 16}, "challenge"),
    ("/v1/sync/checkpoint", {"fresh": "maybe"}, "fresh"),
    ("/v1/sync/consistency", {"first": "-1"}, "first"),
    ("/v1/sync/consistency", {"second": "x"}, "second"),
    ("/v1/sync/consistency", {"second": "1"}, "second"),  # past the (empty) log's size
])
async def test_a_query_off_its_declaration_is_a_400_naming_the_parameter(
        client: Client, path: str, query: dict[str, str], param: str) -> None:
    response = await client.get(path, params=query)
    assert response.status == 400
    assert (await response.json())["error"]["param"] == param


async def test_a_datanet_upload_is_refused_on_its_query_before_its_body(
        client: Client) -> None:
    assert (await client.post("/api/datanets", json={"name": "books"})).status == 201
    for query, param in (({}, "contributor"), ({"contributor": "a/b"}, "contributor"),
                         ({"contributor": "alice", "payout": "0x12"}, "payout")):
        response = await client.post("/api/datanets/books/documents", params=query,
                                     data=b'{"id": "a", "text": "some words"}\n')
        assert response.status == 400
        assert (await response.json())["error"]["param"] == param
    empty_payout = await client.post("/api/datanets/books/documents",
                                     params={"contributor": "alice", "payout": ""},
                                     data=b'{"id": "a", "text": "some words here"}\n')
    assert empty_payout.status == 201, await empty_payout.text()


def _signed(client: Client, key: SigningKey, path: str) -> dict[str, str]:
    return sign_request(key, "GET", path, b"", int(time.time() * 1000),
                        secrets.token_bytes(16), client.app[NODE_KEYS].public_key)


async def test_a_pull_is_authenticated_before_its_query_is_read(client: Client) -> None:
    bad = "/v1/sync/pull?origin=zz&have=-1"
    assert (await client.get(bad)).status == 401  # unsigned: refused whatever the query
    stranger = SigningKey.generate()
    assert (await client.get(bad, headers=_signed(client, stranger, bad))).status == 403
    peer = SigningKey.generate()
    client.app[PEERS].trust(bytes(peer.verify_key).hex())
    for path, param in ((bad, "origin"), (f"/v1/sync/pull?origin={KEY}&have=-1", "have"),
                        (f"/v1/sync/pull?origin={KEY}&limit=x", "limit")):
        response = await client.get(path, headers=_signed(client, peer, path))
        assert response.status == 400
        assert (await response.json())["error"]["param"] == param


async def test_the_document_lists_the_declared_query_parameters(client: Client) -> None:
    document = await (await client.get(OPENAPI_PATH)).json()

    def query(path: str, method: str = "get") -> set[str]:
        return {p["name"] for p in document["paths"][path][method].get("parameters", ())
                if p["in"] == "query"}

    assert query("/v1/sync/pull") == {"origin", "have", "known", "limit"}
    assert query("/v1/sync/hello") == {"challenge"}
    assert query("/v1/sync/checkpoint") == {"fresh"}
    assert query("/v1/sync/consistency") == {"first", "second"}
    assert query("/v1/receipts/{id}/proof") == {"size"}
    assert query("/v1/sync/evidence") == set()
    assert query("/api/datanets/{name}/documents", "post") == {"contributor", "payout"}
    assert query("/api/models/{name}/examples", "put") == {"method", "format"}
    body = document["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert body["required"] == ["inputs"] and body["additionalProperties"] is False
