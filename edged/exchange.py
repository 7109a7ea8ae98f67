"""Receipt exchange between trusted nodes: heads, pull, push, and the sync loop.

Every node serves batches of its own log (checkpoints of any prefix, signed on demand)
and of the other trusted origins it holds (store and forward: only at sizes that origin
signed). A received batch is verified completely (sync.batch.verify_batch) before
anything is stored; an origin caught equivocating is frozen, its two checkpoints kept
as evidence, and the event logged once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from edged import bounded_json
from edged.http.sync_endpoint import (
    HELLO_DOMAIN,
    MSGPACK,
    SyncEquivocation,
    SyncForbidden,
    SyncRefused,
)
from edged.ledger import Ledger
from edged.peers import PeerStore
from edged.replicas import ReplicaStore
from edged.settings import Settings
from sync import merkle
from sync.auth import sign_request
from sync.batch import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECEIPTS,
    Batch,
    BatchError,
    Equivocation,
    verify_batch,
)
from sync.discovery import Discovery

logger = logging.getLogger(__name__)
MAX_BACKOFF_S = 300.0
MAX_HEADS = 10_000
MAX_HEADS_BYTES = 2 * 1024 * 1024
MAX_HELLO_BYTES = 4096
BATCH_OVERHEAD_BYTES = 64 * 1024


def _parse_heads(body: bytes) -> list[tuple[bytes, int]]:
    """A peer's heads, strictly: a bounded list of {origin: 64 hex, size: int >= 0}."""
    try:
        heads = bounded_json.loads(body)["heads"]
    except (ValueError, KeyError, TypeError):
        raise SyncRefused("malformed heads") from None
    if not isinstance(heads, list) or len(heads) > MAX_HEADS:
        raise SyncRefused("malformed heads")
    parsed = []
    for head in heads:
        origin, size = (head.get("origin"), head.get("size")) if isinstance(head, dict) \
            else (None, None)
        if not isinstance(origin, str) or len(origin) != 64 or not isinstance(size, int) \
                or isinstance(size, bool) or size < 0:
            raise SyncRefused("malformed heads")
        try:
            parsed.append((bytes.fromhex(origin), size))
        except ValueError:
            raise SyncRefused("malformed heads") from None
    return parsed


def _fitting(receipts: list[bytes]) -> list[bytes]:
    """The longest prefix of ``receipts`` that fits in one batch (with room for the
    checkpoint, the proof and framing); at least one receipt."""
    budget = MAX_BATCH_BYTES - BATCH_OVERHEAD_BYTES
    for count, raw in enumerate(receipts):
        budget -= len(raw) + 5  # msgpack bin header
        if budget < 0:
            return receipts[:max(1, count)]
    return receipts


def _outcome_name(exc: Exception) -> str:
    """How a failed exchange is reported: the error's class, every refusal as
    ``SyncRefused`` (its status-specific subclasses are one outcome to the operator)."""
    return "SyncRefused" if isinstance(exc, SyncRefused) else exc.__class__.__name__


@dataclass
class PeerState:
    url: str
    failures: int = 0
    next_attempt: float = 0.0
    last_ok: float | None = None
    last_error: str | None = None
    received: int = 0
    key: bytes | None = None  # the peer's key, once it proved it (hello)
    exchanges: int = 0  # exchanges attempted, for metrics (``failures`` resets on success)
    failed_exchanges: int = 0


@dataclass
class ExchangeService:
    ledger: Ledger
    replicas: ReplicaStore
    peers: PeerStore
    settings: Settings
    signing_key: Any  # nacl SigningKey
    clock_ms: Callable[[], int]
    states: dict[str, PeerState] = field(default_factory=dict)
    # One replica connection: serving and ingesting take turns (both run in threads).
    lock: threading.Lock = field(default_factory=threading.Lock)
    discovery: Discovery | None = None
    # A whole exchange with one peer (hello, heads, every pull or push) must end within
    # this many seconds: a peer that trickles its answers cannot hold up a round.
    peer_deadline_s: float = 30.0
    # How many peers one round talks to at once.
    parallel_peers: int = 4
    # Called with (client, url, key) once a peer proved its trusted key in a pull round
    # (federation fetches its model advertisement); must not raise.
    on_peer: Callable[[httpx.AsyncClient, str, bytes], Awaitable[None]] | None = None

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
    def origin(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    # --- serving ------------------------------------------------------------------------

    def heads(self) -> list[dict[str, Any]]:
        """What this node can serve: its own log and every unfrozen replica."""
        own = self.ledger.cut_checkpoint(self.clock_ms())
        heads = [{"origin": self.origin.hex(), "size": own.checkpoint.size}]
        heads += [{"origin": h.origin.hex(), "size": h.checkpoint.checkpoint.size}
                  for h in self.replicas.heads() if h.checkpoint and not h.frozen]
        return heads

    def make_batch(self, origin: bytes, have: int, known: int, limit: int, *,
                   fresh: bool = False) -> Batch:
        """Receipts ``[have, end)`` of ``origin`` with a checkpoint of ``end`` and the
        consistency proof from the puller's checkpoint size ``known``; ``fresh`` signs this
        node's checkpoint at the current time even when one of that size exists (a fleet
        refuses checkpoints signed before the node's enrollment). Blocking."""
        with self.lock:
            return self._make_batch(origin, have, known, limit, fresh)

    def _make_batch(self, origin: bytes, have: int, known: int, limit: int,
                    fresh: bool = False) -> Batch:
        limit = max(1, min(limit, MAX_BATCH_RECEIPTS))
        if origin == self.origin:
            end = min(self.ledger.count(), have + limit)
            if end < have or known > end:
                raise SyncRefused("nothing to serve from there")
            receipts = _fitting([r.raw for r in self.ledger.page(have - 1, end - have)])
            end = have + len(receipts)
            checkpoint = self.ledger.cut_checkpoint(self.clock_ms(), end, fresh=fresh)
            proof = self.ledger.consistency_proof(known, end) if known else []
            return Batch(origin, receipts, checkpoint, proof, known)
        if self.replicas.is_frozen(origin):
            raise SyncForbidden("that origin is frozen for equivocation")
        held = [cp for cp in self.replicas.checkpoints(origin) if cp.checkpoint.size > have]
        if not held:
            raise SyncRefused("no newer checkpoint of that origin held here")
        fitting = [cp for cp in held if cp.checkpoint.size <= have + limit] or held[:1]
        for checkpoint in reversed(fitting):  # the largest range that fits in a batch
            end = checkpoint.checkpoint.size
            receipts = self.replicas.raw_range(origin, have, end)
            if len(_fitting(receipts)) == len(receipts):
                break
        else:
            raise SyncRefused("the receipts up to the next checkpoint held of that "
                              "origin do not fit in one batch")
        proof = (merkle.consistency_proof(known, end, self.replicas.subtrees(origin))
                 if known else [])
        return Batch(origin, receipts, checkpoint, proof, known)

    def ingest(self, data: bytes) -> int:
        """Verify and store one batch; returns how many receipts were new. Blocking."""
        with self.lock:
            return self._ingest(data)

    def _ingest(self, data: bytes) -> int:
        try:
            batch = Batch.decode(data)
        except BatchError as exc:
            raise SyncRefused(str(exc)) from None
        origin = batch.origin
        if origin == self.origin:
            return 0  # our own log is authoritative here
        if not self.peers.is_trusted(origin):
            raise SyncForbidden("receipts of an untrusted origin")
        if self.replicas.is_frozen(origin):
            raise SyncForbidden("that origin is frozen for equivocation")
        known = self.replicas.latest_checkpoint(origin)
        try:
            verified = verify_batch(batch, known=known, have_through=self.replicas.size(origin),
                                    stored=self.replicas.subtrees(origin))
        except Equivocation as exc:
            if self.replicas.record_equivocation(origin, exc.known, exc.new):
                logger.warning("origin %s signed two inconsistent checkpoints; frozen",
                               origin.hex()[:16])
            raise SyncEquivocation("equivocation: the origin is now frozen") from None
        except BatchError as exc:
            raise SyncRefused(str(exc)) from None
        return self.replicas.store(origin, verified.new_receipts, verified.subtree_rows,
                                   verified.checkpoint)

    # --- pulling ------------------------------------------------------------------------

    def _signed(self, method: str, path: str, audience: bytes,
                body: bytes = b"") -> dict[str, str]:
        return sign_request(self.signing_key, method, path, body, self.clock_ms(),
                            secrets.token_bytes(16), audience)

    async def _peer_key(self, client: httpx.AsyncClient, url: str) -> bytes:
        """The trusted key of the node at ``url``: it must sign a fresh challenge. Requests
        are then signed for that key only, so nobody can replay them to another node."""
        challenge = secrets.token_bytes(16)
        async with client.stream("GET", url + "/v1/sync/hello",
                                 params={"challenge": challenge.hex()}) as reply:
            reply.raise_for_status()
            body = bytearray()
            async for chunk in reply.aiter_bytes():  # unauthenticated: bounded
                body += chunk
                if len(body) > MAX_HELLO_BYTES:
                    raise SyncRefused("peer response too large")
        try:
            data = bounded_json.loads(body)
            key = bytes.fromhex(data["public_key"])
            VerifyKey(key).verify(HELLO_DOMAIN + challenge, bytes.fromhex(data["signature"]))
        except (KeyError, TypeError, ValueError, CryptoError):
            raise SyncRefused("the peer did not prove its key") from None
        if not self.peers.is_trusted(key):
            raise SyncForbidden("the node at that address is not trusted")
        return key

    async def sync_peer(self, client: httpx.AsyncClient, url: str) -> int:
        """Pull everything newer from one peer; returns receipts received (also counted
        in the peer's state batch by batch, so progress survives a deadline)."""
        progress = self.states.setdefault(url, PeerState(url))
        peer = progress.key = await self._peer_key(client, url)
        if self.on_peer is not None:
            await self.on_peer(client, url, peer)
        path = "/v1/sync/heads"
        heads = _parse_heads(await self._bounded_get(client, url, path, peer, MAX_HEADS_BYTES))
        received = 0
        for origin, size in heads:
            if origin == self.origin or not self.peers.is_trusted(origin) \
                    or self.replicas.is_frozen(origin):
                continue
            while (have := self.replicas.size(origin)) < size:
                latest = self.replicas.latest_checkpoint(origin)
                known = latest.checkpoint.size if latest else 0
                path = (f"/v1/sync/pull?origin={origin.hex()}&have={have}&known={known}"
                        f"&limit={MAX_BATCH_RECEIPTS}")
                body = await self._bounded_get(client, url, path, peer, MAX_BATCH_BYTES)
                added = await asyncio.to_thread(self.ingest, body)
                if self.replicas.size(origin) <= have:
                    break  # no progress: do not spin
                received += added
                progress.received += added
        return received

    async def push_peer(self, client: httpx.AsyncClient, url: str) -> int:
        """Push what the fleet manager at ``url`` lacks of the origins it accepts (this
        node's log and the trusted origins relayed here); returns receipts it stored (also
        counted in the fleet's state batch by batch)."""
        progress = self.states.setdefault(url, PeerState(url))
        fleet = progress.key = await self._peer_key(client, url)
        held = dict(_parse_heads(await self._bounded_get(client, url, "/v1/sync/heads", fleet,
                                                         MAX_HEADS_BYTES)))
        ours = [(self.origin, self.ledger.count())] + [
            (h.origin, h.checkpoint.checkpoint.size) for h in self.replicas.heads()
            if h.checkpoint and not h.frozen]
        stored = 0
        refused: list[str] = []
        for origin, size in ours:
            have = held.get(origin)
            while have is not None and have < size:
                batch = await asyncio.to_thread(self.make_batch, origin, have, have,
                                                MAX_BATCH_RECEIPTS, fresh=True)
                body = batch.encode()
                headers = self._signed("POST", "/v1/sync/push", fleet, body)
                reply = await client.post(url + "/v1/sync/push", content=body,
                                          headers={**headers, "Content-Type": MSGPACK})
                if reply.status_code in (400, 403, 409) and origin != self.origin:
                    # A relayed origin the fleet will not take now (frozen, or only old
                    # checkpoints of it held here): the other origins still go.
                    refused.append(origin.hex()[:16])
                    break
                reply.raise_for_status()
                added = int(reply.json()["stored"])
                stored += added
                progress.received += added
                have = batch.checkpoint.checkpoint.size
        if refused:
            logger.info("the fleet refused relayed receipts of %s", ", ".join(refused))
        return stored

    async def _bounded_get(self, client: httpx.AsyncClient, url: str, path: str,
                           audience: bytes, limit: int) -> bytes:
        """A signed GET whose body may not exceed ``limit`` bytes (read as a stream)."""
        headers = self._signed("GET", path, audience)
        async with client.stream("GET", url + path, headers=headers) as reply:
            reply.raise_for_status()
            body = bytearray()
            async for chunk in reply.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise SyncRefused("peer response too large")
        return bytes(body)

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
                                     action=self.push_peer)

    async def sync_round(self, urls: list[str], *, force: bool = False,
                         action: Callable[[httpx.AsyncClient, str], Awaitable[int]] | None
                         = None) -> dict[str, str]:
        """One round over every peer that is due (all with ``force``): ``parallel_peers``
        at a time, each within ``peer_deadline_s``, those that failed least first; per-peer
        exponential backoff after failures. ``action`` defaults to pulling."""
        action = action or self.sync_peer
        now = time.monotonic()
        due = [state for state in (self.states.setdefault(url, PeerState(url))
                                   for url in dict.fromkeys(urls))
               if force or now >= state.next_attempt]
        due.sort(key=lambda state: state.failures)  # stuck peers queue behind the others
        slots = asyncio.Semaphore(self.parallel_peers)
        # Building the client loads the CA bundle into an SSL context: 30-60 ms of CPU,
        # done off the loop.
        async with await asyncio.to_thread(httpx.AsyncClient, timeout=30) as client:
            outcomes = await asyncio.gather(*(self._exchange(client, state, action, slots)
                                              for state in due))
        return {state.url: outcome for state, outcome in zip(due, outcomes, strict=True)}

    async def _exchange(self, client: httpx.AsyncClient, state: PeerState,
                        action: Callable[[httpx.AsyncClient, str], Awaitable[int]],
                        slots: asyncio.Semaphore) -> str:
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
                state.failures, state.next_attempt = 0, 0.0
                state.last_error = cut_short
                return f"partial: {progress} new, {cut_short}"
        state.failures, state.next_attempt = 0, 0.0
        state.last_ok, state.last_error = time.time(), None
        return f"ok: {received} new"

    def _failed(self, state: PeerState, error: str) -> str:
        """Record a failed exchange and back off from that peer; returns it in words."""
        logger.info("sync with %s failed: %s", state.url, error)
        state.failures += 1
        state.failed_exchanges += 1
        state.last_error = error
        delay = min(MAX_BACKOFF_S, self.settings.sync_interval * 2 ** state.failures)
        state.next_attempt = time.monotonic() + delay
        return f"error: {error}"


EXCHANGE = web.AppKey("exchange", ExchangeService)
"""The node's receipt exchange: ``app[EXCHANGE]``."""
