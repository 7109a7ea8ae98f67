"""The client side of the sync protocol: proving a peer's key (hello), pulling what a
peer holds that this node lacks, and pushing to the fleet manager what it lacks."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeAlias

import httpx
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from pydantic import BaseModel, ConfigDict, Field

from edged import bounded_json
from edged.exchange.server import ExchangeServer
from edged.exchange.status import PeerStatus
from edged.http.sync_endpoint import HELLO_DOMAIN, MSGPACK, SyncForbidden, SyncRefused
from sync.auth import sign_request
from sync.batch import MAX_BATCH_BYTES, MAX_BATCH_RECEIPTS

logger = logging.getLogger(__name__)
MAX_HEADS = 10_000
MAX_HEADS_BYTES = 2 * 1024 * 1024
MAX_HELLO_BYTES = 4096

PeerHook: TypeAlias = Callable[[httpx.AsyncClient, str, bytes], Awaitable[None]]


class PeerHead(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)
    origin: Annotated[str, Field(pattern="^[0-9a-fA-F]{64}$")]
    size: Annotated[int, Field(ge=0)]


class PeerHeads(BaseModel):
    """A peer's ``GET /v1/sync/heads`` answer, declared (fields a newer peer adds are
    ignored)."""

    model_config = ConfigDict(strict=True, frozen=True)
    heads: Annotated[list[PeerHead], Field(max_length=MAX_HEADS)]


def parse_heads(body: bytes) -> list[tuple[bytes, int]]:
    """A peer's heads, strictly: a bounded list of {origin: 64 hex, size: int >= 0}."""
    try:
        answer = PeerHeads.model_validate(bounded_json.loads(body))
    except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
        raise SyncRefused("malformed heads") from None
    return [(bytes.fromhex(head.origin), head.size) for head in answer.heads]


class ExchangeClient:
    """Pulls from peers into ``server`` and pushes from it to the fleet manager, counting
    the receipts moved in ``status`` batch by batch (so progress survives a deadline)."""

    def __init__(self, *, server: ExchangeServer, status: PeerStatus, signing_key: Any,
                 clock_ms: Callable[[], int], on_peer: PeerHook | None = None) -> None:
        self.server = server
        self.status = status
        self.signing_key = signing_key  # nacl SigningKey
        self.clock_ms = clock_ms
        # Called with (client, url, key) once a peer proved its trusted key in a pull round
        # (federation fetches its model advertisement); must not raise.
        self.on_peer = on_peer

    async def sync_peer(self, client: httpx.AsyncClient, url: str) -> int:
        """Pull everything newer from one peer; returns receipts received (also counted
        in the peer's state batch by batch, so progress survives a deadline)."""
        replicas, peers = self.server.replicas, self.server.peers
        progress = self.status.state(url)
        peer = progress.key = await self._peer_key(client, url)
        if self.on_peer is not None:
            await self.on_peer(client, url, peer)
        path = "/v1/sync/heads"
        heads = parse_heads(await self._bounded_get(client, url, path, peer, MAX_HEADS_BYTES))
        received = 0
        for origin, size in heads:
            if origin == self.server.origin or not peers.is_trusted(origin) \
                    or replicas.is_frozen(origin):
                continue
            while (have := replicas.size(origin)) < size:
                latest = replicas.latest_checkpoint(origin)
                known = latest.checkpoint.size if latest else 0
                path = (f"/v1/sync/pull?origin={origin.hex()}&have={have}&known={known}"
                        f"&limit={MAX_BATCH_RECEIPTS}")
                body = await self._bounded_get(client, url, path, peer, MAX_BATCH_BYTES)
                added = await asyncio.to_thread(self.server.ingest, body)
                if replicas.size(origin) <= have:
                    break  # no progress: do not spin
                received += added
                progress.received += added
        return received

    async def push_peer(self, client: httpx.AsyncClient, url: str) -> int:
        """Push what the fleet manager at ``url`` lacks of the origins it accepts (this
        node's log and the trusted origins relayed here); returns receipts it stored (also
        counted in the fleet's state batch by batch)."""
        progress = self.status.state(url)
        fleet = progress.key = await self._peer_key(client, url)
        held = dict(parse_heads(await self._bounded_get(client, url, "/v1/sync/heads", fleet,
                                                        MAX_HEADS_BYTES)))
        own = self.server.origin
        stored = 0
        refused: list[str] = []
        for origin, size in self.server.sizes_held():
            have = held.get(origin)
            while have is not None and have < size:
                batch = await asyncio.to_thread(self.server.make_batch, origin, have, have,
                                                MAX_BATCH_RECEIPTS, fresh=True)
                body = batch.encode()
                headers = self._signed("POST", "/v1/sync/push", fleet, body)
                reply = await client.post(url + "/v1/sync/push", content=body,
                                          headers={**headers, "Content-Type": MSGPACK})
                if reply.status_code in (400, 403, 409) and origin != own:
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
        if not self.server.peers.is_trusted(key):
            raise SyncForbidden("the node at that address is not trusted")
        return key

    async def _bounded_get(self, client: httpx.AsyncClient, url: str, path: str,
                           audience: bytes, limit: int) -> bytes:
        return await bounded_get(client, url, path, self._signed("GET", path, audience), limit)


async def bounded_get(client: httpx.AsyncClient, url: str, path: str,
                      headers: dict[str, str], limit: int) -> bytes:
    """A (signed) GET of a peer whose body may not exceed ``limit`` bytes, read as a
    stream so a peer cannot make this node buffer more; :class:`SyncRefused` beyond it."""
    async with client.stream("GET", url + path, headers=headers) as reply:
        reply.raise_for_status()
        body = bytearray()
        async for chunk in reply.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise SyncRefused("peer response too large")
    return bytes(body)

