"""The fleet manager's application factory: ``edged fleet serve``.

The same package in another role: nodes push signed batches to ``/v1/sync/push`` exactly
as they do between peers (only enrolled, unrevoked node keys get through); the local
operator enrolls nodes, closes epochs and settles over ``/fleet/...``; ``/fleet/`` is a
dashboard that refreshes itself.

Which node keys are enrolled is checked from memory on the event loop
(:meth:`FleetStore.is_enrolled`, the request verifier's ``trusted``). Two things keep that
memory current with other fleet processes sharing the database, both off the loop: a
signed sync request from a key the memory does not hold first reads that key's row in a
thread (one such read at a time, so unknown keys cannot occupy the thread pool), so a node
enrolled at another process is accepted at once; and every ``enrollment_reload_s`` all
enrolled keys are read again, so a revocation at another process takes effect within that
time (ingest reads the node's row in its own transaction, and refuses a revoked node at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from edged.background import running
from edged.fleet.api import FLEET, add_fleet_routes
from edged.fleet.db import Database
from edged.fleet.epochs import Epochs
from edged.fleet.metrics import FLEET_METRICS, FleetMetrics, metrics
from edged.fleet.service import FleetService
from edged.fleet.settle import Settler
from edged.fleet.store import FleetRefused, FleetStore
from edged.http.common import READY, error_middleware, server_handler_args
from edged.http.metrics import HTTP_METRICS, http_metrics_middleware
from edged.http.openapi import add_openapi_route
from edged.http.security import (
    NODE_SIGNED_PATHS,
    PUBLIC_PATHS,
    add_cors_headers,
    security_middleware,
)
from edged.http.sync_endpoint import (
    REQUEST_VERIFIER,
    SYNC_ENDPOINT,
    SyncEndpoint,
    add_sync_endpoint_routes,
)
from edged.keys import NodeKeys, load_or_create_keys
from edged.settings import SETTINGS, Settings
from sync.auth import HEADER_NODE, RequestVerifier
from sync.clock import unix_millis

logger = logging.getLogger(__name__)
CHAIN_ACCOUNT_KEY_FILE = "chain-account.key"
ENROLLMENT_RELOAD_SECONDS = 10.0
HEX_DIGITS = frozenset("0123456789abcdef")
VERIFIED_SYNC_PATHS = NODE_SIGNED_PATHS - {"/v1/sync/hello"}  # the request verifier's

AdapterFactory = Callable[[Settings], Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def database_url(settings: Settings) -> str:
    return settings.fleet_database or "sqlite:" + str(settings.fleet_dir / "fleet.sqlite3")


def chain_adapter(settings: Settings) -> Any:
    """The settlement adapter for ``chain_url``, creating the account key on first use."""
    from sync.settlement.adapter import SettlementAdapter, create_account_key

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
                     adapter_factory: AdapterFactory = chain_adapter,
                     enrollment_reload_s: float = ENROLLMENT_RELOAD_SECONDS) -> web.Application:
    settings.validate()
    security = security_middleware(settings, public_paths=PUBLIC_PATHS | {"/fleet/"})
    app = web.Application(middlewares=[http_metrics_middleware, error_middleware, security,
                                       enrollment_middleware()],
        client_max_size=settings.max_body_bytes, handler_args=server_handler_args())
    app[SETTINGS] = settings
    app[READY] = asyncio.Event()
    app[FLEET_METRICS] = FleetMetrics(app)
    app[HTTP_METRICS] = app[FLEET_METRICS].http
    app.on_response_prepare.append(add_cors_headers)
    add_sync_endpoint_routes(app)
    add_fleet_routes(app)
    app.router.add_get("/metrics", metrics)
    add_openapi_route(app, "edged fleet manager")

    # One context per resource, closed in the reverse order (see edged.app).
    app.cleanup_ctx.extend([
        functools.partial(_fleet_store, clock_ms=clock_ms),
        functools.partial(_fleet_service, clock_ms=clock_ms, adapter_factory=adapter_factory),
        functools.partial(_fleet_tasks, enrollment_reload_s=enrollment_reload_s),
    ])
    return app


FLEET_STORE = web.AppKey("fleet_store", FleetStore)
FLEET_KEYS = web.AppKey("fleet_keys", NodeKeys)


async def _fleet_store(app: web.Application, *,
                       clock_ms: Callable[[], int]) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.fleet_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.fleet_dir.chmod(0o700)
    app[FLEET_KEYS] = await asyncio.to_thread(load_or_create_keys, settings.fleet_dir / "keys")
    db = await asyncio.to_thread(Database, database_url(settings))
    try:
        # Reads the enrolled keys, so that checking one never touches the database.
        app[FLEET_STORE] = await asyncio.to_thread(FleetStore, db, clock_ms)
        yield
    finally:
        await asyncio.to_thread(db.close)


async def _fleet_service(app: web.Application, *, clock_ms: Callable[[], int],
                         adapter_factory: AdapterFactory) -> AsyncIterator[None]:
    settings, store, keys = app[SETTINGS], app[FLEET_STORE], app[FLEET_KEYS]
    epochs = Epochs(store)
    # Off the loop: building the adapter imports web3 and opens the transaction journal.
    adapter = await asyncio.to_thread(adapter_factory, settings) if settings.chain_url else None
    try:
        service = FleetService(store=store, epochs=epochs,
                               settler=Settler(epochs, settings, adapter), keys=keys,
                               clock_ms=clock_ms)
        app[FLEET] = service
        endpoint: SyncEndpoint = app[FLEET_METRICS].timed(service)
        app[SYNC_ENDPOINT] = endpoint
        app[REQUEST_VERIFIER] = RequestVerifier(store.is_enrolled, audience=keys.public_key)
        yield
    finally:
        if adapter is not None:
            adapter.close()


async def _fleet_tasks(app: web.Application, *,
                       enrollment_reload_s: float) -> AsyncIterator[None]:
    """Enrollment reloads, epoch closes and settlement; cancelled and awaited on shutdown."""
    settings, service = app[SETTINGS], app[FLEET]
    app[READY].set()
    logger.info("fleet %s ready (%s store, %s settlement)", app[FLEET_KEYS].fingerprint,
                "postgresql" if service.store.db.is_postgres else "sqlite",
                service.settler.mode)
    tasks = [asyncio.create_task(_reload_enrolled(service.store, enrollment_reload_s),
                                 name="edged-fleet-enrollment")]
    if settings.epoch_interval:
        tasks.append(asyncio.create_task(_close_epochs(service, settings),
                                         name="edged-fleet-epochs"))
    if service.settler.adapter is not None:
        tasks.append(asyncio.create_task(_settle_forever(service, settings),
                                         name="edged-fleet-settlement"))
    async with running(tasks):
        yield


def enrollment_middleware() -> web.middleware:  # type: ignore[valid-type]
    """Before a signed sync request is checked: a caller's key not known to be enrolled
    is read from the database in a thread (it may have been enrolled by another fleet
    process), one such read at a time."""
    recheck_lock = asyncio.Lock()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        node = _signing_node(request)
        fleet = request.app.get(FLEET)
        if node is not None and fleet is not None and not fleet.store.is_enrolled(node):
            async with recheck_lock:
                if not fleet.store.is_enrolled(node):  # another request may have read it
                    await asyncio.to_thread(fleet.store.recheck_enrolled, node)
        return await handler(request)

    return middleware


def _signing_node(request: web.Request) -> bytes | None:
    """The key a signed sync request names (unverified), if well-formed."""
    if request.path not in VERIFIED_SYNC_PATHS:
        return None
    value = request.headers.get(HEADER_NODE, "")
    if len(value) != 64 or not set(value) <= HEX_DIGITS:
        return None
    return bytes.fromhex(value)


async def _reload_enrolled(store: FleetStore, interval_s: float) -> None:
    """Read the enrolled keys again every ``interval_s`` (revocations by other processes)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(store.reload_enrolled)
        except Exception:
            logger.exception("reading the enrolled node keys failed")


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
