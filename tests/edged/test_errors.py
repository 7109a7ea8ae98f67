"""Contract test: every error path answers in the OpenAI shape and changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edged.app import create_app
from edged.ledger import LEDGER
from edged.manifest import RUNTIMES
from edged.scheduler import SCHEDULER
from edged.settings import Settings
from runtimes import Backend, Delta, Done, ModelSpec
from runtimes.fake import FakeBackend
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, fake_loader
from tests.support.waiting import wait_until

Client = TestClient[Any, web.Application]
FAKE_BLOB = "sha256:" + hashlib.sha256(f"fake weights for {FAKE_MODEL}".encode()).hexdigest()
CHAT = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
DEEP_JSON = b"[" * 50_000 + b"]" * 50_000  # deeper than Python's parser can follow
GATE_TIMEOUT_S = 30.0


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
    ("POST", "/api/models", {"json": {"name": "big", "runtime": "fake", "weights": FAKE_BLOB,
                                      "price": {"request": 10**23}}}, 400, "invalid_request"),
    ("POST", "/api/models", {"json": {"name": "odd", "runtime": "fake", "weights": FAKE_BLOB,
                                      "context_length": "abc"}}, 400, "invalid_request"),
    ("POST", "/api/models", {"json": {"name": "ghost", "runtime": "fake", "weights": FAKE_BLOB,
                                      "datanets": ["nope"], "data_share_ppm": 5}}, 404,
     "datanet_not_found"),
    ("PATCH", f"/api/models/{FAKE_MODEL}", {"json": {"context_length": "abc"}}, 400,
     "invalid_request"),
    ("PATCH", f"/api/models/{FAKE_MODEL}", {"json": {"owner": 5}}, 400, "invalid_request"),
    ("PATCH", f"/api/models/{FAKE_MODEL}", {"json": {"owner": ["x"]}}, 400, "invalid_request"),
    ("PATCH", f"/api/models/{FAKE_MODEL}", {"json": {"datanets": 5}}, 400, "invalid_request"),
    ("PATCH", f"/api/models/{FAKE_MODEL}", {"json": {"weights": "x"}}, 400, "invalid_request"),
    ("POST", "/v1/completions", {"data": b'{"model": "fake-model", "prompt": "x\\ud800"}'},
     400, "invalid_request"),
    ("POST", "/v1/chat/completions", {"data": b'{"model": "fake-model", "messages": '
                                      b'[{"role": "user", "content": "\\udfff"}]}'},
     400, "invalid_request"),
    # a lone surrogate anywhere (a tool call's arguments, a tool's description): a 400, not
    # the 500 the receipt's commitment or the runtime would make of it
    ("POST", "/v1/chat/completions", {"data": b'{"model": "fake-model", "messages": [{"role": '
                                      b'"assistant", "tool_calls": [{"id": "c", "function": '
                                      b'{"name": "f", "arguments": "\\ud800"}}]}]}'},
     400, "invalid_request"),
    ("POST", "/v1/chat/completions", {"data": b'{"model": "fake-model", "messages": [{"role": '
                                      b'"user", "content": "hi"}], "tools": [{"type": '
                                      b'"function", "function": {"name": "f", "description": '
                                      b'"\\udfff"}}]}'}, 400, "invalid_request"),
    ("POST", "/v1/completions", {"data": b'{"model": "fake-model", "prompt": "x", '
                                 b'"keep_alive": NaN}'}, 400, "invalid_json"),
    ("POST", "/v1/completions", {"json": {"model": FAKE_MODEL, "prompt": "x",
                                          "keep_alive": "soon"}}, 400, "invalid_request"),
    ("POST", "/api/models", {"json": {"name": "ok\n", "runtime": "fake",
                                      "weights": FAKE_BLOB}}, 400, "invalid_request"),
    ("POST", "/v1/completions", {"json": {"model": FAKE_MODEL, "prompt": "x", "n": 1.0}},
     400, "invalid_request"),
    *[(method, path, {"data": DEEP_JSON}, 400, "invalid_json") for method, path in (
        ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"), ("POST", "/api/models"), ("POST", "/api/datanets"),
        ("PATCH", f"/api/models/{FAKE_MODEL}"), ("POST", f"/api/models/{FAKE_MODEL}/load"),
        ("POST", "/api/peers/trust"))],
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
    manifest = await (await client.get(f"/api/models/{FAKE_MODEL}")).json()
    assert manifest["owner"] == "model-owner" and manifest["context_length"] == 256


class GatedFake(FakeBackend):
    """The fake backend, holding every generation until the test opens ``gate``: a
    request keeps its slot for as long as the test needs, however slow the machine."""

    gate: threading.Event

    def _run(self, *args: Any) -> Iterator[Delta | Done]:
        if not self.gate.wait(GATE_TIMEOUT_S):  # bounded: a failed test cannot hang
            raise RuntimeError("the test never opened the gate")
        yield from super()._run(*args)


def gated_loader(gate: threading.Event) -> Callable[[str, ModelSpec], Backend]:
    def load(runtime: str, spec: ModelSpec) -> Backend:
        assert runtime == "fake"
        backend = GatedFake.load(spec)
        assert isinstance(backend, GatedFake)
        backend.gate = gate
        return backend

    return load


async def test_full_queue_answers_503_with_retry_after(aiohttp_client: AppClientFactory,
                                                       settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queue=1)
    gate = threading.Event()
    app = create_app(settings, runtimes=RUNTIMES, loader=gated_loader(gate))
    client = await aiohttp_client(app)
    scheduler = app[SCHEDULER]

    def slots() -> tuple[int, int]:
        return next(((m.active, m.queued) for m in scheduler.loaded() if m.name == FAKE_MODEL),
                    (0, 0))

    slow = {**CHAT, "max_tokens": 20}
    try:
        running = asyncio.ensure_future(client.post("/v1/chat/completions", json=slow))
        await wait_until(lambda: slots() == (1, 0), what="the first holds the only slot")
        waiting = asyncio.ensure_future(client.post("/v1/chat/completions", json=slow))
        await wait_until(lambda: slots() == (1, 1), what="the second fills the queue")
        # Bounded: were it queued rather than refused, it would wait for the gate.
        refused = await asyncio.wait_for(client.post("/v1/chat/completions", json=slow), 10)
        assert refused.status == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert assert_error_shape(await refused.json())["code"] == "queue_full"
        assert slots() == (1, 1)  # the refused request took no place
    finally:
        gate.set()
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


async def test_weights_upload_over_the_limit_is_413(aiohttp_client: AppClientFactory,
                                                   settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_blob_bytes=1000)
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    data = b"GGUF" + b"\0" * 5000
    response = await client.put("/api/blobs/sha256:" + hashlib.sha256(data).hexdigest(),
                                data=data)
    assert response.status == 413
    assert assert_error_shape(await response.json())["code"] == "request_too_large"


async def test_a_daemon_does_not_serve_the_test_runtime(aiohttp_client: AppClientFactory,
                                                       settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings))  # production runtimes only
    listed = await client.post("/v1/completions", json={"model": FAKE_MODEL, "prompt": "x"})
    assert listed.status == 400
    assert assert_error_shape(await listed.json())["code"] == "unsupported"
    register = await client.post("/api/models", json={"name": "fakey", "runtime": "fake",
                                                     "weights": FAKE_BLOB})
    assert register.status == 400
    assert client.app[LEDGER].head()[0] == 0
