"""Prometheus metrics of the fleet manager (``GET /metrics``).

Ingest is timed as it happens (:class:`TimedIngest` wraps the sync endpoint); nodes,
epochs and settlement are read from the store and the transaction journal when
Prometheus scrapes, in a worker thread (those are database reads). Node labels are key
fingerprints of enrolled nodes only.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edged.fleet.api import FLEET
from edged.fleet.service import FleetService
from edged.fleet.store import FleetRefused
from edged.http.metrics import HttpMetrics, exposition
from edged.http.sync_endpoint import SyncEndpoint
from sync.settlement.txjournal import STATUSES

FLEET_ROUTE_GROUPS: tuple[tuple[str, str], ...] = (("/v1/sync/", "sync"), ("/fleet/", "fleet"))
INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class TimedIngest:
    """The fleet's sync endpoint, timing each pushed batch's verification and storage by
    outcome (``stored``, the refusal's code, or ``error``)."""

    endpoint: SyncEndpoint
    seconds: Histogram

    @property
    def signing_key(self) -> Any:
        return self.endpoint.signing_key

    @property
    def origin(self) -> bytes:
        return self.endpoint.origin

    def heads(self) -> list[dict[str, Any]]:
        return self.endpoint.heads()

    def ingest(self, data: bytes) -> int:
        started = time.perf_counter()
        outcome = "error"
        try:
            stored = self.endpoint.ingest(data)
            outcome = "stored"
            return stored
        except FleetRefused as exc:
            outcome = exc.code or "refused"
            raise
        finally:
            self.seconds.labels(outcome).observe(time.perf_counter() - started)


class FleetMetrics:
    """Everything the fleet manager exports; one per app (``app[FLEET_METRICS]``)."""

    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(self.registry, FLEET_ROUTE_GROUPS)
        self.ingest_seconds = Histogram(
            "edged_fleet_ingest_seconds", "Time to verify and store one pushed batch, by "
            "outcome", ["outcome"], buckets=INGEST_BUCKETS, registry=self.registry)
        self.registry.register(FleetStateCollector(app))

    def timed(self, endpoint: SyncEndpoint) -> TimedIngest:
        return TimedIngest(endpoint, self.ingest_seconds)

    async def scrape(self) -> web.Response:
        """Render every family; the collector reads the database, so off the loop."""
        return await asyncio.to_thread(exposition, self.registry)


class FleetStateCollector(Collector):
    """Nodes, epochs and settlement, read at scrape time (blocking: database reads)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterable[Metric]:
        service = self._app.get(FLEET)
        yield from node_families(service)
        yield from epoch_families(service)
        yield from settlement_families(service)


def node_families(service: FleetService | None) -> list[Metric]:
    labels = ["node"]
    ingested = CounterMetricFamily("edged_fleet_receipts_ingested", "Verified receipts "
                                   "held of the node (its log up to its last checkpoint)",
                                   labels=labels)
    lag = GaugeMetricFamily("edged_fleet_node_lag_seconds", "Age of the node's latest "
                            "checkpoint held here", labels=labels)
    if service is not None:
        now_ms = service.clock_ms()
        for record in service.store.nodes():
            node = record.node.hex()[:16]
            ingested.add_metric([node], record.size)
            if record.checkpoint_ts is not None:
                lag.add_metric([node], max(0, now_ms - record.checkpoint_ts) / 1000)
    return [ingested, lag]


def epoch_families(service: FleetService | None) -> list[Metric]:
    closed = CounterMetricFamily("edged_fleet_epochs_closed", "Epochs closed")
    latest = GaugeMetricFamily("edged_fleet_latest_epoch", "Number of the latest closed "
                               "epoch (0: none)")
    settled = CounterMetricFamily("edged_fleet_epochs_settled", "Epochs whose payout tree "
                                  "is fixed (settled locally, or sent to the chain)")
    epochs = service.epochs.closed() if service is not None else []
    closed.add_metric([], len(epochs))
    latest.add_metric([], max((item["epoch"] for item in epochs), default=0))
    settled.add_metric([], len(service.epochs.settled()) if service is not None else 0)
    return [closed, latest, settled]


def settlement_families(service: FleetService | None) -> list[Metric]:
    transactions = GaugeMetricFamily("edged_fleet_settlement_transactions", "Journaled "
                                     "chain transactions by state", labels=["state"])
    errors = CounterMetricFamily("edged_fleet_chain_errors", "Settlement failures "
                                 "(chain unreachable, refused, unfunded...)")
    failing = GaugeMetricFamily("edged_fleet_chain_consecutive_failures", "Settlement "
                                "failures since the last good pass (backoff grows with it)")
    adapter = service.settler.adapter if service is not None else None
    states = Tally(status.status for status in adapter.statuses()) if adapter else Tally()
    for state in STATUSES:
        transactions.add_metric([state], states[state])
    health = service.settler.health if service is not None else None
    errors.add_metric([], health.errors if health else 0)
    failing.add_metric([], health.failures if health else 0)
    return [transactions, errors, failing]


FLEET_METRICS = web.AppKey("fleet_metrics", FleetMetrics)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text format (API key rules as for /fleet)."""
    return await request.app[FLEET_METRICS].scrape()
