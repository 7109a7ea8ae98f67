"""The fleet manager's application factory: ``edged fleet serve``.

The same package in another role: nodes push signed batches to ``/v1/sync/push`` exactly
as they do between peers (only enrolled, unrevoked node keys get through); the local
operator enrolls nodes, closes epochs and settles over ``/fleet/...``; ``/fleet/`` is a
dashboard that refreshes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from edged.api_exchange import add_sync_endpoint_routes
from edged.appkeys import READY, REQUEST_VERIFIER, SETTINGS, SYNC_ENDPOINT
from edged.exchange import SyncEndpoint
from edged.fleet.api import FLEET, add_fleet_routes
from edged.fleet.db import Database
from edged.fleet.epochs import Epochs
from edged.fleet.service import FleetService
from edged.fleet.settle import Settler
from edged.fleet.store import FleetRefused, FleetStore
from edged.http_common import error_middleware
from edged.inference import unix_millis
from edged.keys import load_or_create_keys
from edged.security import PUBLIC_PATHS, add_cors_headers, security_middleware
from edged.settings import Settings
from sync.auth import RequestVerifier

logger = logging.getLogger(__name__)
CHAIN_ACCOUNT_KEY_FILE = "chain-account.key"

AdapterFactory = Callable[[Settings], Any]


def database_url(settings: Settings) -> str:
    return settings.fleet_database or "sqlite:" + str(settings.fleet_dir / "fleet.sqlite3")


def chain_adapter(settings: Settings) -> Any:
    """The settlement adapter for ``chain_url``, creating the account key on first use."""
    from sync.settlement import SettlementAdapter, create_account_key

    key_path = settings.chain_account_key_file or (settings.fleet_dir / "keys"
                                                   / CHAIN_ACCOUNT_KEY_FILE)
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        address = create_account_key(key_path)
        logger.warning("created settlement account %s; fund it before settling", address)
    return SettlementAdapter(settings.chain_url, key_path,
                             settings.fleet_dir / "chain-journal.sqlite3",
                             contract_address=settings.chain_contract or None,
                             confirmations=settings.chain_confirmations)


def create_fleet_app(settings: Settings, *, clock_ms: Callable[[], int] = unix_millis,
                     adapter_factory: AdapterFactory = chain_adapter) -> web.Application:
    settings.validate()
    app = web.Application(middlewares=[error_middleware, security_middleware(
        settings, public_paths=PUBLIC_PATHS | {"/fleet/"})],
        client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[READY] = asyncio.Event()
    app.on_response_prepare.append(add_cors_headers)
    add_sync_endpoint_routes(app)
    add_fleet_routes(app)

    async def fleet_state(app: web.Application) -> AsyncIterator[None]:
        settings.fleet_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = load_or_create_keys(settings.fleet_dir / "keys")
        db = await asyncio.to_thread(Database, database_url(settings))
        store = FleetStore(db, clock_ms)
        epochs = Epochs(store)
        adapter = adapter_factory(settings) if settings.chain_url else None
        service = FleetService(store=store, epochs=epochs,
                               settler=Settler(epochs, settings, adapter), keys=keys,
                               clock_ms=clock_ms)
        app[FLEET] = service
        endpoint: SyncEndpoint = service
        app[SYNC_ENDPOINT] = endpoint
        app[REQUEST_VERIFIER] = RequestVerifier(store.is_enrolled, audience=keys.public_key)
        app[READY].set()
        logger.info("fleet %s ready (%s store, %s settlement)", keys.fingerprint,
                    "postgresql" if db.is_postgres else "sqlite", service.settler.mode)
        tasks = [asyncio.create_task(_close_epochs(service, settings))] \
            if settings.epoch_interval else []
        if adapter is not None:
            tasks.append(asyncio.create_task(_settle_forever(service, settings)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if adapter is not None:
                adapter.close()
            db.close()

    app.cleanup_ctx.append(fleet_state)
    return app


async def _close_epochs(service: FleetService, settings: Settings) -> None:
    while True:
        await asyncio.sleep(settings.epoch_interval)
        try:
            await asyncio.to_thread(service.epochs.close)
        except FleetRefused:
            pass  # nothing new, or another fleet process closed it
        except Exception:
            logger.exception("closing an epoch failed")


async def _settle_forever(service: FleetService, settings: Settings) -> None:
    """Settle on the chain every ``settle_interval``; back off while it fails."""
    while True:
        await asyncio.sleep(settings.settle_interval)
        if not service.settler.due():
            continue
        # Failures are recorded in settler.health (shown on /fleet/settlement and /fleet/).
        with contextlib.suppress(Exception):
            await asyncio.to_thread(service.settler.settle)
