"""The application factory: wires settings, keys, models, ledger, scheduler and HTTP."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from attribution.spans import SpanParams
from edged.api_datanets import add_datanet_routes
from edged.api_exchange import add_exchange_routes
from edged.api_node import add_node_routes
from edged.api_openai import add_openai_routes
from edged.api_peers import add_peer_routes
from edged.api_sync import add_sync_routes
from edged.api_v2 import add_v2_routes
from edged.appkeys import (
    BINDINGS,
    DATANETS,
    EXCHANGE,
    LEDGER,
    NODE_KEYS,
    PEERS,
    PREDICT,
    READY,
    REQUEST_VERIFIER,
    SCHEDULER,
    SERVICE,
    SETTINGS,
    SYNC_ENDPOINT,
)
from edged.attributor import Attributor
from edged.datanets import DatanetStore
from edged.demo import install_demo_model
from edged.demo_classifier import install_demo_classifier
from edged.errors import Unsupported
from edged.examples import InfluenceBindings
from edged.exchange import ExchangeService
from edged.http_common import error_middleware, server_handler_args
from edged.inference import InferenceService, unix_millis
from edged.keys import load_or_create_keys
from edged.ledger import Ledger
from edged.models import SERVING_RUNTIMES, ModelStore
from edged.peers import PeerStore
from edged.predict import PredictService
from edged.replicas import ReplicaStore
from edged.scheduler import LoadPlan, Scheduler
from edged.security import add_cors_headers, security_middleware
from edged.settings import Settings
from runtimes import Backend, ModelSpec, load_backend
from sync.auth import RequestVerifier
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
        middlewares=[error_middleware, security_middleware(settings)],
        client_max_size=settings.max_body_bytes,
        handler_args=server_handler_args(),
    )
    app[SETTINGS] = settings
    app[READY] = asyncio.Event()
    app.on_response_prepare.append(add_cors_headers)
    add_openai_routes(app)
    add_node_routes(app)
    add_datanet_routes(app)
    add_sync_routes(app)
    add_peer_routes(app)
    add_exchange_routes(app)
    add_v2_routes(app)

    async def node_state(app: web.Application) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings.data_dir.chmod(0o700)  # also a folder made before, or by someone else
        keys = load_or_create_keys(settings.keys_dir)
        store = ModelStore(settings.models_dir, runtimes=runtimes)
        datanets = DatanetStore(settings.datanets_dir)
        attributor = Attributor(
            datanets, operator_id=settings.operator_id or "node:" + keys.public_key.hex(),
            operator_ppm=settings.operator_share_ppm,
            span_params=SpanParams(min_words=settings.span_min_words))
        threads = default_threads(settings)

        def resolve(name: str) -> LoadPlan:
            manifest = store.get(name)
            if manifest.runtime not in runtimes:
                raise Unsupported(f"this daemon does not serve the {manifest.runtime!r} runtime",
                                  param="model")
            options: dict[str, object] = {}
            if manifest.tokenizer is not None:
                options["tokenizer_path"] = str(store.blob_path(manifest.tokenizer))
            if manifest.embedding_output is not None:
                options["embedding_output"] = manifest.embedding_output
            spec = ModelSpec(name=manifest.name, path=store.weights_path(manifest),
                             chat_format=manifest.chat_format,
                             context_length=manifest.context_length, threads=threads,
                             options=options)
            return LoadPlan(manifest.runtime, spec, source=manifest)

        scheduler = Scheduler(resolve, max_loaded_models=settings.max_loaded_models,
                              default_keep_alive=settings.keep_alive,
                              max_queue=settings.max_queue, loader=loader,
                              clock=time.time)  # expires_at is shown to users: unix time
        with Ledger(settings.ledger_path, keys.signing_key) as ledger:
            await scheduler.start()
            app[NODE_KEYS] = keys
            app[LEDGER] = ledger
            app[SCHEDULER] = scheduler
            app[DATANETS] = datanets
            app[BINDINGS] = InfluenceBindings(settings.data_dir / "influence")
            app[PREDICT] = PredictService(store=store, scheduler=scheduler, ledger=ledger,
                                          keys=keys, attributor=attributor,
                                          bindings=app[BINDINGS], clock_ms=clock_ms)
            peers = PeerStore(settings.data_dir / "peers.json", own_key=keys.public_key.hex())
            app[PEERS] = peers
            replicas = ReplicaStore(settings.data_dir / "replicas.sqlite3")
            exchange = ExchangeService(ledger=ledger, replicas=replicas, peers=peers,
                                       settings=settings, signing_key=keys.signing_key,
                                       clock_ms=clock_ms)
            app[EXCHANGE] = exchange
            app[SYNC_ENDPOINT] = exchange
            app[REQUEST_VERIFIER] = RequestVerifier(peers.is_trusted, audience=keys.public_key)
            if settings.mdns_interfaces:
                exchange.discovery = Discovery(keys.fingerprint, settings.port,
                                               interfaces=list(settings.mdns_interfaces))
                await exchange.discovery.start()
            app[SERVICE] = InferenceService(settings=settings, store=store, scheduler=scheduler,
                                            ledger=ledger, keys=keys, attributor=attributor,
                                            clock_ms=clock_ms)
            logger.info("node %s ready to start; settings %s", keys.fingerprint,
                        settings.redacted())
            if not settings.install_demo_model:
                app[READY].set()
            startup = asyncio.create_task(_finish_startup(app, store, datanets))
            checkpoints = asyncio.create_task(_cut_checkpoints(ledger, settings,
                                                               clock_ms))
            syncing = asyncio.create_task(exchange.run_forever(
                lambda: list(settings.peers) + [url for url, _ in exchange.discovered()]))
            try:
                yield
            finally:
                startup.cancel()
                checkpoints.cancel()
                syncing.cancel()
                if exchange.discovery is not None:
                    await exchange.discovery.close()
                replicas.close()
                await scheduler.close()
                datanets.close()

    app.cleanup_ctx.append(node_state)
    return app


async def _finish_startup(app: web.Application, store: ModelStore,
                          datanets: DatanetStore) -> None:
    """Slow first-start work; /readyz answers 503 until it is done."""
    settings = app[SETTINGS]
    if settings.install_demo_model:
        try:
            await asyncio.to_thread(install_demo_model, store, settings.demo_model_name,
                                    datanets)
            await asyncio.to_thread(install_demo_classifier, store, app[BINDINGS])
        except Exception:
            logger.exception("installing the demo model failed")
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
