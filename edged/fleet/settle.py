"""Settling closed epochs: anchor their checkpoints and post their payout roots.

Without a chain (``chain_url`` empty) the fleet settles into its own ledger: the payout
root of each closed epoch is fixed in ``fleet_settled_epochs`` and payees fetch their
proofs from the fleet; :meth:`Settler.plan` shows the transactions a chain would get.
With a chain, :class:`sync.settlement.adapter.SettlementAdapter` sends them (raw
transactions kept and rebroadcast unchanged, or replaced with higher fees when stuck, up to
``chain_max_fee_gwei``), and an epoch is ``final`` only when every one of its transactions
is final at the configured confirmation depth.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from edged.fleet.epochs import Epochs
from edged.fleet.store import (
    FleetChainRefused,
    FleetChainUnavailable,
    FleetConflict,
    FleetPaymentRequired,
    FleetRefused,
    FleetSettlementFailed,
)
from edged.settings import Settings

logger = logging.getLogger(__name__)
MAX_BACKOFF_S = 600.0


def checkpoint_key(origin: bytes, size: int) -> str:
    return f"checkpoint:{origin.hex()}:{size}"


def epoch_key(epoch: int) -> str:
    return f"epoch:{epoch}"


@dataclass
class ChainHealth:
    failures: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    last_ok: float | None = None
    errors: int = 0  # every failure since start (``failures`` resets on success); metrics

    def to_json(self) -> dict[str, Any]:
        return {"failures": self.failures, "last_error": self.last_error,
                "last_ok": self.last_ok,
                "retry_in_s": max(0.0, round(self.next_attempt - time.monotonic(), 1))
                if self.failures else None}


@dataclass
class Settler:
    epochs: Epochs
    settings: Settings
    adapter: Any = None  # sync.settlement.adapter.SettlementAdapter when a chain is configured
    health: ChainHealth = field(default_factory=ChainHealth)

    def __post_init__(self) -> None:
        if self.adapter is not None:  # the fee ceiling comes from settings, however it was built
            self.adapter.max_fee_per_gas = round(self.settings.chain_max_fee_gwei * 10**9)

    @property
    def mode(self) -> str:
        return "chain" if self.adapter is not None else "local"

    def plan(self) -> list[dict[str, Any]]:
        """What settling would send, epoch by epoch, for epochs not yet final."""
        actions: list[dict[str, Any]] = []
        statuses = self._statuses()
        for item in self.epochs.closed():
            epoch = item["epoch"]
            if statuses.get(epoch_key(epoch), {}).get("status") == "final":
                continue
            for cp in self.epochs.checkpoints(epoch):
                key = checkpoint_key(cp.origin, cp.end)
                actions.append({"action": "recordCheckpoint", "epoch": epoch,
                                "node": "0x" + cp.origin.hex(), "size": cp.end,
                                "root": "0x" + cp.root.hex(),
                                "status": statuses.get(key, {}).get("status", "unsent")})
            try:
                tree = self.epochs.payout_tree(epoch)
            except FleetRefused as exc:
                actions.append({"action": "postEpoch", "epoch": epoch, "error": exc.message,
                                "status": "blocked"})
                continue
            if not tree.size:
                actions.append({"action": "postEpoch", "epoch": epoch,
                                "status": "nothing to pay"})
                continue
            actions.append({"action": "postEpoch", "epoch": epoch,
                            "root": "0x" + tree.root.hex(), "leaf_count": tree.size,
                            "value": str(tree.total),
                            "status": statuses.get(epoch_key(epoch), {}).get("status",
                                                                             "unsent")})
        return actions

    def settle(self) -> dict[str, Any]:
        """One settlement pass (blocking). Locally: fix every closed epoch's payout tree.
        On a chain: anchor each epoch's checkpoints, fix its tree and post exactly that
        (an epoch that owes nothing posts nothing), then refresh every status. An epoch
        the chain refuses is reported and the others go on; an unreachable chain or an
        account without funds stops the pass (recorded in ``health`` for backoff).
        Nothing journaled is lost."""
        results: dict[str, Any] = {"mode": self.mode, "settled": [], "blocked": {}}
        for item in self.epochs.closed():
            epoch = item["epoch"]
            try:
                tree = self.epochs.payout_tree(epoch)
            except FleetRefused as exc:
                results["blocked"][str(epoch)] = exc.message
                continue
            if self.adapter is None:
                self.epochs.mark_settled(epoch, tree, "local")
                results["settled"].append(epoch)
                continue
            try:
                for cp in self.epochs.checkpoints(epoch):
                    self.adapter.anchor_checkpoint(cp.origin, cp.end, cp.root)
                tree = self.epochs.mark_settled(epoch, tree, "chain")
                if tree.size:
                    self.adapter.post_epoch(epoch, tree.root, tree.size, tree.total)
            except Exception as exc:
                error = self._failed(exc)
                if error.code != "transaction_failed":
                    raise error from exc
                results["blocked"][str(epoch)] = error.message
                continue
            results["settled"].append(epoch)
        if self.adapter is not None:
            try:
                self.adapter.refresh()
            except Exception as exc:
                raise self._failed(exc) from exc
            self.health.failures, self.health.last_error = 0, None
            self.health.last_ok = time.time()
        return results

    def _failed(self, exc: Exception) -> FleetRefused:
        """Record a chain failure for backoff; the error to report, in the one error shape."""
        self.health.failures += 1
        self.health.errors += 1
        self.health.last_error = str(exc) or exc.__class__.__name__
        delay = min(MAX_BACKOFF_S, self.settings.settle_interval * 2 ** self.health.failures)
        self.health.next_attempt = time.monotonic() + delay
        logger.warning("settlement failed (%s); retrying in %.0f s",
                       exc.__class__.__name__, delay)
        from sync.settlement.adapter import (
            ChainUnavailable,
            InsufficientFunds,
            SettlementError,
            TransactionFailed,
        )

        if isinstance(exc, ChainUnavailable):
            return FleetChainUnavailable(f"the chain is unreachable: {exc}; retrying with backoff, "
                                "nothing is lost", "chain_unavailable")
        if isinstance(exc, InsufficientFunds):
            return FleetPaymentRequired(str(exc), "insufficient_funds")
        if isinstance(exc, TransactionFailed):
            return FleetChainRefused(f"the chain refused a transaction: {exc}",
                                "transaction_failed")
        if isinstance(exc, SettlementError):
            return FleetChainRefused(f"settlement failed: {exc}", "settlement_failed")
        return FleetSettlementFailed("settlement failed; see the fleet's log", "settlement_failed")

    def deploy(self) -> str:
        """Deploy the settlement contract from the fleet's account."""
        if self.adapter is None:
            raise FleetConflict("no chain is configured (chain_url)", "no_chain")
        try:
            return str(self.adapter.deploy())
        except Exception as exc:
            raise self._failed(exc) from exc

    def due(self) -> bool:
        return time.monotonic() >= self.health.next_attempt

    def _statuses(self) -> dict[str, dict[str, Any]]:
        if self.adapter is None:
            return {}
        return {status.key: status.to_json() for status in self.adapter.statuses()}

    def epoch_statuses(self, epochs: list[int]) -> dict[int, str]:
        """Per epoch: ``unsettled``, ``local``, or the weakest status of its transactions
        (one read of the settled epochs and of the journal for all of them)."""
        settled = self.epochs.settled()
        statuses = self._statuses()
        result: dict[int, str] = {}
        for epoch in epochs:
            if epoch not in settled:
                result[epoch] = "unsettled"
                continue
            if self.adapter is None:
                result[epoch] = "local"
                continue
            keys = [checkpoint_key(cp.origin, cp.end) for cp in self.epochs.checkpoints(epoch)]
            if settled[epoch]["leaf_count"]:
                keys.append(epoch_key(epoch))  # an epoch that owes nothing posts nothing
            found = {statuses.get(key, {}).get("status", "unsent") for key in keys}
            result[epoch] = next((status for status in ("failed", "unsent", "pending",
                                                         "included") if status in found),
                                 "final")
        return result

    def status(self) -> dict[str, Any]:
        chain: dict[str, Any] | None = None
        if self.adapter is not None:
            chain = self.adapter.chain_status()
        return {"mode": self.mode, "health": self.health.to_json(), "chain": chain,
                "transactions": list(self._statuses().values())}
