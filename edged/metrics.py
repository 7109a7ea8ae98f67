"""Prometheus metrics of a node (``GET /metrics``); the HTTP part, which a fleet shares,
is :mod:`edged.http.metrics`.

Every app holds its own :class:`prometheus_client.CollectorRegistry` (``app[METRICS]``):
tests run many apps in one process, and module-level metrics would mix them. Events are
counted where they happen through small hooks (the HTTP middleware here, the ledger's
``on_commit``, the scheduler's token timers); state (loaded models, queues, sync peers) is
read when Prometheus scrapes, by a collector, so nothing has to keep gauges up to date.

Label values are bounded and never carry request content: a route *group*, a model name
only when the model is registered here, a status code, a peer's key fingerprint or its
configured address.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from yarl import URL

from attribution.receipt import ReceiptDraft
from edged.errors import EdgedError
from edged.exchange import EXCHANGE, ExchangeService, PeerState
from edged.http.common import REQUESTED_MODEL
from edged.http.metrics import HttpMetrics, exposition
from edged.inference import SERVICE
from edged.ledger import LEDGER
from edged.scheduler import SCHEDULER, LoadedModel

FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# (path prefix, route group), first match wins; a prefix also matches its bare form
# ("/v2/" matches "/v2"). Anything else is "other".
NODE_ROUTE_GROUPS: tuple[tuple[str, str], ...] = (
    ("/v1/sync/", "sync"), ("/api/sync/", "sync"), ("/api/peers/", "peers"),
    ("/v1/receipts/", "log"), ("/v1/", "openai"), ("/api/", "api"), ("/v2/", "v2"))
# Routes whose {name} is a model name.
MODEL_ROUTE_PREFIXES = ("/v1/models/", "/api/models/", "/v2/models/")


@dataclass
class GenerationTimer:
    """Times one generation's tokens as they reach the event loop (a scheduler
    ``TokenTimer``): the first batch gives the time to first token, each later one the
    time per token since the previous batch."""

    model: str
    first_token: Histogram
    inter_token: Histogram
    started: float
    last: float | None = None

    def tokens(self, count: int) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.first_token.labels(self.model).observe(now - self.started)
        else:
            per_token = (now - self.last) / count
            observe = self.inter_token.labels(self.model).observe
            for _ in range(count):
                observe(per_token)
        self.last = now


class NodeMetrics:
    """Everything a node exports; one per app (``app[METRICS]``)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(self.registry, NODE_ROUTE_GROUPS, self._model_label)
        model = ["model"]
        self.first_token = Histogram(
            "edged_time_to_first_token_seconds", "Time from the start of a generation (its "
            "slot held) to its first token reaching the server", model,
            buckets=FIRST_TOKEN_BUCKETS, registry=self.registry)
        self.inter_token = Histogram(
            "edged_inter_token_latency_seconds", "Time per generated token after the first",
            model, buckets=INTER_TOKEN_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter(
            "edged_prompt_tokens", "Input tokens of committed generations and embeddings",
            model, registry=self.registry)
        self.completion_tokens = Counter(
            "edged_completion_tokens", "Generated tokens billed in committed receipts",
            model, registry=self.registry)
        self.receipts = Counter(
            "edged_receipts_committed", "Receipts committed to the ledger",
            ["model", "kind"], registry=self.registry)
        self.ledger_commit = Histogram(
            "edged_ledger_commit_seconds", "Duration of one ledger write transaction (group "
            "commit: sign, insert, fsync)", buckets=COMMIT_BUCKETS, registry=self.registry)
        self.checkpoint_size = Gauge(
            "edged_checkpoint_size", "Receipts (Merkle leaves) in the latest signed "
            "checkpoint", registry=self.registry)
        self.registry.register(NodeStateCollector(app))

    def generation_timer(self, model: str) -> GenerationTimer:
        """A timer for one generation of ``model`` (the scheduler's ``token_timers``)."""
        return GenerationTimer(model, self.first_token, self.inter_token, time.perf_counter())

    def ledger_committed(self, drafts: Sequence[ReceiptDraft], seconds: float) -> None:
        """The ledger's ``on_commit``: runs on its writer thread after each transaction."""
        self.ledger_commit.observe(seconds)
        for draft in drafts:
            name = draft.model.name
            self.receipts.labels(name, draft.kind).inc()
            if draft.kind in ("chat", "completion", "embedding"):
                self.prompt_tokens.labels(name).inc(draft.input_units)
            if draft.kind in ("chat", "completion"):
                self.completion_tokens.labels(name).inc(draft.output_units)

    async def scrape(self) -> web.Response:
        """Read what needs the disk off the loop, then render every family."""
        ledger = self._app.get(LEDGER)
        if ledger is not None:
            latest = await asyncio.to_thread(ledger.latest_checkpoint)
            self.checkpoint_size.set(0 if latest is None else latest.checkpoint.size)
        return exposition(self.registry)

    def _model_label(self, request: web.Request) -> str:
        """The model a request names, if it is registered here (else ""): a made-up name
        (or a prompt pasted into the model field) never becomes a label value."""
        name = request.get(REQUESTED_MODEL)
        if name is None and request.path.startswith(MODEL_ROUTE_PREFIXES):
            name = request.match_info.get("name")
        service = self._app.get(SERVICE)
        if not name or service is None:
            return ""
        try:
            service.store.get(name)
        except (EdgedError, ValueError):
            return ""
        return name


class NodeStateCollector(Collector):
    """Loaded models and sync peers, read from the scheduler and the exchange at scrape
    time (on the event loop, which owns that state)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterable[Metric]:
        scheduler = self._app.get(SCHEDULER)
        yield from model_families([] if scheduler is None else scheduler.loaded())
        exchange = self._app.get(EXCHANGE)
        yield from sync_families(exchange)


def model_families(loaded: list[LoadedModel]) -> list[Metric]:
    """Per resident model (summed over loads of one name, e.g. one closing while its
    successor loads): slots, queue, memory."""
    labels = ["model"]
    resident = GaugeMetricFamily("edged_model_loaded", "1 for each resident model",
                                 labels=["model", "runtime"])
    queued = GaugeMetricFamily("edged_model_queue_depth", "Requests waiting for a slot",
                               labels=labels)
    busy = GaugeMetricFamily("edged_model_slots_busy", "Slots serving a request",
                             labels=labels)
    slots = GaugeMetricFamily("edged_model_slots", "Requests the model serves at once",
                              labels=labels)
    memory = GaugeMetricFamily("edged_model_memory_bytes", "Memory the model's load took",
                               labels=labels)
    device = GaugeMetricFamily("edged_model_device_memory_bytes", "Accelerator memory the "
                               "model's load took (backends that offload)", labels=labels)
    totals: dict[str, list[int]] = {}
    runtimes: dict[str, str] = {}
    devices: dict[str, int] = {}
    for model in loaded:
        total = totals.setdefault(model.name, [0, 0, 0, 0])
        for index, value in enumerate((model.queued, model.active, model.slots,
                                       model.memory_bytes)):
            total[index] += value
        runtimes[model.name] = model.runtime
        device_bytes = model.details.get("device_memory_bytes")
        if isinstance(device_bytes, int):
            devices[model.name] = devices.get(model.name, 0) + device_bytes
    for name, (waiting, active, capacity, memory_bytes) in sorted(totals.items()):
        resident.add_metric([name, runtimes[name]], 1)
        queued.add_metric([name], waiting)
        busy.add_metric([name], active)
        slots.add_metric([name], capacity)
        memory.add_metric([name], memory_bytes)
        if name in devices:
            device.add_metric([name], devices[name])
    return [resident, queued, busy, slots, memory, device]


def peer_label(state: PeerState) -> str:
    """A peer's key fingerprint once it proved its key, else its configured address
    (scheme, host and port only: no credentials or path)."""
    if state.key is not None:
        return state.key.hex()[:16]
    return str(URL(state.url).origin())


def sync_families(exchange: ExchangeService | None) -> list[Metric]:
    """Per sync peer (and the fleet manager, direction ``push``): exchanges, failures,
    receipts moved and lag."""
    labels = ["peer", "direction"]
    rounds = CounterMetricFamily("edged_sync_rounds", "Exchanges with the peer (one per "
                                 "sync round in which it was due)", labels=labels)
    failures = CounterMetricFamily("edged_sync_failures", "Exchanges with the peer that "
                                   "failed", labels=labels)
    failing = GaugeMetricFamily("edged_sync_consecutive_failures", "Failed exchanges with "
                                "the peer since the last good one (backoff grows with it)",
                                labels=labels)
    received = CounterMetricFamily("edged_sync_receipts", "Receipts pulled from the peer, "
                                   "or stored by the fleet manager from pushes",
                                   labels=labels)
    lag = GaugeMetricFamily("edged_sync_lag_seconds", "Seconds since the last complete "
                            "exchange with the peer", labels=labels)
    # Two addresses of one node (localhost and 127.0.0.1) share its key: one series each.
    totals: dict[tuple[str, str], list[int]] = {}
    last_ok: dict[tuple[str, str], float] = {}
    if exchange is not None:
        fleet_url = exchange.settings.fleet_url.rstrip("/")
        for state in list(exchange.states.values()):
            key = (peer_label(state), "push" if state.url == fleet_url else "pull")
            total = totals.setdefault(key, [0, 0, 0, 0])
            for index, value in enumerate((state.exchanges, state.failed_exchanges,
                                           state.failures, state.received)):
                total[index] += value
            if state.last_ok is not None:
                last_ok[key] = max(state.last_ok, last_ok.get(key, state.last_ok))
    now = time.time()
    for key, (exchanges, failed, consecutive, moved) in sorted(totals.items()):
        values = list(key)
        rounds.add_metric(values, exchanges)
        failures.add_metric(values, failed)
        failing.add_metric(values, consecutive)
        received.add_metric(values, moved)
        if key in last_ok:
            lag.add_metric(values, max(0.0, now - last_ok[key]))
    return [rounds, failures, failing, received, lag]


METRICS = web.AppKey("metrics", NodeMetrics)


def add_metrics_route(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text format (API key rules as for /api)."""
    return await request.app[METRICS].scrape()
