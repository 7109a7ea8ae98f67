"""The Open Inference Protocol v2 (KServe / Triton) over REST, JSON tensors.

Errors on these paths use that protocol's shape ``{"error": "message"}`` (see
edged.http.common). Binary tensor data (the protocol's binary extension) is not supported:
clients send JSON data (``binary_data=False`` in tritonclient).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from aiohttp import web
from pydantic import Field

from edged.bindings import BINDINGS, LAYER_FOUND
from edged.errors import InvalidRequest, ModelNotFound
from edged.example_files import parse_examples
from edged.http.common import READY, accepts, json_response, read_body
from edged.http.openai import RECEIPT_HEADER, receipt_ref
from edged.inference import SERVICE
from edged.manifest import Manifest
from edged.predict import PREDICT
from edged.scheduler import SCHEDULER
from edged.schema import Body, Query, ignored
from edged.settings import SETTINGS

# OIP datatype <-> numpy dtype
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16,
             "INT32": np.int32, "INT64": np.int64, "FP16": np.float16, "FP32": np.float32,
             "FP64": np.float64}
NUMPY_TO_DATATYPE = {np.dtype(v).name: k for k, v in DATATYPES.items()}
MAX_ELEMENTS = 1 << 24
# The JSON value types each datatype accepts (bool is not an int here, nor a float).
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    datatype: (bool,) if datatype == "BOOL" else (int,) if "INT" in datatype else (int, float)
    for datatype in DATATYPES}


def add_v2_routes(app: web.Application) -> None:
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_post(prefix + "/infer", infer)
    app.router.add_put("/api/models/{name}/examples", bind_examples)
    # The receipt audit recomputes influence/1 splits too; registered with these routes
    # until create_app (edged/app.py) adds it itself.


async def server_metadata(request: web.Request) -> web.Response:
    return json_response({"name": "edged", "version": "0.1.0", "extensions": []})


async def live(request: web.Request) -> web.Response:
    return json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    is_ready = request.app[READY].is_set()
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


def _tensor_model(request: web.Request) -> Manifest:
    manifest = request.app[SERVICE].store.get(request.match_info["name"])
    if manifest.runtime != "onnx":
        raise ModelNotFound(f"model {manifest.name!r} is not a tensor model", param="model")
    version = request.match_info.get("version")
    if version not in (None, "1"):
        raise ModelNotFound(f"model {manifest.name!r} has no version {version!r}",
                            param="version")
    return manifest


async def model_metadata(request: web.Request) -> web.Response:
    manifest = _tensor_model(request)
    return json_response({"name": manifest.name, "versions": ["1"],
                          "platform": "onnxruntime_onnx",
                          "inputs": list(manifest.inputs), "outputs": list(manifest.outputs)})


async def model_ready(request: web.Request) -> web.Response:
    manifest = _tensor_model(request)
    loaded = any(m.name == manifest.name for m in request.app[SCHEDULER].loaded())
    return json_response({"name": manifest.name, "ready": True, "loaded": loaded})


Datatype = Literal["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
# The protocol's "parameters" objects: tritonclient sends some (binary_data: false).
Parameters = Annotated[dict[str, Any] | None, ignored("edged reads no protocol parameters")]


class Tensor(Body):
    """One JSON input tensor."""

    name: Annotated[str, Field(min_length=1)]
    shape: list[Annotated[int, Field(ge=0, le=MAX_ELEMENTS)]]
    datatype: Datatype
    # Nested lists of JSON values: their count and types depend on shape and datatype,
    # which a type cannot say; decode_tensor checks them.
    data: list[Any]
    parameters: Parameters = None


class RequestedOutput(Body):
    name: str
    parameters: Parameters = None


class InferRequest(Body):
    endpoint: ClassVar[str] = "/v2/models/{name}/infer"
    id: str | None = None
    inputs: Annotated[list[Tensor], Field(min_length=1)]
    outputs: list[RequestedOutput] | None = None
    parameters: Parameters = None


def decode_tensor(spec: Tensor, index: int) -> tuple[str, np.ndarray]:
    """One input tensor's data as an array: a 400 naming the tensor unless its data holds
    exactly ``shape``'s elements, each a JSON value of ``datatype`` that fits it."""
    param = f"inputs[{index}]"
    shape, datatype, data = spec.shape, spec.datatype, spec.data
    size = math.prod(shape)
    if size > MAX_ELEMENTS:
        raise InvalidRequest(f"{param} has more than {MAX_ELEMENTS} elements", param=param)
    try:  # nested lists of uneven lengths are refused here or by the element check below
        flat = np.asarray(data, dtype=object).ravel()
    except ValueError:
        flat = None
    if flat is None or flat.size != size:
        raise InvalidRequest(f"{param}.data must hold {size} values", param=param)
    element_types = _JSON_TYPES[datatype]
    if not all(type(value) in element_types for value in flat.tolist()):
        raise InvalidRequest(f"{param}.data holds values that are not {datatype}", param=param)
    try:
        with np.errstate(over="raise", invalid="raise"):  # 1e300 does not fit FP32
            array: np.ndarray = flat.astype(DATATYPES[datatype]).reshape(shape)
    except (TypeError, ValueError, OverflowError, FloatingPointError):
        raise InvalidRequest(f"{param}.data does not fit {datatype}", param=param) from None
    return spec.name, array


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = NUMPY_TO_DATATYPE.get(array.dtype.name)
    if datatype is None:
        raise InvalidRequest(f"output {name!r} has an unsupported type")
    data = array.ravel().tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


@accepts(body=InferRequest)
async def infer(request: web.Request, *, body: InferRequest) -> web.Response:
    manifest = _tensor_model(request)
    inputs = dict(decode_tensor(spec, i) for i, spec in enumerate(body.inputs))
    if len(inputs) != len(body.inputs):
        raise InvalidRequest("an input is given twice", param="inputs")
    wanted: list[str] | None = None
    if body.outputs is not None:
        wanted = [o.name for o in body.outputs]
        known = {str(o.get("name")) for o in manifest.outputs}
        missing = [name for name in wanted if name not in known]
        if missing:  # checked before running: a refused request writes no receipt
            raise InvalidRequest(f"unknown outputs {missing}", param="outputs")
    prediction = await request.app[PREDICT].predict(manifest.name, inputs)
    outputs = prediction.outputs
    if wanted is not None:
        outputs = {name: outputs[name] for name in wanted if name in outputs}
    response: dict[str, Any] = {
        "model_name": manifest.name, "model_version": "1",
        "outputs": [encode_tensor(name, array) for name, array in outputs.items()],
        "parameters": {"receipt_id": prediction.receipt.leaf.hex(),
                       "receipt_seq": prediction.receipt.seq},
        "receipt": receipt_ref(prediction.receipt),
    }
    if body.id is not None:
        response["id"] = body.id
    return json_response(response, headers={RECEIPT_HEADER: prediction.receipt.leaf.hex()})


class ExamplesQuery(Query):
    method: Literal["influence", "knn"] = "influence"  # edged.bindings.BIND_METHODS
    format: Literal["npz", "csv"] = "npz"


@accepts(query=ExamplesQuery)
async def bind_examples(request: web.Request, *, query: ExamplesQuery) -> web.Response:
    """Bind tabular contributor examples (``?format=npz|csv``) for ``influence/1``, or
    for ``knn/1`` when the owner opts in with ``?method=knn``. The answer names the
    method, the layer used and, for ``knn/1``, its fidelity warning."""
    manifest = _tensor_model(request)
    limit = request.app[SETTINGS].max_datanet_upload_bytes
    data = await read_body(request, limit, "the examples exceed max_datanet_upload_bytes")
    examples = await asyncio.to_thread(parse_examples, data, query.format)
    weights = request.app[SERVICE].store.weights_path(manifest)
    binding = await asyncio.to_thread(request.app[BINDINGS].bind, manifest, weights, examples,
                                      method=query.method)
    if binding.layer is not None and binding.layer.source == LAYER_FOUND \
            and manifest.influence_layer != binding.layer.describe():
        # The manifest records the layer edged found, so every receipt's manifest digest
        # names it; the model reloads with it.
        recorded = dataclasses.replace(manifest, influence_layer=binding.layer.describe())
        await asyncio.to_thread(request.app[SERVICE].store.add, recorded,
                                replace_existing=True)
        request.app[SCHEDULER].reload(manifest.name)
    return json_response({"model": manifest.name, **binding.describe(),
                          "examples": len(examples.contributors),
                          "contributors": len(set(examples.contributors))}, status=201)
