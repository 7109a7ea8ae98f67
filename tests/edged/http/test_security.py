"""Security defaults: Host allowlist, CORS policy, API keys, and no raw text at rest."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edged.app import create_app
from edged.http.serving import AppRunner
from edged.manifest import RUNTIMES
from edged.settings import Settings
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, fake_loader

Client = TestClient[Any, web.Application]
CANARY = "CANARY-7f3a9c-do-not-store"


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.nip.io", "attacker:3343", ""])
async def test_foreign_host_header_is_refused(client: Client, host: str) -> None:
    response = await client.get("/v1/models", headers={"Host": host})
    assert response.status == 403
    assert (await response.json())["error"]["param"] == "Host"


@pytest.mark.parametrize("host", ["localhost:3343", "127.0.0.1", "[::1]:3343"])
async def test_local_host_names_are_served(client: Client, host: str) -> None:
    assert (await client.get("/v1/models", headers={"Host": host})).status == 200


async def test_unknown_origin_is_refused_and_never_wildcarded(client: Client) -> None:
    response = await client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_configured_origin_gets_cors_headers(aiohttp_client: AppClientFactory,
                                                   settings: Settings) -> None:
    settings = dataclasses.replace(settings, cors_origins=("http://app.local",))
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    preflight = await client.options("/v1/chat/completions",
                                     headers={"Origin": "http://app.local",
                                              "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://app.local"
    response = await client.get("/v1/models", headers={"Origin": "http://app.local"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://app.local"
    streamed = await client.post("/v1/completions", headers={"Origin": "http://app.local"},
                                 json={"model": FAKE_MODEL, "prompt": "a", "max_tokens": 2,
                                       "stream": True})
    assert streamed.headers["Access-Control-Allow-Origin"] == "http://app.local"
    assert "X-Edged-Receipt" in response.headers["Access-Control-Expose-Headers"]


async def test_api_keys_guard_everything_but_health(aiohttp_client: AppClientFactory,
                                                    settings: Settings) -> None:
    settings = dataclasses.replace(settings, api_keys=("k-one", "k-two"))
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k-one"}):
        response = await client.get("/v1/models", headers=headers)
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "authentication_error"
    ok = await client.get("/v1/models", headers={"Authorization": "Bearer k-two"})
    assert ok.status == 200


async def test_tokens_are_compared_as_sent(aiohttp_client: AppClientFactory,
                                           settings: Settings) -> None:
    settings = dataclasses.replace(settings, api_keys=("k-one",))
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    # Unicode spaces are part of the token, never trimmed away (an empty key used to match
    # "Bearer <U+00A0>" once str.strip had removed the no-break space).
    for token in ("\u00a0", "k-one\u00a0", "\u2003k-one", "k-one\u3000"):
        response = await client.get("/v1/models", headers={"Authorization": "Bearer " + token})
        assert response.status == 401, repr(token)
    for header in ("Bearer k-one", "Bearer  k-one", "bearer k-one\t", " Bearer k-one "):
        response = await client.get("/v1/models", headers={"Authorization": header})
        assert response.status == 200, repr(header)


async def test_canary_prompt_and_output_never_reach_logs_or_disk(
        aiohttp_client: AppClientFactory, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # The echoing fake generates the prompt's words: the canary is in the output too.
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES,
                                             loader=fake_loader(echo=True)))
    chat = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": CANARY}],
            "max_tokens": 4}
    answer = await (await client.post("/v1/chat/completions", json=chat)).json()
    assert CANARY in answer["choices"][0]["message"]["content"]
    assert (await client.post("/v1/chat/completions", json={**chat, "stream": True})).status \
        == 200
    assert (await client.post("/v1/embeddings",
                              json={"model": FAKE_MODEL, "input": CANARY})).status == 200
    bad = await client.post("/v1/chat/completions", json={**chat, "temperature": CANARY})
    assert CANARY not in await bad.text()
    assert CANARY not in caplog.text
    for path in Path(settings.data_dir).rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
    receipts = await (await client.get("/v1/receipts")).text()
    assert CANARY not in receipts


async def test_an_existing_data_folder_is_made_the_owners_alone(
        aiohttp_client: AppClientFactory, settings: Settings) -> None:
    settings.data_dir.chmod(0o755)  # made before, by an older version or by hand
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    assert (await client.get("/healthz")).status == 200
    assert settings.data_dir.stat().st_mode & 0o777 == 0o700
    assert settings.ledger_path.stat().st_mode & 0o777 == 0o600


MALFORMED_REQUESTS = [
    b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\x01\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
    b"Content-Length: x\r\n\r\n",
    b"GET /v1/mo dels HTTP/1.1\r\nAuthorization: Bearer %s\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer %s\r\nX-Big: " + b"a" * 20_000
    + b"\r\n\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED_REQUESTS)
async def test_requests_aiohttp_cannot_parse_get_the_error_shape_and_log_no_header(
        settings: Settings, caplog: pytest.LogCaptureFixture, raw: bytes) -> None:
    secret = "k-secret-3f9a"
    settings = dataclasses.replace(settings, api_keys=(secret,))
    # The runner `edged serve` uses: aiohttp's, with parser errors in the error shape.
    runner = AppRunner(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        caplog.set_level(logging.DEBUG)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw % secret.encode())
        await writer.drain()
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
        writer.close()
    finally:
        await runner.cleanup()
    assert b" 400 " in head.split(b"\r\n")[0]
    assert b"application/json" in head
    error = json.loads(body)["error"]
    assert error == {"message": "Bad Request", "type": "invalid_request_error", "param": None,
                     "code": None}
    assert any(r.name == "aiohttp.server" for r in caplog.records)  # it was logged ...
    assert secret not in caplog.text  # ... without the header
