"""The fleet manager's core: enrolled nodes, verified ingest, epochs and settlement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edged.fleet.epochs import Epochs
from edged.fleet.settle import Settler
from edged.fleet.store import FleetStore
from edged.keys import NodeKeys

TOP_PAYEES = 10


@dataclass
class FleetService:
    """Also the fleet's :class:`edged.http.sync_endpoint.SyncEndpoint`: nodes push to it with the
    same signed exchange they use between peers."""

    store: FleetStore
    epochs: Epochs
    settler: Settler
    keys: NodeKeys
    clock_ms: Callable[[], int]

    @property
    def signing_key(self) -> Any:
        return self.keys.signing_key

    @property
    def origin(self) -> bytes:
        return self.keys.public_key

    def heads(self) -> list[dict[str, Any]]:
        return self.store.heads()

    def ingest(self, data: bytes) -> int:
        return self.store.ingest(data)

    def nodes(self) -> list[dict[str, Any]]:
        now = self.clock_ms()
        return [record.to_json(now) for record in self.store.nodes()]

    def epoch_list(self) -> list[dict[str, Any]]:
        epochs = self.epochs.closed()
        statuses = self.settler.epoch_statuses([item["epoch"] for item in epochs])
        return [{**item, "settlement": statuses[item["epoch"]]} for item in epochs]

    def epoch(self, epoch: int) -> dict[str, Any]:
        summary = self.epochs.summary(epoch)
        summary["settlement"] = self.settler.epoch_statuses([epoch])[epoch]
        return summary

    def summary(self) -> dict[str, Any]:
        """Everything the dashboard shows, in one read."""
        epochs = self.epoch_list()
        top = self.epochs.top_payees(TOP_PAYEES)
        return {"fleet": self.origin.hex(), "now_ms": self.clock_ms(), "nodes": self.nodes(),
                "epochs": epochs,
                "top_payees": [{"payee": payee, "amount": amount} for payee, amount in top],
                "settlement": {"mode": self.settler.mode, **self.settler.health.to_json()}}
