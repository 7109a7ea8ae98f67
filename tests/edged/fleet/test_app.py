"""The fleet manager's start-up and shutdown: what a failed start opened is closed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edged.fleet.app import create_fleet_app
from edged.fleet.db import Database
from edged.http.serving import serve
from edged.settings import Settings


async def test_a_failed_start_closes_the_database(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[Database] = []
    real_close = Database.close

    def recording_close(self: Database) -> None:
        closed.append(self)
        real_close(self)

    def no_chain(settings: Settings) -> Any:
        raise ConnectionError("the chain is unreachable")

    monkeypatch.setattr(Database, "close", recording_close)
    settings = Settings(data_dir=tmp_path / "fleet", install_demo_model=False,
                        chain_url="http://127.0.0.1:9", chain_contract="0x" + "0" * 40)
    app = create_fleet_app(settings, adapter_factory=no_chain)
    with pytest.raises(ConnectionError):
        await serve(app, "127.0.0.1", 0)
    assert len(closed) == 1


async def test_shutdown_awaits_the_fleets_background_tasks(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "fleet", install_demo_model=False,
                        epoch_interval=3600)
    server = asyncio.create_task(serve(create_fleet_app(settings), "127.0.0.1", 0))

    def fleet_tasks() -> set[str]:
        return {t.get_name() for t in asyncio.all_tasks()
                if t.get_name().startswith("edged-fleet-")}

    for _ in range(500):
        if fleet_tasks() == {"edged-fleet-enrollment", "edged-fleet-epochs"}:
            break
        await asyncio.sleep(0.01)
    assert fleet_tasks() == {"edged-fleet-enrollment", "edged-fleet-epochs"}
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
    assert fleet_tasks() == set()
