"""The Open Inference Protocol v2 on a tiny ONNX classifier: metadata, inference,
dynamic batching, receipts, and errors in the protocol's shape."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from attribution.receipt import verify_receipt
from edged.app import create_app
from edged.bindings import BIND_INFLUENCE, BIND_METHODS
from edged.devtools.tiny_onnx import LinearClassifier, write_linear_classifier
from edged.errors import InvalidRequest
from edged.http.oip import DATATYPES, Datatype, ExamplesQuery, Tensor, decode_tensor
from edged.inference import SERVICE
from edged.ledger import LEDGER
from edged.manifest import Manifest, Price
from edged.models import ModelStore
from edged.settings import Settings
from tests.edged.conftest import AppClientFactory

Client = TestClient[Any, web.Application]
MODEL = "tiny-clf"


def install_onnx_model(settings: Settings, tmp_path: Path, **fields: Any) -> LinearClassifier:
    classifier = write_linear_classifier(tmp_path / "clf.onnx", seed=3)
    data = classifier.path.read_bytes()
    store = ModelStore(settings.models_dir)
    digest = hashlib.sha256(data).hexdigest()
    with store.blob_writer(digest) as writer:
        writer.write(data)
    store.add(Manifest(name=MODEL, runtime="onnx", weights=digest, size=0, owner="clf-owner",
                       price=Price(request=5, per_row=2), **fields))
    return classifier


@pytest.fixture
async def v2(aiohttp_client: AppClientFactory, settings: Settings,
             tmp_path: Path) -> tuple[Client, LinearClassifier]:
    classifier = install_onnx_model(settings, tmp_path, batch_delay_us=20_000)
    return await aiohttp_client(create_app(settings)), classifier


def tensor(rows: np.ndarray, name: str = "input") -> dict[str, Any]:
    return {"name": name, "shape": list(rows.shape), "datatype": "FP32",
            "data": rows.ravel().tolist()}


async def test_metadata_and_health(v2: tuple[Client, LinearClassifier]) -> None:
    client, _ = v2
    assert (await (await client.get("/v2/health/live")).json()) == {"live": True}
    assert (await client.get("/v2/health/ready")).status == 200
    meta = await (await client.get(f"/v2/models/{MODEL}")).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"] for o in meta["outputs"]} == {"probabilities", "logits"}
    assert (await (await client.get(f"/v2/models/{MODEL}/ready")).json())["ready"] is True


async def test_infer_returns_outputs_and_a_receipt(v2: tuple[Client, LinearClassifier]) -> None:
    client, classifier = v2
    rows = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    response = await client.post(f"/v2/models/{MODEL}/infer", json={
        "id": "r1", "inputs": [tensor(rows)], "outputs": [{"name": "probabilities"}]})
    assert response.status == 200
    body = await response.json()
    assert body["id"] == "r1" and [o["name"] for o in body["outputs"]] == ["probabilities"]
    got = np.array(body["outputs"][0]["data"]).reshape(body["outputs"][0]["shape"])
    np.testing.assert_allclose(got, classifier.probabilities(rows), rtol=1e-5)
    receipt = await (await client.get(f"/v1/receipts/{body['receipt']['id']}")).json()
    assert response.headers["X-Edged-Receipt"] == body["receipt"]["id"]
    assert receipt["kind"] == "predict" and receipt["usage"] == {"in": 3, "out": 3}
    assert receipt["fee"] == 5 + 2 * 3
    verify_receipt(base64.b64decode(receipt["raw"]))


async def test_concurrent_requests_are_batched_with_identical_results(
        v2: tuple[Client, LinearClassifier]) -> None:
    client, classifier = v2
    rng = np.random.default_rng(1)
    requests = [rng.normal(size=(n, 4)).astype(np.float32) for n in (1, 2, 3, 1)]
    commits: list[int] = []
    ledger = client.app[LEDGER]
    original = ledger._writer._commit_batch

    def counting(batch: Any) -> None:
        commits.append(len(batch))
        original(batch)

    ledger._writer._commit_batch = counting  # type: ignore[method-assign]
    bad = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                       "data": [float("nan")] * 4}]}
    responses = await asyncio.gather(
        *(client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor(rows)]})
          for rows in requests),
        client.post(f"/v2/models/{MODEL}/infer", data=b'{"inputs": [{"name": "input", '
                    b'"shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 1e400]}]}'))
    assert [r.status for r in responses] == [200, 200, 200, 200, 400]
    del bad
    for rows, response in zip(requests, responses, strict=False):
        out = (await response.json())["outputs"]
        probs = next(o for o in out if o["name"] == "probabilities")
        np.testing.assert_allclose(np.array(probs["data"]).reshape(probs["shape"]),
                                   classifier.probabilities(rows), rtol=1e-5)
    assert commits == [4]  # the batch's four receipts: one transaction
    assert ledger.head()[0] == 4


GOOD_TENSOR = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}


@pytest.mark.parametrize(("body", "status"), [
    ({"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32",
                  "data": [0.0] * 5}]}, 400),
    ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64",
                  "data": [1, 2, 3, 4]}]}, 400),
    ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1.0]}]}, 400),
    ({"inputs": [{"name": "nope", "shape": [1, 4], "datatype": "FP32",
                  "data": [0.0] * 4}]}, 400),
    ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP99",
                  "data": [0.0] * 4}]}, 400),
    ({"inputs": [{"name": "input", "shape": [100000, 1000], "datatype": "FP32",
                  "data": [0.0]}]}, 400),
    ({"inputs": []}, 400),
    ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}],
      "outputs": [{"name": "nope"}]}, 400),
    # every field of a tensor, malformed: a 400 in the protocol's shape, never a 500
    *(pytest.param({"inputs": [{**GOOD_TENSOR, field: value}]}, 400,
                   id=f"{field}={str(value)[:20]}") for field, value in (
        ("datatype", ["FP32"]), ("datatype", {"FP32": 1}), ("datatype", None),
        ("name", ["input"]), ("name", {"input": 1}), ("name", ""), ("name", 7),
        ("shape", {"a": 1}), ("shape", [1, "4"]), ("shape", [[1], 4]), ("shape", [True, 4]),
        ("shape", [1, -4]), ("shape", [0, 2**70]), ("shape", "1,4"),
        ("data", {"a": 1}), ("data", "0000"), ("data", [[0.0, 0.0], [0.0, [0.0, 0.0]]]),
        ("data", ["1", "2", "3", "4"]), ("data", [None] * 4), ("data", [{"a": 1}, 0, 0, 0]),
        ("data", [True, 0.0, 0.0, 0.0]), ("data", [1e300] * 4))),
    ({"inputs": [GOOD_TENSOR, "tensor"]}, 400),
    ({"inputs": {"input": GOOD_TENSOR}}, 400),
])
async def test_bad_requests_get_protocol_errors_and_write_nothing(
        v2: tuple[Client, LinearClassifier], body: dict[str, Any], status: int) -> None:
    client, _ = v2
    response = await client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status == status
    error = await response.json()
    assert set(error) == {"error"} and isinstance(error["error"], str)
    assert client.app[LEDGER].head()[0] == 0


async def test_data_nested_past_the_json_parser_is_400(
        v2: tuple[Client, LinearClassifier]) -> None:
    client, _ = v2
    deep = "[" * 5000 + "]" * 5000
    response = await client.post(f"/v2/models/{MODEL}/infer", data=(
        '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": '
        + deep + "}]}").encode())
    assert response.status == 400
    assert set(await response.json()) == {"error"}
    assert client.app[LEDGER].head()[0] == 0


@pytest.mark.parametrize(("datatype", "data"), [
    ("INT64", [1.5, 2, 3, 4]),  # would be truncated to 1
    ("UINT8", [True, 1, 2, 3]),
    ("BOOL", [None, True, False, True]),  # would be False
    ("BOOL", ["false", True, False, True]),  # would be True
    ("BOOL", [0, 1, 0, 1]),
    ("FP16", [1e6, 0.0, 0.0, 0.0]),  # past FP16's range
    ("INT8", [300, 0, 0, 0]),
])
def test_tensor_data_must_be_json_values_of_its_datatype(datatype: str, data: list[Any]) -> None:
    spec = {"name": "x", "shape": [4], "datatype": datatype, "data": data}
    with pytest.raises(InvalidRequest) as refused:
        decode_tensor(Tensor.model_validate(spec), 0)
    assert refused.value.param == "inputs[0]"
    assert "false" not in refused.value.message  # the message names no values


def test_well_formed_tensors_decode() -> None:
    for datatype, data in (("BOOL", [True, False]), ("INT64", [-1, 2**40]),
                           ("UINT8", [0, 255]), ("FP16", [1, 0.5]), ("FP64", [1e300, -2])):
        name, array = decode_tensor(Tensor.model_validate(  # nested data, row-major
            {"name": "x", "shape": [1, 2], "datatype": datatype, "data": [data]}), 0)
        assert name == "x" and array.shape == (1, 2) and array.ravel().tolist() == data


async def test_unknown_model_and_version(v2: tuple[Client, LinearClassifier]) -> None:
    client, _ = v2
    assert (await client.get("/v2/models/nope")).status == 404
    assert (await client.get(f"/v2/models/{MODEL}/versions/7")).status == 404
    # (the body is validated first: a malformed one is a 400 whatever the model)
    missing = await client.post("/v2/models/nope/infer", json={"inputs": [GOOD_TENSOR]})
    assert missing.status == 404 and "error" in await missing.json()


@pytest.mark.parametrize(("body", "param"), [
    ({"inputs": [GOOD_TENSOR], "priority": 1}, "priority"),
    ({"inputs": [{**GOOD_TENSOR, "extra": 1}]}, "inputs[0].extra"),
    ({"inputs": [GOOD_TENSOR], "outputs": [{"name": "logits", "binary_data": True}]},
     "outputs[0].binary_data"),
    ({"inputs": [{**GOOD_TENSOR, "shape": [1, True]}]}, "inputs[0].shape[1]"),
    ({"inputs": [{**GOOD_TENSOR, "datatype": "FP99"}]}, "inputs[0].datatype"),
    ({"inputs": [GOOD_TENSOR], "id": 7}, "id"),
])
async def test_a_body_off_its_declaration_is_refused_in_the_protocols_shape(
        v2: tuple[Client, LinearClassifier], body: dict[str, Any], param: str) -> None:
    """The declared InferRequest (edged.http.oip) checks the body before the handler runs;
    the refusal is the protocol's {"error": message}, naming the field."""
    client, _ = v2
    response = await client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status == 400
    error = await response.json()
    assert set(error) == {"error"} and f"'{param}'" in error["error"]
    assert client.app[LEDGER].head()[0] == 0


async def test_the_protocols_parameters_objects_are_accepted(
        v2: tuple[Client, LinearClassifier]) -> None:
    """tritonclient sends "parameters" (binary_data: false) on a request, its inputs and
    its outputs; edged reads none of them."""
    client, _ = v2
    response = await client.post(f"/v2/models/{MODEL}/infer", json={
        "parameters": {}, "inputs": [{**GOOD_TENSOR, "parameters": {"binary_data": False}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]})
    assert response.status == 200
    assert [o["name"] for o in (await response.json())["outputs"]] == ["logits"]


def test_the_declarations_name_what_the_code_knows() -> None:
    assert set(get_args(Datatype)) == set(DATATYPES)
    method = ExamplesQuery.model_fields["method"]
    assert get_args(method.annotation) == BIND_METHODS and method.default == BIND_INFLUENCE


async def test_api_models_reports_the_providers_actually_in_use(
        v2: tuple[Client, LinearClassifier]) -> None:
    client, _ = v2
    before = await (await client.get(f"/api/models/{MODEL}")).json()
    assert before["loaded"] is False and before["providers"] is None
    loaded = await (await client.post(f"/api/models/{MODEL}/load")).json()
    import onnxruntime

    available = onnxruntime.get_available_providers()
    session = onnxruntime.InferenceSession(
        str(client.app[SERVICE].store.weights_path(client.app[SERVICE].store.get(MODEL))),
        providers=[p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                   if p in available])
    # What a session really runs on here (CPU only on a machine without CUDA libraries).
    assert loaded["providers"] == session.get_providers()
    assert loaded["providers"][-1] == "CPUExecutionProvider"
