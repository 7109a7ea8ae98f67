"""Contract test: every error path answers in the OpenAI shape and changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edged.app import create_app
from edged.appkeys import LEDGER
from edged.settings import Settings
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, fake_loader

Client = TestClient[Any, web.Application]
CHAT = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def assert_error_shape(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    return error


ERROR_CASES: list[tuple[str, str, dict[str, Any], int, str | None]] = [
    # (method, path, request kwargs, status, code)
    ("POST", "/v1/chat/completions", {"data": b"{not json"}, 400, "invalid_json"),
    ("POST", "/v1/chat/completions", {"json": [1, 2]}, 400, "invalid_request"),
    ("POST", "/v1/chat/completions", {"json": {**CHAT, "max_tokens": "many"}}, 400,
     "invalid_request"),
    ("POST", "/v1/chat/completions", {"json": {**CHAT, "temperature": 7}}, 400,
     "invalid_request"),
    ("POST", "/v1/chat/completions", {"json": {**CHAT, "messages": "hi"}}, 400,
     "invalid_request"),
    ("POST", "/v1/chat/completions",
     {"json": {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}}, 400,
     "invalid_request"),
    ("POST", "/v1/chat/completions", {"json": {**CHAT, "stream": "yes"}}, 400,
     "invalid_request"),
    ("POST", "/v1/chat/completions", {"json": {"messages": CHAT["messages"]}}, 400,
     "invalid_request"),
    ("POST", "/v1/chat/completions", {"json": {**CHAT, "model": "no-such-model"}}, 404,
     "model_not_found"),
    ("POST", "/v1/chat/completions", {"json": {**CHAT, "model": "../../etc/passwd"}}, 404,
     "model_not_found"),
    ("POST", "/v1/chat/completions",
     {"json": {**CHAT, "messages": [{"role": "user", "content": "x" * 400}]}}, 400,
     "context_length_exceeded"),
    ("POST", "/v1/chat/completions",
     {"json": {**CHAT, "stream": True,
               "messages": [{"role": "user", "content": "x" * 400}]}}, 400,
     "context_length_exceeded"),
    ("POST", "/v1/completions", {"json": {"model": FAKE_MODEL, "prompt": 5}}, 400,
     "invalid_request"),
    ("POST", "/v1/completions", {"json": {"model": FAKE_MODEL, "prompt": "y" * 400}}, 400,
     "context_length_exceeded"),
    ("POST", "/v1/embeddings", {"json": {"model": FAKE_MODEL, "input": [1]}}, 400,
     "invalid_request"),
    ("POST", "/v1/embeddings", {"json": {"model": "nope", "input": "a"}}, 404,
     "model_not_found"),
    ("POST", "/v1/chat/completions", {"data": b"x" * (2 << 20)}, 413, "request_too_large"),
    ("GET", "/v1/receipts/not-hex", {}, 400, "invalid_request"),
    ("GET", "/v1/receipts/" + "ab" * 32, {}, 404, "not_found"),
    ("GET", "/v1/receipts", {"params": {"limit": "0"}}, 400, "invalid_request"),
    ("GET", "/v1/receipts", {"params": {"after_seq": "x"}}, 400, "invalid_request"),
    ("GET", "/v1/nothing-here", {}, 404, "not_found"),
    ("DELETE", "/v1/chat/completions", {}, 405, "method_not_allowed"),
    ("POST", "/api/models/no-such/load", {}, 404, "model_not_found"),
    ("POST", "/api/models", {"json": {"name": "../x", "weights": "sha256:" + "a" * 64}}, 400,
     "invalid_request"),
    ("POST", "/api/models", {"json": {"name": "ok", "weights": "sha256:" + "a" * 64}}, 400,
     "invalid_request"),
    ("PUT", "/api/blobs/sha256:" + "0" * 64, {"data": b"GGUF"}, 400, "invalid_request"),
    ("GET", "/api/models/..%2F..%2Fetc", {}, 404, "model_not_found"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), ERROR_CASES,
                         ids=[f"{c[0]} {c[1][:40]} {c[3]}" for c in ERROR_CASES])
async def test_error_paths_have_the_openai_shape_and_change_nothing(
        client: Client, method: str, path: str, kwargs: dict[str, Any], status: int,
        code: str | None) -> None:
    before = client.app[LEDGER].head()
    if len(kwargs.get("data", b"")) > 1 << 20:  # large bodies go as a stream
        kwargs = {**kwargs, "data": io.BytesIO(kwargs["data"])}
    response = await client.request(method, path, **kwargs)
    assert response.status == status
    error = assert_error_shape(await response.json())
    assert error["code"] == code
    assert client.app[LEDGER].head() == before
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [FAKE_MODEL]


async def test_full_queue_answers_503_with_retry_after(aiohttp_client: AppClientFactory,
                                                       settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queue=1)
    app = create_app(settings, loader=fake_loader(token_delay=0.05))
    client = await aiohttp_client(app)
    slow = {**CHAT, "max_tokens": 20}
    running = asyncio.ensure_future(client.post("/v1/chat/completions", json=slow))
    await asyncio.sleep(0.3)  # the first holds the only slot
    waiting = asyncio.ensure_future(client.post("/v1/chat/completions", json=slow))
    await asyncio.sleep(0.1)  # the second fills the queue
    refused = await client.post("/v1/chat/completions", json=slow)
    assert refused.status == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert assert_error_shape(await refused.json())["code"] == "queue_full"
    done = [await running, await waiting]
    assert [r.status for r in done] == [200, 200]
    assert app[LEDGER].head()[0] == 2  # the refused request left no receipt


async def test_chunked_body_over_the_limit_is_413(client: Client) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 65536

    response = await client.post("/v1/chat/completions", data=chunks())
    assert response.status == 413
    assert assert_error_shape(await response.json())["code"] == "request_too_large"
