"""Model advertisements of federated inference: what a node tells its trusted peers it
serves, and the checks on what a peer told (see edged.federation and DESIGN.md).

An advertisement is ``{advert, signature}``: ``advert`` is the canonical map ``{v: 1,
node, aud, ts, models}`` signed by ``node`` under :data:`ADVERT_DOMAIN`; ``aud`` names the
node it was made for and ``ts`` bounds how long it may be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from attribution import canonical
from edged.manifest import Manifest
from edged.scheduler import LoadedModel

ADVERT_DOMAIN = b"edged/models/v1\0"
ADVERT_WINDOW_MS = 30_000  # an advertisement older (or newer) than this is refused
MAX_ADVERTISED_MODELS = 1000


class AdvertError(ValueError):
    """A peer's model advertisement is malformed, unsigned, stale or not for this node."""


def model_kinds(manifest: Manifest) -> list[str]:
    """What a model serves, by OpenAI endpoint kind."""
    if manifest.runtime == "onnx":
        return ["embedding"] if manifest.embedding_output or manifest.tokenizer else ["predict"]
    kinds = ["completion"]
    if manifest.chat_format != "none":
        kinds.insert(0, "chat")
    return kinds


def model_load(manifest: Manifest, loaded: LoadedModel | None,
               default_parallel: int) -> tuple[int, int]:
    """``(free slots, queued requests)`` of one model now; a model not loaded has every
    slot its load would have free."""
    if loaded is not None:
        return max(0, loaded.slots - loaded.active), loaded.queued
    if manifest.runtime == "llama.cpp":
        return int(manifest.options.get("parallel", default_parallel)), 0
    return 1, 0


@dataclass(frozen=True)
class RemoteModel:
    """One model a trusted peer advertised, with the load it reported."""

    node: bytes
    url: str
    name: str
    runtime: str
    weights: bytes
    manifest: bytes
    kinds: tuple[str, ...]
    owner: str
    price: dict[str, int]
    free_slots: int
    queued: int
    fetched: float  # time.monotonic() of the fetch

    def to_openai(self) -> dict[str, Any]:
        """The model object ``GET /v1/models`` lists for it (OpenAI's fields plus ours)."""
        return {"id": self.name, "object": "model", "created": 0, "owned_by": self.owner,
                "remote": True, "node": self.node.hex(), "runtime": self.runtime,
                "kinds": list(self.kinds), "weights": "sha256:" + self.weights.hex(),
                "manifest_digest": "sha256:" + self.manifest.hex(), "price": self.price,
                "free_slots": self.free_slots, "queued": self.queued}


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise AdvertError("a count is a non-negative integer")
    return value


def _hash(value: Any) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise AdvertError("a digest is 64 hex digits")
    return raw


def parse_advert(answer: Any, *, node: bytes, audience: bytes, now_ms: int, url: str,
                 fetched: float) -> list[RemoteModel]:
    """The models of a signed advertisement, checked: signed by ``node``, for ``audience``
    (this node), timestamped within :data:`ADVERT_WINDOW_MS` of ``now_ms``, well formed."""
    try:
        advert, signature = answer["advert"], bytes.fromhex(answer["signature"])
        signed = ADVERT_DOMAIN + canonical.encode(advert)
        VerifyKey(node).verify(signed, signature)
    except (KeyError, TypeError, ValueError, CryptoError, canonical.CanonicalError):
        raise AdvertError("the advertisement is not signed by the peer's key") from None
    if not isinstance(advert, dict) or advert.get("v") != 1 or advert.get("node") != node.hex() \
            or advert.get("aud") != audience.hex():
        raise AdvertError("the advertisement is for another node")
    if abs(now_ms - _count(advert.get("ts"))) > ADVERT_WINDOW_MS:
        raise AdvertError("stale advertisement")
    models = advert.get("models")
    if not isinstance(models, list) or len(models) > MAX_ADVERTISED_MODELS:
        raise AdvertError("malformed model list")
    parsed = []
    for item in models:
        if not isinstance(item, dict):
            raise AdvertError("malformed model")
        name, runtime, owner = item.get("name"), item.get("runtime"), item.get("owner")
        kinds, price = item.get("kinds"), item.get("price")
        if not all(isinstance(v, str) and 0 < len(v) <= 256 for v in (name, runtime, owner)) \
                or not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds) \
                or not isinstance(price, dict) or not all(isinstance(k, str) for k in price):
            raise AdvertError("malformed model")
        parsed.append(RemoteModel(
            node=node, url=url, name=str(name), runtime=str(runtime),
            weights=_hash(item.get("weights")), manifest=_hash(item.get("manifest")),
            kinds=tuple(kinds), owner=str(owner),
            price={k: _count(v) for k, v in price.items()},
            free_slots=_count(item.get("free_slots")), queued=_count(item.get("queued")),
            fetched=fetched))
    return parsed
