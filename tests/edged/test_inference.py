"""The inference service: a stream left early is still committed, even if cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edged.app import create_app
from edged.inference import SERVICE
from edged.ledger import LEDGER
from edged.manifest import RUNTIMES
from edged.openai_requests import GenerateRequest
from edged.settings import Settings
from runtimes import GenerationParams
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, fake_loader
from tests.support.waiting import wait_until


async def test_a_stream_cancelled_while_it_winds_down_still_gets_its_receipt(
        aiohttp_client: AppClientFactory, settings: Settings) -> None:
    app = create_app(settings, runtimes=RUNTIMES, loader=fake_loader(token_delay=0.05))
    await aiohttp_client(app)
    service, ledger = app[SERVICE], app[LEDGER]
    request = GenerateRequest("completion", FAKE_MODEL, "hello",
                              GenerationParams(max_tokens=50, temperature=0.0), True, False,
                              None)
    first_delta = asyncio.Event()

    async def consume() -> Any:
        async with service.stream(request) as stream:
            async for _ in stream:
                first_delta.set()
                break  # leaving early: __aexit__ now stops the backend and waits for it
        return stream

    task = asyncio.create_task(consume())
    await first_delta.wait()
    await asyncio.sleep(0)  # the task is now waiting inside __aexit__ for the backend
    task.cancel()  # as a server cancels the handler of a client that went away
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: ledger.head()[0] == 1, what="the cancelled stream's receipt")
    receipt = ledger.page(-1, 1)[0].fields
    assert receipt["usage"]["out"] == 1  # the one delta handed out
