"""The node's own endpoints: health, receipts, model management, blobs, node info."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from typing import Annotated, Any, ClassVar

from aiohttp import web
from pydantic import Field, model_validator

from attribution.receipt import SignedReceipt
from edged.bindings import BINDINGS
from edged.datanets import DATANETS
from edged.errors import InvalidRequest, NotFound, NotReady
from edged.federation import FEDERATION
from edged.http.common import READY, accepts, json_response, receipt_leaf
from edged.inference import SERVICE
from edged.keys import NODE_KEYS
from edged.ledger import LEDGER
from edged.lineage import resolve_lineage
from edged.manifest import (
    BatchDelayUs,
    ChatFormat,
    ContextLength,
    Datanets,
    DataSharePpm,
    Declared,
    Digest,
    EmbeddingOutput,
    LabelNames,
    Layer,
    LineageRequest,
    Manifest,
    MaxBatchSize,
    Name,
    Options,
    Owner,
    Price,
    Runtime,
    UnmatchedDataTo,
    validate_digest,
)
from edged.openai_requests import KeepAlive, parse_keep_alive
from edged.predict import PREDICT
from edged.scheduler import SCHEDULER
from edged.schema import Body, Query, invalid, param_name
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


class ReceiptsPage(Query):
    after_seq: Annotated[int, Field(ge=-1, le=2**63 - 1)] = -1  # the page starts after it
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 100


@accepts(query=ReceiptsPage)
async def list_receipts(request: web.Request, *, query: ReceiptsPage) -> web.Response:
    after_seq, limit = query.after_seq, query.limit
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


# The default of a field a request may leave out but not send as null: typed Any so that
# a field whose type refuses null can default to it (pydantic does not validate defaults),
# and left out of the document, where null would not be a valid value.
def _undocumented_default(schema: dict[str, Any]) -> None:
    del schema["default"]


ABSENT: Any = Field(default=None, json_schema_extra=_undocumented_default)


class CreateModel(Body):
    """A model to register; a field left out (or, but for ``federate``, null) takes the
    manifest's default (the runtime llama.cpp, and this node as the owner)."""

    endpoint: ClassVar[str] = "POST /api/models"
    name: Name
    weights: Digest
    runtime: Runtime | None = None
    owner: Owner | None = None
    price: Price | None = None
    chat_format: ChatFormat | None = None
    context_length: ContextLength | None = None
    datanets: Datanets | None = None
    data_share_ppm: DataSharePpm | None = None
    unmatched_data_to: UnmatchedDataTo | None = None
    embedding_output: EmbeddingOutput | None = None
    tokenizer: Digest | None = None  # an uploaded tokenizer.json (ONNX text embedders)
    options: Options | None = None
    federate: bool = True  # offered to federated peers; true or false, never null
    replace: bool | None = None  # replace a model of the same name


@accepts(body=CreateModel)
async def create_model(request: web.Request, *, body: CreateModel) -> web.Response:
    """Register a model whose weights were uploaded to /api/blobs first."""
    given = {name: value for name, value in body if value is not None and name != "replace"}
    given.setdefault("runtime", "llama.cpp")
    given.setdefault("owner", "node:" + request.app[NODE_KEYS].public_key.hex())
    manifest = Manifest(size=0, **given)
    await _require_datanets(request, manifest.datanets)
    # Off the loop: registration reads the weights' header and tensor table.
    stored = await asyncio.to_thread(request.app[SERVICE].store.add, manifest,
                                     replace_existing=bool(body.replace))
    return json_response(await _model_view(request, stored), status=201)


async def _require_datanets(request: web.Request, names: tuple[str, ...]) -> None:
    for name in names:
        await asyncio.to_thread(request.app[DATANETS].get, name)  # DatanetNotFound: 404


class UpdateModel(Body):
    """The manifest fields to change (not the weights); a field left out is unchanged.
    null clears chat_format, influence_layer, options, lineage and price, and leaves the
    integer fields as they are."""

    endpoint: ClassVar[str] = "PATCH /api/models/{name}"
    owner: Owner = ABSENT
    price: Price | None = None
    datanets: Datanets = ABSENT
    data_share_ppm: DataSharePpm | None = None
    unmatched_data_to: UnmatchedDataTo = ABSENT
    chat_format: ChatFormat | None = None
    context_length: ContextLength | None = None
    max_batch_size: MaxBatchSize | None = None
    batch_delay_us: BatchDelayUs | None = None
    influence_layer: Layer | None = None
    label_names: LabelNames = ABSENT
    options: Options | None = None
    # training datanets without a state digest are pinned at their state now
    lineage: Annotated[dict[str, Any], Declared(LineageRequest)] | None = None
    federate: bool = ABSENT

    @model_validator(mode="before")
    @classmethod
    def _updatable(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if not data:
                raise invalid("send an object with the fields to change")
            if unknown := [name for name in data if name not in UPDATABLE]:
                shown = param_name((unknown[0],), data)  # cut when long
                raise InvalidRequest(f"cannot update '{shown}'; updatable: {sorted(UPDATABLE)}",
                                     param=shown)
        return data


UPDATABLE = frozenset(UpdateModel.model_fields)
UNCHANGED_BY_NULL = ("data_share_ppm", "context_length", "max_batch_size", "batch_delay_us")


@accepts(body=UpdateModel)
async def update_model(request: web.Request, *, body: UpdateModel) -> web.Response:
    """Change manifest fields (not the weights); the model reloads on next use."""
    store = request.app[SERVICE].store
    current = store.get(request.match_info["name"])
    changes: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set
                               if not (name in UNCHANGED_BY_NULL and getattr(body, name) is None)}
    if "price" in changes:
        changes["price"] = changes["price"] or Price()
    if "options" in changes:
        changes["options"] = changes["options"] or {}
    if "datanets" in changes:
        await _require_datanets(request, changes["datanets"])
    if "lineage" in changes:  # training datanets without a digest: pinned at their state now
        changes["lineage"] = await asyncio.to_thread(resolve_lineage, changes["lineage"],
                                                     request.app[DATANETS])
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


class LoadModel(Body):
    endpoint: ClassVar[str] = "POST /api/models/{name}/load"
    keep_alive: KeepAlive | None = None  # how long the model stays loaded (else the setting)


@accepts(body=LoadModel)
async def load_model(request: web.Request, *, body: LoadModel) -> web.Response:
    """Load a model now, optionally for ``keep_alive``."""
    name = request.match_info["name"]
    keep_alive = parse_keep_alive(body.keep_alive)
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
