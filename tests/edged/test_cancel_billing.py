"""A cancelled stream bills exactly the text it handed out, on the real llama.cpp backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from attribution.commitments import commit
from edged.app import create_app
from edged.devtools.tiny_gguf import install_tiny_llama
from edged.keys import NODE_KEYS
from edged.ledger import LEDGER, Ledger
from edged.manifest import RUNTIMES
from tests.edged.conftest import AppClientFactory, make_settings

Client = TestClient[Any, web.Application]
PROMPT = "The quick brown fox"


def chunk_texts(body: bytes) -> list[str]:
    texts = []
    for block in body.decode().split("\n\n"):
        payload = block.removeprefix("data: ")
        if block.startswith("data: ") and payload != "[DONE]":
            choices = json.loads(payload)["choices"]
            if choices and choices[0]["text"]:
                texts.append(choices[0]["text"])
    return texts


async def wait_for_receipts(ledger: Ledger, count: int) -> None:
    for _ in range(500):
        if ledger.head()[0] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the ledger never reached {count} receipts")


async def test_a_cancelled_stream_commits_and_bills_the_same_text(
        aiohttp_client: AppClientFactory, tmp_path: Path, tiny_model_file: Path) -> None:
    data_dir = tmp_path / "data"
    model = install_tiny_llama(data_dir, tiny_model_file).name
    app = create_app(make_settings(data_dir), runtimes=RUNTIMES)
    client = await aiohttp_client(app)
    request = {"model": model, "prompt": PROMPT, "max_tokens": 120, "temperature": 0,
               "stream": True}

    # The whole greedy answer first: each chunk of the tiny model's printable output is
    # one token, so its first n chunks are the text of its first n tokens.
    full = await client.post("/v1/completions", json=request)
    pieces = chunk_texts(await full.read())
    assert len(pieces) > 20

    key = app[NODE_KEYS].commitment_key
    ledger = app[LEDGER]
    for hang_up_after in (1, 3):
        before = ledger.head()[0]
        response = await client.post("/v1/completions", json=request)
        seen = 0
        async for line in response.content:
            seen += line.startswith(b"data: ")
            if seen == hang_up_after:
                break
        response.close()  # the client goes away mid-stream
        await wait_for_receipts(ledger, before + 1)
        receipt = ledger.page(before - 1, 1)[0].fields
        billed = receipt["usage"]["out"]
        assert hang_up_after <= billed < len(pieces)
        # The output commitment covers exactly the billed tokens' text.
        assert receipt["out"] == commit(key, {"text": "".join(pieces[:billed])})
