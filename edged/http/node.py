"""The node's own endpoints: health, receipts, model management, blobs, node info."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from typing import Any

from aiohttp import web

from attribution.receipt import SignedReceipt
from edged.bindings import BINDINGS
from edged.datanets import DATANETS
from edged.errors import InvalidRequest, NotFound, NotReady
from edged.federation import FEDERATION
from edged.http.common import READY, int_query, json_response, read_json, receipt_leaf
from edged.inference import SERVICE
from edged.keys import NODE_KEYS
from edged.ledger import LEDGER
from edged.lineage import resolve_lineage
from edged.models import Manifest, Price, validate_digest, validate_name
from edged.predict import PREDICT
from edged.scheduler import SCHEDULER
from edged.schemas import parse_keep_alive
from edged.settings import SETTINGS

MAX_PAGE = 1000


def add_node_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/receipts", list_receipts)
    app.router.add_get("/v1/receipts/{id}", get_receipt)
    app.router.add_get("/api/models", list_models)
    app.router.add_post("/api/models", create_model)
    app.router.add_get("/api/models/{name}", show_model)
    app.router.add_delete("/api/models/{name}", remove_model)
    app.router.add_patch("/api/models/{name}", update_model)
    app.router.add_post("/api/models/{name}/load", load_model)
    app.router.add_post("/api/models/{name}/unload", unload_model)
    app.router.add_route("HEAD", "/api/blobs/{digest}", has_blob)
    app.router.add_put("/api/blobs/{digest}", upload_blob)
    app.router.add_get("/api/node", node_info)
    app.router.add_get("/api/config", show_config)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


# Why first-start work failed, if it did: the node then stays not ready, and says why.
STARTUP_FAILURES = web.AppKey("startup_failures", list[str])


async def readyz(request: web.Request) -> web.Response:
    if failures := request.app[STARTUP_FAILURES]:
        raise NotReady(f"{'; '.join(failures)}: see the log")
    if not request.app[READY].is_set():
        raise NotReady("starting up")
    return json_response({"status": "ready"})


def receipt_json(receipt: SignedReceipt) -> dict[str, Any]:
    return {**receipt.to_json(), "raw": base64.b64encode(receipt.raw).decode()}


async def get_receipt(request: web.Request) -> web.Response:
    leaf = receipt_leaf(request.match_info["id"])
    receipt = request.app[LEDGER].get(leaf)
    if receipt is None and (federation := request.app.get(FEDERATION)) is not None \
            and federation.enabled:  # a peer's receipt, e.g. of a request routed there
        receipt = await federation.fetch_receipt(leaf)
    if receipt is None:
        raise NotFound("no receipt with that id", param="id")
    return json_response(receipt_json(receipt))


async def list_receipts(request: web.Request) -> web.Response:
    after_seq = int_query(request, "after_seq", -1, -1, 2**63 - 1)
    limit = int_query(request, "limit", 100, 1, MAX_PAGE)
    receipts = request.app[LEDGER].page(after_seq, limit + 1)
    page = receipts[:limit]
    return json_response({
        "object": "list",
        "data": [receipt_json(r) for r in page],
        "has_more": len(receipts) > limit,
        "next_after_seq": page[-1].seq if page else after_seq,
    })


async def _model_view(request: web.Request, manifest: Manifest) -> dict[str, Any]:
    """The manifest, its digest, its load state and (tensor models) its examples binding:
    the attribution method, the layer used, and knn/1's fidelity warning."""
    binding = None
    if manifest.runtime == "onnx":  # off the loop: a stored binding reads the graph
        binding = await asyncio.to_thread(
            request.app[BINDINGS].describe, manifest,
            request.app[SERVICE].store.weights_path(manifest))
    loaded = {m.name: m for m in request.app[SCHEDULER].loaded()}
    state = loaded.get(manifest.name)
    return {**manifest.public_view(), "digest": manifest.digest().hex(),  # what receipts name
            "loaded": state is not None,
            "memory_bytes": state.memory_bytes if state else 0,
            "expires_at": state.expires_at if state else None,
            "slots": {"busy": state.active, "total": state.slots, "queued": state.queued}
            if state else None,
            # where it runs, as the backend reports it (never claimed, read back)
            "processor": state.details.get("processor") if state else None,
            # llama.cpp: layers on a GPU (of all offloadable), and the GPU memory the load took
            **{key: state.details.get(key) if state else None
               for key in ("gpu_layers", "layers", "device_memory_bytes")},
            # the execution providers the session really uses (never claimed, read back)
            "providers": state.details.get("providers") if state else None,
            "binding": binding}


async def list_models(request: web.Request) -> web.Response:
    manifests = request.app[SERVICE].store.list()
    return json_response({"models": [await _model_view(request, m) for m in manifests]})


async def show_model(request: web.Request) -> web.Response:
    manifest = request.app[SERVICE].store.get(request.match_info["name"])
    return json_response(await _model_view(request, manifest))


async def create_model(request: web.Request) -> web.Response:
    """Register a model whose weights were uploaded to /api/blobs first."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    manifest = Manifest(
        name=validate_name(body.get("name", "")),
        runtime=body.get("runtime") or "llama.cpp",
        weights=validate_digest(body.get("weights", "")),
        size=0,
        owner=body.get("owner") or "node:" + request.app[NODE_KEYS].public_key.hex(),
        price=_price(body.get("price")),
        chat_format=body.get("chat_format"),
        context_length=_int_field(body, "context_length", 2048),
        datanets=tuple(_string_list(body.get("datanets") or [], "datanets")),
        data_share_ppm=_int_field(body, "data_share_ppm", 0),
        unmatched_data_to=body.get("unmatched_data_to") or "owner",
        embedding_output=_optional_string(body, "embedding_output"),
        tokenizer=_tokenizer_digest(request, body.get("tokenizer")),
        options=_options(body.get("options")),
        federate=body.get("federate", True),
    )
    await _require_datanets(request, manifest.datanets)
    # Off the loop: registration reads the weights' header and tensor table.
    stored = await asyncio.to_thread(request.app[SERVICE].store.add, manifest,
                                     replace_existing=bool(body.get("replace")))
    return json_response(await _model_view(request, stored), status=201)


def _options(value: Any) -> dict[str, Any]:
    """A manifest's ``options`` object (its keys and values are checked with the manifest)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("'options' must be an object", param="options")
    return dict(value)


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    return value


def _tokenizer_digest(request: web.Request, value: Any) -> str | None:
    """The digest of an uploaded tokenizer.json blob, or None."""
    if value is None:
        return None
    try:
        digest = validate_digest(value)
    except InvalidRequest:
        raise InvalidRequest("'tokenizer' is sha256:<64 lowercase hex digits>",
                             param="tokenizer") from None
    if not request.app[SERVICE].store.has_blob(digest):
        raise InvalidRequest("no blob with the tokenizer's digest; upload it first",
                             param="tokenizer")
    return digest


def _price(value: Any) -> Price:
    if value is None:
        return Price()
    if not isinstance(value, dict):
        raise InvalidRequest("'price' must be an object", param="price")
    return Price.from_dict(value)


def _string_list(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"'{param}' must be a list of strings", param=param)
    return value


def _int_field(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be an integer", param=name)
    return value


async def _require_datanets(request: web.Request, names: tuple[str, ...]) -> None:
    for name in names:
        await asyncio.to_thread(request.app[DATANETS].get, name)  # DatanetNotFound: 404


UPDATABLE = {"owner", "price", "datanets", "data_share_ppm", "unmatched_data_to",
             "chat_format", "context_length", "max_batch_size", "batch_delay_us",
             "influence_layer", "label_names", "options", "lineage", "federate"}


async def update_model(request: web.Request) -> web.Response:
    """Change manifest fields (not the weights); the model reloads on next use."""
    body = await read_json(request)
    if not isinstance(body, dict) or not body:
        raise InvalidRequest("send an object with the fields to change")
    unknown = set(body) - UPDATABLE
    if unknown:
        raise InvalidRequest(f"cannot update {sorted(unknown)}; updatable: {sorted(UPDATABLE)}")
    store = request.app[SERVICE].store
    current = store.get(request.match_info["name"])
    changes: dict[str, Any] = dict(body)
    if "price" in changes:
        changes["price"] = _price(changes["price"])
    if "datanets" in changes:
        changes["datanets"] = tuple(_string_list(changes["datanets"], "datanets"))
        await _require_datanets(request, changes["datanets"])
    if "options" in changes:
        changes["options"] = _options(changes["options"])
    if "lineage" in changes:  # training datanets without a digest: pinned at their state now
        changes["lineage"] = await asyncio.to_thread(resolve_lineage, changes["lineage"],
                                                     request.app[DATANETS])
    if "label_names" in changes:
        changes["label_names"] = tuple(_string_list(changes["label_names"], "label_names"))
    for name in ("data_share_ppm", "context_length", "max_batch_size", "batch_delay_us"):
        if name in changes:
            changes[name] = _int_field(body, name, getattr(current, name))
    updated = store.add(dataclasses.replace(current, **changes), replace_existing=True)
    # Requests already running finish on the old load; the next one loads the new manifest.
    request.app[SCHEDULER].reload(updated.name)
    return json_response(await _model_view(request, updated))


async def remove_model(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    request.app[SERVICE].store.get(name)
    await request.app[SCHEDULER].unload(name)
    request.app[SERVICE].store.remove(name)
    return json_response({"deleted": name})


async def load_model(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await read_json(request)
    keep_alive = parse_keep_alive(body.get("keep_alive")) if isinstance(body, dict) else None
    request.app[SERVICE].store.get(name)
    await request.app[SCHEDULER].load(name, keep_alive=keep_alive)
    return json_response(await _model_view(request, request.app[SERVICE].store.get(name)))


async def unload_model(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    manifest = request.app[SERVICE].store.get(name)
    await request.app[SCHEDULER].unload(name)
    return json_response(await _model_view(request, manifest))


async def has_blob(request: web.Request) -> web.Response:
    if not request.app[SERVICE].store.has_blob(request.match_info["digest"]):
        raise NotFound("no such blob")
    return web.Response(status=200)


async def upload_blob(request: web.Request) -> web.Response:
    """Stream a weights file into the store; it is kept only if its SHA-256 matches.
    The file work (writes, hashing, fsync, rename) runs off the event loop."""
    store = request.app[SERVICE].store
    digest = validate_digest(request.match_info["digest"])
    if not await asyncio.to_thread(store.has_blob, digest):
        await store.receive_blob(digest, request.content.iter_chunked(1 << 20),
                                 max_bytes=request.app[SETTINGS].max_blob_bytes)
    return json_response({"digest": "sha256:" + digest}, status=201)


async def node_info(request: web.Request) -> web.Response:
    keys = request.app[NODE_KEYS]
    size, head = request.app[LEDGER].head()
    return json_response({"public_key": keys.public_key.hex(), "fingerprint": keys.fingerprint,
                          "receipts": size, "head": head.hex(),
                          **request.app[PREDICT].status()})


async def show_config(request: web.Request) -> web.Response:
    return json_response(request.app[SETTINGS].redacted())
