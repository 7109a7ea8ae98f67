"""The daemon's start-up and shutdown: one context per resource, nothing left behind."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from edged.app import create_app
from edged.http.serving import serve
from edged.manifest import RUNTIMES
from edged.settings import Settings
from tests.edged.conftest import AppClientFactory, fake_loader


def edged_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("edged-")]


def edged_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("edged-")]


async def test_shutdown_cancels_and_awaits_every_background_task(settings: Settings) -> None:
    app = create_app(settings, runtimes=RUNTIMES, loader=fake_loader())
    server = asyncio.create_task(serve(app, "127.0.0.1", 0))
    running = {"edged-checkpoints", "edged-sync"}  # (first-start work ends at once here)
    for _ in range(500):
        if running <= set(edged_tasks()):
            break
        await asyncio.sleep(0.01)
    assert running <= set(edged_tasks())
    assert "edged-ledger-writer" in edged_threads()
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
    assert edged_tasks() == []
    assert edged_threads() == []  # the ledger's writer has stopped


async def test_a_start_up_that_fails_part_way_closes_what_it_opened(settings: Settings) -> None:
    # The replica store cannot be opened (its path is a folder): keys, ledger and models
    # were opened before it and must be closed again.
    (settings.data_dir / "replicas.sqlite3").mkdir(parents=True)
    app = create_app(settings, runtimes=RUNTIMES, loader=fake_loader())
    with pytest.raises(Exception) as failed:
        await serve(app, "127.0.0.1", 0)
    assert not isinstance(failed.value, asyncio.CancelledError)
    assert edged_threads() == []
    assert edged_tasks() == []


async def test_a_failed_first_start_is_never_ready(aiohttp_client: AppClientFactory,
                                                   settings: Settings,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_install(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("edged.app.install_demo_model", broken_install)
    settings = Settings(**{**settings.__dict__, "install_demo_model": True})
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    for _ in range(500):
        ready = await client.get("/readyz")
        body = await ready.json()
        if "failed" in body["error"]["message"]:
            break
        await asyncio.sleep(0.01)
    assert ready.status == 503
    assert body["error"]["message"] == "installing the demo model failed (OSError): see the log"
    assert (await client.get("/healthz")).status == 200  # alive, just not ready
