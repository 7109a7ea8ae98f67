"""The application factory: wires settings, keys, models, ledger, scheduler and HTTP."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from attribution.spans import SpanParams
from edged.attributor import Attributor
from edged.background import running
from edged.bindings import BINDINGS, InfluenceBindings
from edged.datanets import DATANETS, DatanetStore
from edged.demo import install_demo_model
from edged.demo_classifier import install_demo_classifier
from edged.errors import Unsupported
from edged.exchange import EXCHANGE, ExchangeService
from edged.federation import FEDERATION, Federation
from edged.http.audit import add_audit_routes
from edged.http.common import READY, error_middleware, server_handler_args
from edged.http.datanets import add_datanet_routes
from edged.http.exchange import add_exchange_routes
from edged.http.federation import add_federation_routes
from edged.http.log import add_sync_routes
from edged.http.metrics import HTTP_METRICS, http_metrics_middleware
from edged.http.node import STARTUP_FAILURES, add_node_routes
from edged.http.oip import add_v2_routes
from edged.http.openai import add_openai_routes
from edged.http.openapi import add_openapi_route
from edged.http.peers import add_peer_routes
from edged.http.security import add_cors_headers, security_middleware
from edged.http.sync_endpoint import REQUEST_VERIFIER, SYNC_ENDPOINT
from edged.inference import SERVICE, InferenceService
from edged.keys import NODE_KEYS, load_or_create_keys
from edged.ledger import LEDGER, Ledger
from edged.manifest import SERVING_RUNTIMES
from edged.metrics import METRICS, NodeMetrics, add_metrics_route
from edged.models import MODEL_STORE, ModelStore
from edged.peers import PEERS, PeerStore
from edged.predict import PREDICT, PredictService
from edged.replicas import ReplicaStore
from edged.scheduler import SCHEDULER, LoadPlan, Scheduler
from edged.settings import SETTINGS, Settings, gpu_layers_option
from runtimes import Backend, ModelSpec, load_backend
from sync.auth import RequestVerifier
from sync.clock import unix_millis
from sync.discovery import Discovery

logger = logging.getLogger(__name__)
MAX_DEFAULT_THREADS = 8

Loader = Callable[[str, ModelSpec], Backend]


def default_threads(settings: Settings) -> int:
    return settings.threads or min(os.cpu_count() or 1, MAX_DEFAULT_THREADS)


def create_app(settings: Settings, *, loader: Loader = load_backend,
               clock_ms: Callable[[], int] = unix_millis,
               runtimes: tuple[str, ...] = SERVING_RUNTIMES) -> web.Application:
    """Build the daemon. Resources open in ``cleanup_ctx`` and close in reverse order.

    ``runtimes`` are those models may use; tests add the fake runtime with its loader."""
    settings.validate()
    app = web.Application(
        middlewares=[http_metrics_middleware, error_middleware,
                     security_middleware(settings)],
        client_max_size=settings.max_body_bytes,
        handler_args=server_handler_args(),
    )
    app[SETTINGS] = settings
    app[READY] = asyncio.Event()
    app[STARTUP_FAILURES] = []
    app[METRICS] = NodeMetrics(app)
    app[HTTP_METRICS] = app[METRICS].http
    app.on_response_prepare.append(add_cors_headers)
    add_openai_routes(app)
    add_node_routes(app)
    add_datanet_routes(app)
    add_sync_routes(app)
    add_peer_routes(app)
    add_exchange_routes(app)
    add_federation_routes(app)
    add_audit_routes(app)
    add_v2_routes(app)
    add_metrics_route(app)
    add_openapi_route(app, "edged node")

    # One context per resource, opened in this order and closed in the reverse order;
    # each releases what it opened if a later step of its own start-up fails.
    app.cleanup_ctx.extend([
        _node_keys,
        _ledger,
        _datanets,
        functools.partial(_scheduler, runtimes=runtimes, loader=loader),
        functools.partial(_services, clock_ms=clock_ms),
        functools.partial(_sync, clock_ms=clock_ms),
        functools.partial(_federation, clock_ms=clock_ms),
        functools.partial(_background_tasks, clock_ms=clock_ms),
    ])
    return app


async def _node_keys(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.data_dir.chmod(0o700)  # also a folder made before, or by someone else
    app[NODE_KEYS] = await asyncio.to_thread(load_or_create_keys, settings.keys_dir)
    yield


async def _ledger(app: web.Application) -> AsyncIterator[None]:
    ledger = await asyncio.to_thread(Ledger, app[SETTINGS].ledger_path,
                                     app[NODE_KEYS].signing_key,
                                     on_commit=app[METRICS].ledger_committed)
    app[LEDGER] = ledger
    try:
        yield
    finally:
        await asyncio.to_thread(ledger.close)


async def _datanets(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    datanets = DatanetStore(settings.datanets_dir, span_min_words=settings.span_min_words)
    app[DATANETS] = datanets
    try:
        yield
    finally:
        datanets.close()


async def _scheduler(app: web.Application, *, runtimes: tuple[str, ...],
                     loader: Loader) -> AsyncIterator[None]:
    """The model store and the scheduler that loads its models."""
    settings = app[SETTINGS]
    store = ModelStore(settings.models_dir, runtimes=runtimes)
    scheduler = Scheduler(_resolver(store, runtimes, default_threads(settings), settings),
                          max_loaded_models=settings.max_loaded_models,
                          default_keep_alive=settings.keep_alive,
                          max_queue=settings.max_queue, loader=loader,
                          clock=time.time,  # expires_at is shown to users: unix time
                          token_timers=app[METRICS].generation_timer)
    await scheduler.start()
    app[MODEL_STORE] = store
    app[SCHEDULER] = scheduler
    try:
        yield
    finally:
        await scheduler.close()  # lets admitted requests finish and commit first


async def _services(app: web.Application, *, clock_ms: Callable[[], int]) -> AsyncIterator[None]:
    """The inference and prediction services over the store, scheduler and ledger; they
    hold nothing of their own to release."""
    settings, keys, ledger = app[SETTINGS], app[NODE_KEYS], app[LEDGER]
    store, scheduler = app[MODEL_STORE], app[SCHEDULER]
    attributor = Attributor(
        app[DATANETS], operator_id=settings.operator_id or "node:" + keys.public_key.hex(),
        operator_ppm=settings.operator_share_ppm,
        span_params=SpanParams(min_words=settings.span_min_words))
    app[BINDINGS] = InfluenceBindings(settings.data_dir / "influence")
    app[PREDICT] = PredictService(store=store, scheduler=scheduler, ledger=ledger, keys=keys,
                                  attributor=attributor, bindings=app[BINDINGS],
                                  clock_ms=clock_ms)
    app[SERVICE] = InferenceService(settings=settings, store=store, scheduler=scheduler,
                                    ledger=ledger, keys=keys, attributor=attributor,
                                    clock_ms=clock_ms)
    yield


def _resolver(store: ModelStore, runtimes: tuple[str, ...], threads: int,
              settings: Settings) -> Callable[[str], LoadPlan]:
    """How the scheduler turns a model name into a load plan: from its manifest."""

    def resolve(name: str) -> LoadPlan:
        manifest = store.get(name)
        if manifest.runtime not in runtimes:
            raise Unsupported(f"this daemon does not serve the {manifest.runtime!r} runtime",
                              param="model")
        options: dict[str, object] = dict(manifest.options)
        if manifest.tokenizer is not None:
            options["tokenizer_path"] = str(store.blob_path(manifest.tokenizer))
        if manifest.embedding_output is not None:
            options["embedding_output"] = manifest.embedding_output
        if manifest.runtime == "llama.cpp":
            options.setdefault("parallel", settings.parallel)
            options.setdefault("n_gpu_layers", gpu_layers_option(settings.gpu_layers))
        spec = ModelSpec(name=manifest.name, path=store.weights_path(manifest),
                         chat_format=manifest.chat_format,
                         context_length=manifest.context_length, threads=threads,
                         options=options)
        return LoadPlan(manifest.runtime, spec, source=manifest)

    return resolve


async def _sync(app: web.Application, *, clock_ms: Callable[[], int]) -> AsyncIterator[None]:
    """Trusted peers, the replicas of their logs, the exchange and (optionally) mDNS."""
    settings, keys = app[SETTINGS], app[NODE_KEYS]
    peers = PeerStore(settings.data_dir / "peers.json", own_key=keys.public_key.hex())
    replicas = await asyncio.to_thread(ReplicaStore, settings.data_dir / "replicas.sqlite3")
    try:
        discovery = (Discovery(keys.fingerprint, settings.port,
                               interfaces=list(settings.mdns_interfaces))
                     if settings.mdns_interfaces else None)
        exchange = ExchangeService(ledger=app[LEDGER], replicas=replicas, peers=peers,
                                   settings=settings, signing_key=keys.signing_key,
                                   clock_ms=clock_ms, discovery=discovery)
        app[PEERS] = peers
        app[EXCHANGE] = exchange
        app[SYNC_ENDPOINT] = exchange
        app[REQUEST_VERIFIER] = RequestVerifier(peers.is_trusted, audience=keys.public_key)
        if discovery is not None:
            await discovery.start()
        try:
            yield
        finally:
            if discovery is not None:
                await discovery.close()
    finally:
        replicas.close()


async def _federation(app: web.Application, *,
                      clock_ms: Callable[[], int]) -> AsyncIterator[None]:
    """Federated inference: advertisements of peers' models, routing, relay receipts.
    The exchange round fetches the advertisements of the peers it talks to."""
    service = app[SERVICE]
    federation = Federation(settings=app[SETTINGS], store=service.store,
                            scheduler=app[SCHEDULER], ledger=app[LEDGER], keys=app[NODE_KEYS],
                            peers=app[PEERS], clock_ms=clock_ms)
    await federation.open()
    app[FEDERATION] = federation
    app[EXCHANGE].on_peer = federation.refresh
    try:
        yield
    finally:
        await federation.close()


async def _background_tasks(app: web.Application, *,
                            clock_ms: Callable[[], int]) -> AsyncIterator[None]:
    """First-start work, checkpoints and sync rounds; cancelled and awaited on shutdown."""
    settings, exchange = app[SETTINGS], app[EXCHANGE]
    logger.info("node %s ready to start; settings %s", app[NODE_KEYS].fingerprint,
                settings.redacted())
    if not settings.install_demo_model:
        app[READY].set()
    tasks = [
        asyncio.create_task(_finish_startup(app), name="edged-first-start"),
        asyncio.create_task(_cut_checkpoints(app[LEDGER], settings, clock_ms),
                            name="edged-checkpoints"),
        asyncio.create_task(exchange.run_forever(
            lambda: list(settings.peers) + [url for url, _ in exchange.discovered()]),
            name="edged-sync"),
    ]
    async with running(tasks):
        yield


async def _finish_startup(app: web.Application) -> None:
    """Slow first-start work; /readyz answers 503 until it is done, and for good (naming
    the failure) if it failed: a node missing its demo model is not ready."""
    settings = app[SETTINGS]
    if settings.install_demo_model:
        store = app[SERVICE].store
        try:
            await asyncio.to_thread(install_demo_model, store, settings.demo_model_name,
                                    app[DATANETS])
            await asyncio.to_thread(install_demo_classifier, store, app[BINDINGS])
        except Exception as exc:
            logger.exception("installing the demo model failed")
            app[STARTUP_FAILURES].append(
                f"installing the demo model failed ({type(exc).__name__})")
            return
    app[READY].set()


async def _cut_checkpoints(ledger: Ledger, settings: Settings,
                           clock_ms: Callable[[], int]) -> None:
    """Sign a checkpoint every ``checkpoint_interval`` seconds while the log grows."""
    while True:
        await asyncio.sleep(settings.checkpoint_interval)
        latest = ledger.latest_checkpoint()
        if latest is None or latest.checkpoint.size < ledger.count():
            try:
                await asyncio.to_thread(ledger.cut_checkpoint, clock_ms())
            except Exception:
                logger.exception("cutting a checkpoint failed")
