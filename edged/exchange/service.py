"""The :class:`ExchangeService` facade: one object per node that composes the server,
the client, the rounds and the per-peer status, and knows the discovered peers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from aiohttp import web

from edged.exchange.client import ExchangeClient, PeerHook
from edged.exchange.rounds import PeerAction, SyncRounds
from edged.exchange.server import ExchangeServer
from edged.exchange.status import PeerState, PeerStatus
from edged.ledger import Ledger
from edged.peers import PeerStore
from edged.replicas import ReplicaStore
from edged.settings import Settings
from sync.batch import Batch
from sync.discovery import Discovery


class ExchangeService:
    """Receipt exchange with trusted peers and the fleet manager. Answers the signed
    sync endpoints (:class:`edged.http.sync_endpoint.SyncEndpoint`) through its
    :attr:`server`; pulls and pushes through its :attr:`client`; schedules rounds through
    its :attr:`rounds`; keeps per-peer :attr:`status`."""

    def __init__(self, *, ledger: Ledger, replicas: ReplicaStore, peers: PeerStore,
                 settings: Settings, signing_key: Any, clock_ms: Callable[[], int],
                 discovery: Discovery | None = None, on_peer: PeerHook | None = None,
                 peer_deadline_s: float = 30.0, parallel_peers: int = 4) -> None:
        """``discovery`` (mDNS, started and closed by the caller) adds trusted peers found
        on the network; ``on_peer`` is called with (client, url, key) once a peer proved
        its trusted key in a pull round, and must not raise."""
        self.ledger = ledger
        self.replicas = replicas
        self.peers = peers
        self.discovery = discovery
        self.status = PeerStatus()
        self.server = ExchangeServer(ledger=ledger, replicas=replicas, peers=peers,
                                     signing_key=signing_key, clock_ms=clock_ms)
        self.client = ExchangeClient(server=self.server, status=self.status,
                                     signing_key=signing_key, clock_ms=clock_ms,
                                     on_peer=on_peer)
        self.rounds = SyncRounds(client=self.client, status=self.status, settings=settings,
                                 peer_deadline_s=peer_deadline_s,
                                 parallel_peers=parallel_peers)

    # --- the peers ------------------------------------------------------------------------

    def discovered(self) -> list[tuple[str, str]]:
        """``(url, node id)`` of discovered peers whose key is trusted (mDNS is a hint)."""
        if self.discovery is None:
            return []
        trusted = {peer.fingerprint for peer in self.peers.trusted()}
        found = []
        for peer in self.discovery.peers():
            if peer.node_id in trusted and peer.addresses:
                host = peer.addresses[0]
                host = f"[{host}]" if ":" in host else host
                found.append((f"http://{host}:{peer.port}", peer.node_id))
        return found

    @property
    def states(self) -> dict[str, PeerState]:
        """Each peer's (and the fleet manager's) state, by URL."""
        return self.status.states

    # --- serving (the sync endpoints) -----------------------------------------------------

    @property
    def signing_key(self) -> Any:
        return self.server.signing_key

    @property
    def origin(self) -> bytes:
        return self.server.origin

    def heads(self) -> list[dict[str, Any]]:
        return self.server.heads()

    def make_batch(self, origin: bytes, have: int, known: int, limit: int, *,
                   fresh: bool = False) -> Batch:
        return self.server.make_batch(origin, have, known, limit, fresh=fresh)

    def ingest(self, data: bytes) -> int:
        return self.server.ingest(data)

    # --- the client -----------------------------------------------------------------------

    @property
    def on_peer(self) -> PeerHook | None:
        return self.client.on_peer

    @on_peer.setter
    def on_peer(self, hook: PeerHook | None) -> None:
        self.client.on_peer = hook

    async def sync_peer(self, client: httpx.AsyncClient, url: str) -> int:
        return await self.client.sync_peer(client, url)

    async def push_peer(self, client: httpx.AsyncClient, url: str) -> int:
        return await self.client.push_peer(client, url)

    # --- the rounds -----------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.rounds.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self.rounds.settings = settings

    @property
    def peer_deadline_s(self) -> float:
        return self.rounds.peer_deadline_s

    @peer_deadline_s.setter
    def peer_deadline_s(self, seconds: float) -> None:
        self.rounds.peer_deadline_s = seconds

    @property
    def parallel_peers(self) -> int:
        return self.rounds.parallel_peers

    @parallel_peers.setter
    def parallel_peers(self, count: int) -> None:
        self.rounds.parallel_peers = count

    async def run_forever(self, urls: Callable[[], list[str]]) -> None:
        await self.rounds.run_forever(urls)

    async def sync_now(self, urls: list[str]) -> dict[str, dict[str, str]]:
        return await self.rounds.sync_now(urls)

    async def push_round(self, *, force: bool = False) -> dict[str, str]:
        return await self.rounds.push_round(force=force)

    async def sync_round(self, urls: list[str], *, force: bool = False,
                         action: PeerAction | None = None) -> dict[str, str]:
        return await self.rounds.sync_round(urls, force=force, action=action)


EXCHANGE = web.AppKey("exchange", ExchangeService)
"""The node's receipt exchange: ``app[EXCHANGE]``."""
