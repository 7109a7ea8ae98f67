"""Scheduling the exchange: rounds over the peers that are due, a few at a time, each
within a deadline, and the two background loops (pulling from peers, pushing to the
fleet manager) that run them every ``sync_interval``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import httpx

from edged.exchange.client import ExchangeClient
from edged.exchange.status import PeerState, PeerStatus
from edged.http.sync_endpoint import SyncRefused
from edged.settings import Settings

logger = logging.getLogger(__name__)

PeerAction: TypeAlias = Callable[[httpx.AsyncClient, str], Awaitable[int]]


def _outcome_name(exc: Exception) -> str:
    """How a failed exchange is reported: the error's class, every refusal as
    ``SyncRefused`` (its status-specific subclasses are one outcome to the operator)."""
    return "SyncRefused" if isinstance(exc, SyncRefused) else exc.__class__.__name__


class SyncRounds:
    """Runs the client's exchanges with peers and records their outcomes in ``status``."""

    def __init__(self, *, client: ExchangeClient, status: PeerStatus, settings: Settings,
                 peer_deadline_s: float = 30.0, parallel_peers: int = 4) -> None:
        self.client = client
        self.status = status
        self.settings = settings
        # A whole exchange with one peer (hello, heads, every pull or push) must end within
        # this many seconds: a peer that trickles its answers cannot hold up a round.
        self.peer_deadline_s = peer_deadline_s
        # How many peers one round talks to at once.
        self.parallel_peers = parallel_peers

    async def run_forever(self, urls: Callable[[], list[str]]) -> None:
        """The background sync: pulling from peers and pushing to the fleet manager are
        two loops of their own, so a slow peer round never delays the fleet push (nor
        the other way round)."""
        async with asyncio.TaskGroup() as loops:
            loops.create_task(self._every_interval("sync round",
                                                   lambda: self.sync_round(urls())))
            if self.settings.fleet_url:
                loops.create_task(self._every_interval("fleet push", self.push_round))

    async def _every_interval(self, name: str,
                              one_round: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(self.settings.sync_interval)
            try:
                await one_round()
            except Exception:
                logger.exception("%s failed", name)

    async def sync_now(self, urls: list[str]) -> dict[str, dict[str, str]]:
        """Pull from every peer, then push to the fleet manager (what was just pulled
        included), ignoring backoff. Each step has its deadline, so this is done within
        about twice ``peer_deadline_s`` (with up to ``parallel_peers`` stuck peers)."""
        peers = await self.sync_round(urls, force=True)
        return {"peers": peers, "fleet": await self.push_round(force=True)}

    async def push_round(self, *, force: bool = False) -> dict[str, str]:
        """Push to the configured fleet manager (if it is due, or with ``force``)."""
        if not self.settings.fleet_url:
            return {}
        return await self.sync_round([self.settings.fleet_url.rstrip("/")], force=force,
                                     action=self.client.push_peer)

    async def sync_round(self, urls: list[str], *, force: bool = False,
                         action: PeerAction | None = None) -> dict[str, str]:
        """One round over every peer that is due (all with ``force``): ``parallel_peers``
        at a time, each within ``peer_deadline_s``, those that failed least first; per-peer
        exponential backoff after failures. ``action`` defaults to pulling."""
        action = action or self.client.sync_peer
        due = self.status.due(urls, force=force)
        slots = asyncio.Semaphore(self.parallel_peers)
        # Building the client loads the CA bundle into an SSL context: 30-60 ms of CPU,
        # done off the loop.
        async with await asyncio.to_thread(httpx.AsyncClient, timeout=30) as client:
            outcomes = await asyncio.gather(*(self._exchange(client, state, action, slots)
                                              for state in due))
        return {state.url: outcome for state, outcome in zip(due, outcomes, strict=True)}

    async def _exchange(self, client: httpx.AsyncClient, state: PeerState,
                        action: PeerAction, slots: asyncio.Semaphore) -> str:
        """Run ``action`` with one peer within the deadline and record the outcome in its
        state; returns the outcome in words. Never raises (but for cancellation)."""
        async with slots:
            state.exchanges += 1
            received_before = state.received
            deadline = asyncio.timeout(self.peer_deadline_s)
            try:
                async with deadline:
                    received = await action(client, state.url)
            except Exception as exc:  # one bad peer must not stop the round
                if not deadline.expired():
                    return self._failed(state, _outcome_name(exc))
                cut_short = f"TimeoutError: not done within {self.peer_deadline_s:g} s"
                progress = state.received - received_before
                if not progress:
                    return self._failed(state, cut_short)
                # A long backlog: what came is kept, the next round goes on from there.
                logger.info("sync with %s: %s after %d new", state.url, cut_short, progress)
                self.status.record_cut_short(state, cut_short)
                return f"partial: {progress} new, {cut_short}"
        self.status.record_ok(state)
        return f"ok: {received} new"

    def _failed(self, state: PeerState, error: str) -> str:
        """Record a failed exchange and back off from that peer; returns it in words."""
        logger.info("sync with %s failed: %s", state.url, error)
        self.status.record_failure(state, error, self.settings.sync_interval)
        return f"error: {error}"
