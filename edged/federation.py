"""Federated inference: serve a model this node does not hold by routing to a trusted peer.

Why one module of ~500 lines: advertising, routing and relay receipts are one protocol
over one peer set, HTTP session, signing key and in-flight count (the ``Federation``
object), and ``RelayStream`` is its streaming half, calling its routing; the
advertisement format is apart, in ``edged/federation_adverts.py``.

See DESIGN.md, "Federated inference". Three parts:

- **Advertisement.** A node answers the signed ``GET /v1/sync/models`` with the models it
  lets peers use (every model but those whose manifest sets ``federate: false``): name,
  runtime, digests, kinds, price and current load. The answer is itself signed by the
  node's key, names the caller as its audience and carries a timestamp, so the fetching
  node knows which trusted key it came from and that it is fresh. Each exchange round
  fetches it from every trusted peer it talks to (:meth:`Federation.refresh`).
- **Routing.** A chat or completion request for a model held by no local manifest goes
  to the least loaded trusted peer advertising it (free slots, queue, and the requests
  this node already routed there), with failover to the next one on a connection failure
  or a refusal before the first token, never after. The hop is a node-signed request
  (sync.auth: audience-bound, replay-protected) to ``/v1/sync/chat/completions`` or
  ``/v1/sync/completions``; streams pass through event by event, and closing the
  upstream response (the client went away) cancels the generation on the peer.
- **Receipts.** The peer writes its normal receipt; this node writes a ``relay`` receipt
  naming the peer's key and receipt id (in ``attr.params``' digest and the evidence), with
  its own keyed commitments of input and output and the ``relay_fee``.

The prompt crosses only to the peer that serves it; nothing of it is stored or logged
here (the text passes through memory to compute the output commitment).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from nacl.signing import SigningKey

from attribution import canonical
from attribution.commitments import commit, digest
from attribution.payees import PPM, Payee
from attribution.receipt import (
    AttributionRef,
    InvalidReceipt,
    ModelRef,
    ReceiptDraft,
    SignedReceipt,
    verify_receipt,
)
from edged import bounded_json
from edged.attributor import RELAY_METHOD
from edged.errors import EdgedError, NotReady
from edged.exchange.client import bounded_get
from edged.federation_adverts import (
    ADVERT_DOMAIN,
    AdvertError,
    RemoteModel,
    model_kinds,
    model_load,
    parse_advert,
)
from edged.http.sync_endpoint import SyncRefused
from edged.keys import NodeKeys
from edged.ledger import Ledger
from edged.manifest import Manifest
from edged.models import ModelStore
from edged.openai_requests import GenerateRequest
from edged.peers import PeerStore
from edged.scheduler import Scheduler
from edged.settings import Settings
from sync.auth import sign_request

logger = logging.getLogger(__name__)

MODELS_PATH = "/v1/sync/models"
RECEIPT_PATH = "/v1/sync/receipt"
GENERATE_PATHS = {"chat": "/v1/sync/chat/completions", "completion": "/v1/sync/completions"}
RELAY_KIND = "relay"
NODE_HEADER = "X-Edged-Node"
RECEIPT_HEADER = "X-Edged-Receipt"
MAX_ADVERT_BYTES = 1 << 20
MAX_ANSWER_BYTES = 16 << 20  # a whole (non-streamed) answer from a peer
MAX_RECEIPT_BYTES = 256 * 1024
UNKNOWN_RECEIPT = bytes(32)  # a relayed stream abandoned before the peer named its receipt
# Peer answers that send a request on to the next peer: busy, not ready, or refusing it
# (no longer trusting this node, no longer serving the model, federation off).
FAILOVER_STATUSES = frozenset({401, 403, 404, 429, 502, 503, 504})


class NoPeerAvailable(NotReady):
    """503: no trusted peer that serves the model could take the request now."""

    code = "no_peer_available"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


@dataclass
class RelayOutcome:
    """What one routed generation produced, as far as this node saw it."""

    peer: RemoteModel
    text: list[str] = field(default_factory=list)
    serving_receipt: bytes = UNKNOWN_RECEIPT
    relay_receipt: SignedReceipt | None = None


class Federation:
    """Advertises local models, keeps the trusted peers' advertisements, routes requests
    to peers, and writes relay receipts. One per node; ``enabled`` is the setting."""

    def __init__(self, *, settings: Settings, store: ModelStore, scheduler: Scheduler,
                 ledger: Ledger, keys: NodeKeys, peers: PeerStore,
                 clock_ms: Callable[[], int]) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.ledger = ledger
        self.keys = keys
        self.peers = peers
        self.clock_ms = clock_ms
        self.adverts: dict[bytes, list[RemoteModel]] = {}  # by peer key
        self.inflight: dict[bytes, int] = {}  # requests routed to each peer, running now
        self.session: aiohttp.ClientSession | None = None
        self.operator_id = settings.operator_id or "node:" + keys.public_key.hex()

    @property
    def enabled(self) -> bool:
        return self.settings.federation

    @property
    def signing_key(self) -> SigningKey:
        key: SigningKey = self.keys.signing_key
        return key

    @property
    def advert_ttl_s(self) -> float:
        """How long an advertisement is used: a few missed rounds, then it is dropped."""
        return max(30.0, 3 * self.settings.sync_interval)

    async def open(self) -> None:
        """The HTTP client for hops to peers (kept-alive connections: a hop adds little)."""
        timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5, sock_read=300)
        self.session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    # --- advertising ----------------------------------------------------------------

    def servable(self, name: str) -> Manifest | None:
        """The local manifest of ``name`` if peers may use it, else None."""
        try:
            manifest = self.store.get(name)
        except EdgedError:
            return None
        return manifest if manifest.federate else None

    def signed_advert(self, audience: bytes) -> dict[str, Any]:
        """This node's advertisement for the peer ``audience``, signed."""
        loaded = {m.name: m for m in self.scheduler.loaded()}
        models = []
        for manifest in self.store.list():
            if not manifest.federate:
                continue
            free, queued = model_load(manifest, loaded.get(manifest.name),
                                      self.settings.parallel)
            models.append({"name": manifest.name, "runtime": manifest.runtime,
                           "weights": manifest.weights, "manifest": manifest.digest().hex(),
                           "kinds": model_kinds(manifest), "owner": manifest.owner,
                           "price": {k: v for k, v in vars(manifest.price).items() if v},
                           "free_slots": free, "queued": queued})
        advert = {"v": 1, "node": self.keys.public_key.hex(), "aud": audience.hex(),
                  "ts": self.clock_ms(), "models": models}
        signature = self.signing_key.sign(ADVERT_DOMAIN + canonical.encode(advert)).signature
        return {"advert": advert, "signature": signature.hex()}

    async def refresh(self, client: httpx.AsyncClient, url: str, peer: bytes) -> None:
        """Fetch the advertisement of the trusted peer ``peer`` at ``url`` (called by the
        exchange round after the peer proved its key). A failure drops what was held of
        it and never fails the receipt exchange."""
        if not self.enabled:
            return
        try:
            headers = sign_request(self.signing_key, "GET", MODELS_PATH, b"", self.clock_ms(),
                                   secrets.token_bytes(16), peer)
            body = await bounded_get(client, url, MODELS_PATH, headers, MAX_ADVERT_BYTES)
            models = parse_advert(bounded_json.loads(body), node=peer,
                                  audience=self.keys.public_key, now_ms=self.clock_ms(),
                                  url=url, fetched=time.monotonic())
        except (httpx.HTTPError, SyncRefused, AdvertError, ValueError) as exc:
            logger.info("models of peer %s not fetched: %s", peer.hex()[:16],
                        exc.__class__.__name__)
            self.adverts.pop(peer, None)
            return
        self.adverts[peer] = models

    def remote_models(self) -> list[RemoteModel]:
        """Fresh advertisements of peers still trusted, of models not held here."""
        if not self.enabled:
            return []
        local = {manifest.name for manifest in self.store.list()}
        oldest = time.monotonic() - self.advert_ttl_s
        return [model for node, models in sorted(self.adverts.items())
                if self.peers.is_trusted(node)
                for model in models if model.fetched >= oldest and model.name not in local]

    def candidates(self, name: str, kind: str) -> list[RemoteModel]:
        """Peers serving ``name`` for ``kind``, least loaded first (ties in random order)."""
        found = [m for m in self.remote_models() if m.name == name and kind in m.kinds]
        random.shuffle(found)
        found.sort(key=lambda m: (m.queued + self.inflight.get(m.node, 0) - m.free_slots))
        return found

    def routes(self, name: str) -> bool:
        """Whether a request for ``name`` goes to a peer: federation is on and no local
        model has that name."""
        if not self.enabled:
            return False
        try:
            self.store.get(name)
        except EdgedError:
            return True
        return False

    # --- routing --------------------------------------------------------------------

    def _signed(self, method: str, path: str, peer: bytes, body: bytes = b"") -> dict[str, str]:
        return sign_request(self.signing_key, method, path, body, self.clock_ms(),
                            secrets.token_bytes(16), peer)

    async def _post(self, peer: RemoteModel, path: str,
                    body: bytes) -> aiohttp.ClientResponse | None:
        """POST a routed request; None when the peer cannot take it (failover)."""
        assert self.session is not None
        headers = {**self._signed("POST", path, peer.node, body),
                   "Content-Type": "application/json"}
        try:
            response = await self.session.post(peer.url + path, data=body, headers=headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.info("routing to %s failed: %s", peer.node.hex()[:16],
                        exc.__class__.__name__)
            return None
        if response.status in FAILOVER_STATUSES:
            logger.info("peer %s refused a routed request (%d)", peer.node.hex()[:16],
                        response.status)
            response.close()
            return None
        return response

    async def relay_whole(self, request: GenerateRequest,
                          body: bytes) -> tuple[int, bytes, RelayOutcome]:
        """Route a non-streamed request: ``(status, answer body, outcome)``. A peer's error
        other than a refusal (a 400 for a bad request) is handed back as it is."""
        for peer in self.candidates(request.model, request.kind):
            with self._routing(peer):
                response = await self._post(peer, GENERATE_PATHS[request.kind], body)
                if response is None:
                    continue
                async with response:
                    answer = await _read_bounded(response, MAX_ANSWER_BYTES)
                outcome = RelayOutcome(peer)
                if response.status == 200:
                    _collect_whole(answer, request.kind, outcome)
                    outcome.relay_receipt = await self.commit_relay(request, outcome)
                return response.status, answer, outcome
        raise self._unavailable(request.model)

    @staticmethod
    def _unavailable(name: str) -> NoPeerAvailable:
        return NoPeerAvailable(f"no trusted peer that serves {name!r} can take the request "
                               "now; try again shortly")

    def _routing(self, peer: RemoteModel) -> _InFlight:
        return _InFlight(self.inflight, peer.node)

    def relay_stream(self, request: GenerateRequest, body: bytes) -> RelayStream:
        """An async context manager routing a streamed request (see :class:`RelayStream`)."""
        return RelayStream(self, request, body)

    async def commit_relay(self, request: GenerateRequest,
                           outcome: RelayOutcome) -> SignedReceipt:
        """Write this node's relay receipt for ``outcome`` (shielded: a routed generation
        gets its receipt even when the client has gone away)."""
        return await asyncio.shield(self._append_relay(request, outcome))

    async def _append_relay(self, request: GenerateRequest,
                            outcome: RelayOutcome) -> SignedReceipt:
        usage = (0, 0)
        if outcome.serving_receipt != UNKNOWN_RECEIPT:
            serving = await self.fetch_receipt_from(outcome.peer.url, outcome.peer.node,
                                                    outcome.serving_receipt)
            if serving is not None:
                usage = (serving.fields["usage"]["in"], serving.fields["usage"]["out"])
        # Hex text, like every evidence: the JSON view at /v1/receipts/{id}/evidence shows it.
        link = {"node": outcome.peer.node.hex(), "receipt": outcome.serving_receipt.hex()}
        evidence = canonical.encode(link)
        draft = ReceiptDraft(
            ts=self.clock_ms(),
            model=ModelRef(outcome.peer.name, outcome.peer.weights, outcome.peer.manifest),
            kind=RELAY_KIND,
            input_commitment=commit(self.keys.commitment_key, request.committed_input()),
            output_commitment=commit(self.keys.commitment_key, {"text": "".join(outcome.text)}),
            input_units=usage[0], output_units=usage[1], fee=self.settings.relay_fee,
            payees=(Payee(self.operator_id, "operator", PPM),),
            attr=AttributionRef(RELAY_METHOD, digest(link), digest(link)))
        return await self.ledger.append(draft, evidence)

    # --- receipts held by peers -----------------------------------------------------

    async def fetch_receipt_from(self, url: str, node: bytes,
                                 receipt_id: bytes) -> SignedReceipt | None:
        """The receipt ``receipt_id`` of the peer ``node``, verified (its signature, its
        node, its id); None when the peer does not have it or cannot be reached."""
        assert self.session is not None
        path = f"{RECEIPT_PATH}?id={receipt_id.hex()}"
        try:
            async with self.session.get(url + path,
                                        headers=self._signed("GET", path, node)) as response:
                if response.status != 200:
                    return None
                answer = bounded_json.loads(await _read_bounded(response, MAX_RECEIPT_BYTES))
            receipt = verify_receipt(base64.b64decode(answer["raw"], validate=True))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError,
                binascii.Error, InvalidReceipt):
            return None
        if receipt.node != node or receipt.leaf != receipt_id:
            return None
        return receipt

    async def fetch_receipt(self, receipt_id: bytes) -> SignedReceipt | None:
        """A receipt of any trusted peer this node knows an address of (asked at once)."""
        peers = {m.node: m.url for m in self.remote_models()}
        if not peers:
            return None
        found = await asyncio.gather(*(self.fetch_receipt_from(url, node, receipt_id)
                                       for node, url in peers.items()))
        return next((receipt for receipt in found if receipt is not None), None)


class _InFlight:
    """Counts a request routed to a peer while it runs (the load it adds there)."""

    def __init__(self, counts: dict[bytes, int], node: bytes) -> None:
        self.counts, self.node = counts, node

    def __enter__(self) -> None:
        self.counts[self.node] = self.counts.get(self.node, 0) + 1

    def __exit__(self, *exc_info: object) -> None:
        self.counts[self.node] -= 1


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise ValueError("peer answer too large")
    return bytes(body)


def _collect_whole(answer: bytes, kind: str, outcome: RelayOutcome) -> None:
    """The text and the serving receipt id of a whole answer."""
    try:
        data = json.loads(answer)
        choice = data["choices"][0]
        text = choice["message"].get("content") if kind == "chat" else choice["text"]
        outcome.text.append(text or "")
        outcome.serving_receipt = bytes.fromhex(data["receipt"]["id"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        outcome.serving_receipt = UNKNOWN_RECEIPT


class RelayStream:
    """One routed stream: ``async with federation.relay_stream(req, body) as relay:``
    then ``async for payload in relay`` (each SSE event's data, ``[DONE]`` left out).

    Entering picks the peer and waits for its first event, failing over before it;
    raises :class:`NoPeerAvailable` when no peer could take it, or
    :class:`UpstreamError` carrying a peer's own error answer. Leaving closes the
    upstream response (cancelling the generation on the peer if it was not done) and
    writes the relay receipt; ``relay.outcome`` then holds it.
    """

    def __init__(self, federation: Federation, request: GenerateRequest, body: bytes) -> None:
        self.federation = federation
        self.request = request
        self.body = body
        self.outcome: RelayOutcome | None = None
        self._response: aiohttp.ClientResponse | None = None
        self._first: bytes | None = None
        self._inflight: _InFlight | None = None

    async def __aenter__(self) -> RelayStream:
        path = GENERATE_PATHS[self.request.kind]
        for peer in self.federation.candidates(self.request.model, self.request.kind):
            response = await self.federation._post(peer, path, self.body)
            if response is None:
                continue
            if response.status != 200:
                async with response:
                    answer = await _read_bounded(response, MAX_ANSWER_BYTES)
                raise UpstreamError(response.status, answer, response.headers)
            try:
                first = await _next_event(response)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                response.close()  # nothing was handed out yet: the next peer may serve it
                continue
            self._response, self._first = response, first
            self.outcome = RelayOutcome(peer)
            self._inflight = self.federation._routing(peer)
            self._inflight.__enter__()
            return self
        raise self.federation._unavailable(self.request.model)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        assert self._response is not None and self.outcome is not None
        payload = self._first
        while payload is not None and payload != b"[DONE]":
            _collect_chunk(payload, self.request.kind, self.outcome)
            yield payload
            try:
                payload = await _next_event(self._response)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                raise RelayBroken(exc.__class__.__name__) from None  # ValueError: line too long
        if payload is None:
            raise RelayBroken("the stream ended without [DONE]")

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._response is not None and self.outcome is not None
        self._response.close()  # mid-stream this drops the connection: the peer cancels
        if self._inflight is not None:
            self._inflight.__exit__()
        self.outcome.relay_receipt = await self.federation.commit_relay(self.request,
                                                                        self.outcome)


class RelayBroken(Exception):
    """The serving peer's stream broke after output was handed out (never re-routed)."""


class UpstreamError(Exception):
    """A peer answered a routed request with an error that is the client's to see."""

    def __init__(self, status: int, body: bytes, headers: Any) -> None:
        super().__init__(status)
        self.status, self.body = status, body
        self.content_type = headers.get("Content-Type", "application/json")


async def _next_event(response: aiohttp.ClientResponse) -> bytes | None:
    """The data of the next SSE event (None at the end of the body)."""
    async for line in response.content:
        if line.startswith(b"data: "):
            return line[6:].rstrip(b"\r\n")
    return None


def _collect_chunk(payload: bytes, kind: str, outcome: RelayOutcome) -> None:
    """Take one chunk's text and, on the last, the serving receipt id."""
    try:
        chunk = json.loads(payload)
    except ValueError:
        return
    if not isinstance(chunk, dict):
        return
    for choice in chunk.get("choices") or ():
        text = choice.get("delta", {}).get("content") if kind == "chat" else choice.get("text")
        if isinstance(text, str):
            outcome.text.append(text)
    receipt = chunk.get("receipt")
    if isinstance(receipt, dict) and isinstance(receipt.get("id"), str):
        with contextlib.suppress(ValueError):
            outcome.serving_receipt = bytes.fromhex(receipt["id"])


FEDERATION = web.AppKey("federation", Federation)
"""Routing to trusted peers' models: ``app[FEDERATION]``."""
