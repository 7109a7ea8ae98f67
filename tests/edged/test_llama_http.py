"""The HTTP API on the real llama.cpp backend (the tiny GGUF): limits and clear errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from attribution.commitments import commit
from edged.app import create_app
from edged.devtools.tiny_gguf import install_tiny_llama
from edged.keys import NODE_KEYS
from edged.ledger import LEDGER
from edged.manifest import RUNTIMES
from tests.edged.conftest import AppClientFactory, make_settings
from tests.edged.http.test_oip import install_onnx_model

Client = TestClient[Any, web.Application]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_a_context_below_llama_cpps_minimum_is_the_limit(
        aiohttp_client: AppClientFactory, tmp_path: Path, tiny_model_file: Path) -> None:
    # llama.cpp pads any context to 256 tokens; the model's declared 64 must still hold.
    data_dir = tmp_path / "data"
    install_tiny_llama(data_dir, tiny_model_file, context_length=64)
    client = await aiohttp_client(create_app(make_settings(data_dir), runtimes=RUNTIMES))
    fits = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hello " * 8,
                                                      "max_tokens": 200})
    assert fits.status == 200
    usage = (await fits.json())["usage"]
    assert usage["total_tokens"] == 64  # stopped by the context, not by max_tokens
    too_long = await client.post("/v1/completions", json={"model": "tiny",
                                                          "prompt": "hello " * 40})
    assert too_long.status == 400
    assert (await too_long.json())["error"]["code"] == "context_length_exceeded"


async def test_chat_without_a_template_or_on_onnx_is_a_clear_400(
        aiohttp_client: AppClientFactory, tmp_path: Path, tiny_model_file: Path) -> None:
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir)
    install_tiny_llama(data_dir, tiny_model_file)  # chat format none: completions only
    install_onnx_model(settings, tmp_path)
    client = await aiohttp_client(create_app(settings))
    for model in ("tiny", "tiny-clf"):
        for stream in (False, True):
            response = await client.post("/v1/chat/completions",
                                         json={**CHAT, "model": model, "stream": stream})
            assert response.status == 400, model
            error = (await response.json())["error"]
            assert error["code"] == "unsupported" and error["param"] == "model"
    assert client.app[LEDGER].head()[0] == 0


async def test_concurrent_streams_share_a_batch_and_each_gets_its_own_receipt(
        aiohttp_client: AppClientFactory, tmp_path: Path, tiny_model_file: Path) -> None:
    data_dir = tmp_path / "data"
    install_tiny_llama(data_dir, tiny_model_file)
    app = create_app(make_settings(data_dir, parallel=4), runtimes=RUNTIMES)
    client = await aiohttp_client(app)
    prompts = ["hello", "The quick brown fox", "abc", "x" * 40, "zzz"]

    async def complete(prompt: str) -> dict[str, Any]:
        response = await client.post("/v1/completions", json={
            "model": "tiny", "prompt": prompt, "max_tokens": 30, "temperature": 0})
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body

    alone = [await complete(prompt) for prompt in prompts]
    together = await asyncio.gather(*(complete(prompt) for prompt in prompts))
    key = app[NODE_KEYS].commitment_key
    ledger = app[LEDGER]
    for first, second in zip(alone, together, strict=True):
        text = second["choices"][0]["text"]
        assert text == first["choices"][0]["text"]  # batching changes no output
        receipt = ledger.get(bytes.fromhex(second["receipt"]["id"]))
        assert receipt is not None
        assert receipt.fields["usage"]["out"] == second["usage"]["completion_tokens"] == 30
        assert receipt.fields["out"] == commit(key, {"text": text})
    assert len({body["receipt"]["id"] for body in alone + list(together)}) == 10


async def test_a_models_options_set_its_slots_and_a_change_reloads_it(
        aiohttp_client: AppClientFactory, tmp_path: Path, tiny_model_file: Path) -> None:
    data_dir = tmp_path / "data"
    install_tiny_llama(data_dir, tiny_model_file)
    client = await aiohttp_client(create_app(make_settings(data_dir, parallel=4),
                                             runtimes=RUNTIMES))
    request = {"model": "tiny", "prompt": "hello", "max_tokens": 4}

    async def slots() -> Any:
        assert (await client.post("/v1/completions", json=request)).status == 200
        return (await (await client.get("/api/models/tiny")).json())["slots"]

    assert (await slots())["total"] == 4  # the node's default
    patched = await client.patch("/api/models/tiny", json={"options": {"parallel": 2}})
    assert patched.status == 200 and (await patched.json())["options"] == {"parallel": 2}
    assert (await slots())["total"] == 2  # reloaded with the model's own
    bad = await client.patch("/api/models/tiny", json={"options": {"parallel": "two"}})
    assert bad.status == 400 and (await bad.json())["error"]["param"] == "options.parallel"
