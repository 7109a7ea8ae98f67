"""The OpenAI-compatible API and the node endpoints, in process, on the fake runtime."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from attribution.chain import verify_chain
from attribution.receipt import leaf_hash, verify_receipt
from edged.app import create_app
from edged.ledger import LEDGER
from edged.manifest import RUNTIMES
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, fake_loader

Client = TestClient[Any, web.Application]
CHAT = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 5, "temperature": 0}


def sse_events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def fetch_receipt(client: Client, receipt_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/receipts/{receipt_id}")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def test_models_list(client: Client) -> None:
    body = await (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [FAKE_MODEL]


async def test_chat_completion_has_usage_and_a_committed_receipt(client: Client) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5
    assert response.headers["X-Edged-Receipt"] == body["receipt"]["id"]
    assert body["receipt"]["seq"] == 0

    stored = await fetch_receipt(client, body["receipt"]["id"])
    raw = base64.b64decode(stored["raw"])
    receipt = verify_receipt(raw)
    assert leaf_hash(raw).hex() == body["receipt"]["id"] == stored["id"]
    assert receipt.fields["kind"] == "chat"
    assert receipt.fields["usage"] == {"in": body["usage"]["prompt_tokens"], "out": 5}
    assert stored["model"]["name"] == FAKE_MODEL
    assert stored["attr"]["method"] == "owner/1"
    payees = {(p[0], p[1]): p[2] for p in stored["payees"]}
    assert payees[("model-owner", "owner")] == 900_000
    assert sum(payees.values()) == 1_000_000


async def test_same_request_twice_gives_the_same_commitments(client: Client) -> None:
    first = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    second = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    a = await fetch_receipt(client, first["receipt"]["id"])
    b = await fetch_receipt(client, second["receipt"]["id"])
    assert a["in"] == b["in"] and a["out"] == b["out"]
    assert b["prev"] == a["id"] and b["seq"] == a["seq"] + 1


async def test_streamed_chat_ends_with_receipt_then_done(client: Client) -> None:
    response = await client.post("/v1/chat/completions",
                                 json={**CHAT, "stream": True,
                                       "stream_options": {"include_usage": True}})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(await response.text())
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["usage"]["completion_tokens"] == 5
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2])
    stored = await fetch_receipt(client, final["receipt"]["id"])
    assert stored["usage"]["out"] == 5

    whole = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert whole["choices"][0]["message"]["content"] == text
    assert (await fetch_receipt(client, whole["receipt"]["id"]))["out"] == stored["out"]


async def test_completions_plain_and_streamed(client: Client) -> None:
    request = {"model": FAKE_MODEL, "prompt": "once upon", "max_tokens": 3, "seed": 7}
    body = await (await client.post("/v1/completions", json=request)).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"]
    response = await client.post("/v1/completions", json={**request, "stream": True})
    events = sse_events(await response.text())
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == body["choices"][0]["text"]
    assert (await fetch_receipt(client, events[-2]["receipt"]["id"]))["kind"] == "completion"


async def test_stop_sequence_ends_generation(client: Client) -> None:
    first = await (await client.post("/v1/completions", json={
        "model": FAKE_MODEL, "prompt": "x", "max_tokens": 6})).json()
    stop_word = first["choices"][0]["text"].split()[2]
    body = await (await client.post("/v1/completions", json={
        "model": FAKE_MODEL, "prompt": "x", "max_tokens": 6, "stop": [stop_word]})).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert stop_word not in body["choices"][0]["text"]


async def test_embeddings_for_string_and_list(client: Client) -> None:
    one = await (await client.post("/v1/embeddings",
                                   json={"model": FAKE_MODEL, "input": "hi"})).json()
    assert len(one["data"]) == 1 and len(one["data"][0]["embedding"]) == 8
    many = await (await client.post("/v1/embeddings",
                                    json={"model": FAKE_MODEL, "input": ["a", "b", "c"]})).json()
    assert [d["index"] for d in many["data"]] == [0, 1, 2]
    encoded = await (await client.post("/v1/embeddings", json={
        "model": FAKE_MODEL, "input": "hi", "encoding_format": "base64"})).json()
    assert len(base64.b64decode(encoded["data"][0]["embedding"])) == 8 * 4
    stored = await fetch_receipt(client, many["receipt"]["id"])
    assert stored["kind"] == "embedding" and stored["usage"]["out"] == 3


async def test_receipts_page_in_chain_order_and_verify(client: Client) -> None:
    ids = []
    for _ in range(5):
        ids.append((await (await client.post("/v1/chat/completions", json=CHAT)).json())
                   ["receipt"]["id"])
    first = await (await client.get("/v1/receipts", params={"limit": 2})).json()
    assert [r["id"] for r in first["data"]] == ids[:2] and first["has_more"]
    rest = await (await client.get("/v1/receipts", params={
        "after_seq": first["next_after_seq"], "limit": 10})).json()
    assert [r["id"] for r in rest["data"]] == ids[2:] and not rest["has_more"]
    raws = [base64.b64decode(r["raw"]) for r in first["data"] + rest["data"]]
    report = verify_chain(raws)
    assert report.ok and report.count == 5


async def test_model_admin_load_and_unload(client: Client) -> None:
    listed = (await (await client.get("/api/models")).json())["models"]
    assert listed[0]["name"] == FAKE_MODEL and listed[0]["loaded"] is False
    loaded = await (await client.post(f"/api/models/{FAKE_MODEL}/load")).json()
    assert loaded["loaded"] is True
    unloaded = await (await client.post(f"/api/models/{FAKE_MODEL}/unload")).json()
    assert unloaded["loaded"] is False


async def test_client_disconnect_cancels_and_still_writes_a_receipt(
        aiohttp_client: AppClientFactory, settings: Any) -> None:
    app = create_app(settings, runtimes=RUNTIMES, loader=fake_loader(token_delay=0.02))
    client = await aiohttp_client(app)
    response = await client.post("/v1/chat/completions",
                                 json={**CHAT, "max_tokens": 200, "stream": True})
    assert response.status == 200
    await response.content.readline()  # the first chunk arrived
    response.close()  # hang up mid-stream
    ledger = app[LEDGER]
    for _ in range(200):
        if ledger.head()[0] == 1:
            break
        await __import__("asyncio").sleep(0.02)
    receipts = ledger.page(-1, 10)
    assert len(receipts) == 1
    assert 1 <= receipts[0].fields["usage"]["out"] < 200
    # the slot was freed: the next request is served at once
    body = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert body["receipt"]["seq"] == 1


async def test_health_and_readiness(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200


async def test_backend_failure_mid_stream_ends_with_an_error_event_and_no_receipt(
        aiohttp_client: AppClientFactory, settings: Any) -> None:
    app = create_app(settings, runtimes=RUNTIMES, loader=fake_loader(fail_after=2))
    client = await aiohttp_client(app)
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = sse_events(await response.text())
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "server_error"
    assert len(events) == 4  # two chunks, the error, [DONE]
    plain = await client.post("/v1/chat/completions", json=CHAT)
    assert plain.status == 500
    assert (await plain.json())["error"]["code"] == "internal_error"
    assert app[LEDGER].head()[0] == 0  # failed generations leave no receipt


async def test_patching_a_loaded_model_reloads_it_and_receipts_name_what_ran(
        aiohttp_client: AppClientFactory, settings: Any) -> None:
    app = create_app(settings, runtimes=RUNTIMES, loader=fake_loader(token_delay=0.01))
    client = await aiohttp_client(app)
    long_prompt = {"model": FAKE_MODEL, "prompt": "x" * 100, "max_tokens": 2}
    assert (await client.post("/v1/completions", json=long_prompt)).status == 200
    before = await (await client.get(f"/api/models/{FAKE_MODEL}")).json()

    running = await client.post("/v1/chat/completions",
                                json={**CHAT, "max_tokens": 30, "stream": True})
    await running.content.readline()  # admitted and generating on the old load
    patched = await client.patch(f"/api/models/{FAKE_MODEL}",
                                 json={"context_length": 64, "price": {"request": 7}})
    assert patched.status == 200
    after = await patched.json()
    assert after["digest"] != before["digest"]
    events = sse_events(await running.text())
    old_receipt = await fetch_receipt(client, events[-2]["receipt"]["id"])
    assert old_receipt["model"]["manifest"] == before["digest"]
    assert old_receipt["fee"] == 0  # the price that was in force when it ran

    # The next request runs the new manifest: its context length and its price.
    too_long = await client.post("/v1/completions", json=long_prompt)
    assert too_long.status == 400
    assert (await too_long.json())["error"]["code"] == "context_length_exceeded"
    fresh = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    new_receipt = await fetch_receipt(client, fresh["receipt"]["id"])
    assert new_receipt["model"]["manifest"] == after["digest"]
    assert new_receipt["fee"] == 7


async def test_cache_prompt_is_a_boolean(client: Client) -> None:
    fresh = await client.post("/v1/chat/completions", json={**CHAT, "cache_prompt": False})
    assert fresh.status == 200
    wrong = await client.post("/v1/chat/completions", json={**CHAT, "cache_prompt": "no"})
    assert wrong.status == 400 and (await wrong.json())["error"]["param"] == "cache_prompt"


FAKE_BLOB = "sha256:" + hashlib.sha256(f"fake weights for {FAKE_MODEL}".encode()).hexdigest()


async def test_registering_a_model_takes_the_clis_body_with_its_nulls(client: Client) -> None:
    """``edged models add`` sends every field, null where not given: null is the default."""
    body = {"name": "second", "weights": FAKE_BLOB, "owner": None, "price": {"request": 3},
            "chat_format": None, "context_length": None, "runtime": "fake", "replace": False,
            "datanets": [], "data_share_ppm": None, "options": {}}
    created = await client.post("/api/models", json=body)
    assert created.status == 201, await created.text()
    view = await created.json()
    assert view["owner"].startswith("node:") and view["context_length"] == 2048
    assert view["price"] == {"request": 3, "input_per_1k": 0, "output_per_1k": 0, "per_row": 0}
    again = await client.post("/api/models", json=body)
    assert again.status == 409
    replaced = await client.post("/api/models", json={**body, "replace": True,
                                                      "owner": "someone"})
    assert replaced.status == 201 and (await replaced.json())["owner"] == "someone"


@pytest.mark.parametrize(("fields", "param", "code"), [
    ({"name": "../x"}, "name", "invalid_request"),
    ({"weights": "sha256:" + "z" * 64}, "weights", "invalid_request"),
    ({"runtime": "vllm"}, "runtime", "invalid_request"),
    ({"price": {"request": -1}}, "price.request", "invalid_request"),
    ({"price": {"request": 10**23}}, "price.request", "invalid_request"),
    ({"price": {"tip": 1}}, "price.tip", "unsupported_parameter"),
    ({"price": "free"}, "price", "invalid_request"),
    ({"context_length": "abc"}, "context_length", "invalid_request"),
    ({"datanets": ["Not A Name"]}, "datanets[0]", "invalid_request"),
    ({"data_share_ppm": 5}, "data_share_ppm", "invalid_request"),  # no datanet to share with
    ({"options": {"parallel": 2}}, "options", "invalid_request"),  # not a llama.cpp model
    ({"tokenizer": "sha256:" + "0" * 64}, "tokenizer", "invalid_request"),  # no such blob
    ({"federate": None}, "federate", "invalid_request"),
    ({"colour": "red"}, "colour", "unsupported_parameter"),
])
async def test_a_bad_registration_is_a_400_naming_the_field(
        client: Client, fields: dict[str, Any], param: str, code: str) -> None:
    response = await client.post("/api/models", json={
        "name": "second", "runtime": "fake", "weights": FAKE_BLOB, **fields})
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["param"], error["code"]) == (param, code)
    listed = (await (await client.get("/api/models")).json())["models"]
    assert [m["name"] for m in listed] == [FAKE_MODEL]


async def test_updating_a_model_changes_what_was_sent(client: Client) -> None:
    before = await (await client.get(f"/api/models/{FAKE_MODEL}")).json()
    updated = await client.patch(f"/api/models/{FAKE_MODEL}", json={
        "price": {"output_per_1k": 4}, "label_names": ["a"], "chat_format": "chatml",
        "context_length": None, "max_batch_size": 8})
    assert updated.status == 200, await updated.text()
    view = await updated.json()
    assert view["price"]["output_per_1k"] == 4 and view["label_names"] == ["a"]
    assert view["chat_format"] == "chatml" and view["max_batch_size"] == 8
    assert view["context_length"] == before["context_length"]  # null: unchanged
    assert view["owner"] == before["owner"] and view["digest"] != before["digest"]
    cleared = await (await client.patch(f"/api/models/{FAKE_MODEL}", json={
        "price": None, "chat_format": None, "label_names": [], "max_batch_size": 32})).json()
    assert cleared["digest"] == before["digest"]  # back where it was


@pytest.mark.parametrize(("body", "param", "code"), [
    ({}, None, "invalid_request"),
    ({"weights": "x"}, "weights", "invalid_request"),  # not updatable
    ({"owner": 5}, "owner", "invalid_request"),
    ({"owner": None}, "owner", "invalid_request"),
    ({"datanets": 5}, "datanets", "invalid_request"),
    ({"price": {"request": 1.5}}, "price.request", "invalid_request"),
    ({"max_batch_size": 0}, "max_batch_size", "invalid_request"),
    ({"influence_layer": {"features": "x"}}, "influence_layer.weights", "invalid_request"),
    ({"options": {"parallel": 2}}, "options", "invalid_request"),  # not a llama.cpp model
    ({"data_share_ppm": 10}, "data_share_ppm", "invalid_request"),  # no datanet
    ({"federate": "no"}, "federate", "invalid_request"),
])
async def test_a_bad_update_is_a_400_naming_the_field_and_changes_nothing(
        client: Client, body: dict[str, Any], param: str | None, code: str) -> None:
    before = await (await client.get(f"/api/models/{FAKE_MODEL}")).json()
    response = await client.patch(f"/api/models/{FAKE_MODEL}", json=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["param"], error["code"]) == (param, code)
    after = await (await client.get(f"/api/models/{FAKE_MODEL}")).json()
    assert after["digest"] == before["digest"]


async def test_loading_takes_a_keep_alive(client: Client) -> None:
    loaded = await client.post(f"/api/models/{FAKE_MODEL}/load", json={"keep_alive": "5m"})
    assert loaded.status == 200 and (await loaded.json())["loaded"] is True
    for bad in ({"keep_alive": "soon"}, {"keep_alive": True}, {"keep": 1}):
        refused = await client.post(f"/api/models/{FAKE_MODEL}/load", json=bad)
        assert refused.status == 400
        assert (await refused.json())["error"]["param"] in ("keep_alive", "keep")
    missing = await client.post("/api/models/no-such/load", json={"keep_alive": 10})
    assert missing.status == 404


@pytest.mark.parametrize(("params", "param"), [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"after_seq": "x"}, "after_seq"), ({"after_seq": "-2"}, "after_seq"),
])
async def test_bad_receipt_page_parameters_are_400s(client: Client, params: dict[str, str],
                                                    param: str) -> None:
    response = await client.get("/v1/receipts", params=params)
    assert response.status == 400
    assert (await response.json())["error"]["param"] == param


async def test_the_model_admin_bodies_are_documented_as_declared(client: Client) -> None:
    from edged.http.node import CreateModel, LoadModel, UpdateModel
    from edged.http.openapi import OPENAPI_PATH

    document = await (await client.get(OPENAPI_PATH)).json()
    paths = document["paths"]
    for path, method, model in (("/api/models", "post", CreateModel),
                                ("/api/models/{name}", "patch", UpdateModel),
                                ("/api/models/{name}/load", "post", LoadModel)):
        schema = paths[path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert set(schema["properties"]) == set(model.model_fields)
        assert schema["additionalProperties"] is False
    created = paths["/api/models"]["post"]["requestBody"]["content"]["application/json"]
    assert set(created["schema"]["required"]) == {"name", "weights"}
    query = {p["name"] for p in paths["/v1/receipts"]["get"]["parameters"]}
    assert query == {"after_seq", "limit"}
