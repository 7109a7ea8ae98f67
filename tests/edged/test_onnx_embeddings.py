"""/v1/embeddings on an ONNX text embedder with a tokenizer.json (tiny generated ones)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from attribution.receipt import verify_receipt
from edged.app import create_app
from edged.devtools.tiny_onnx import TextEmbedder, write_text_embedder
from edged.manifest import Manifest, Price
from edged.models import ModelStore
from edged.settings import Settings
from tests.edged.conftest import AppClientFactory

Client = TestClient[Any, web.Application]
MODEL = "tiny-embedder"


def put_blob(store: ModelStore, path: Path) -> str:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with store.blob_writer(digest) as writer:
        writer.write(data)
    return digest


def install_embedder(settings: Settings, tmp_path: Path) -> TextEmbedder:
    embedder = write_text_embedder(tmp_path / "embedder", seed=11, max_length=8)
    store = ModelStore(settings.models_dir)
    store.add(Manifest(name=MODEL, runtime="onnx", weights=put_blob(store, embedder.path),
                       size=0, owner="embed-owner", price=Price(request=3, input_per_1k=1000),
                       tokenizer=put_blob(store, embedder.tokenizer_path),
                       embedding_output="last_hidden_state"))
    return embedder


@pytest.fixture
async def served(aiohttp_client: AppClientFactory, settings: Settings,
                 tmp_path: Path) -> tuple[Client, TextEmbedder]:
    embedder = install_embedder(settings, tmp_path)
    return await aiohttp_client(create_app(settings)), embedder


async def test_string_and_list_input_return_vectors_and_a_receipt(
        served: tuple[Client, TextEmbedder]) -> None:
    client, embedder = served
    response = await client.post("/v1/embeddings", json={"model": MODEL, "input": "the cat sat"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert [item["index"] for item in body["data"]] == [0]
    np.testing.assert_allclose(body["data"][0]["embedding"], embedder.reference("the cat sat"),
                               rtol=1e-5, atol=1e-6)
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    receipt = await (await client.get(f"/v1/receipts/{body['receipt']['id']}")).json()
    assert response.headers["X-Edged-Receipt"] == body["receipt"]["id"]
    assert receipt["kind"] == "embedding" and receipt["usage"] == {"in": 3, "out": 1}
    assert receipt["fee"] == 3 + 3
    verify_receipt(base64.b64decode(receipt["raw"]))

    texts = ["a dog ran", "mat", "the dog sat on a mat"]
    response = await client.post("/v1/embeddings", json={"model": MODEL, "input": texts})
    body = await response.json()
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    for text, item in zip(texts, body["data"], strict=True):
        np.testing.assert_allclose(item["embedding"], embedder.reference(text),
                                   rtol=1e-5, atol=1e-6)
    assert body["usage"]["prompt_tokens"] == 3 + 1 + 6
    receipt = await (await client.get(f"/v1/receipts/{body['receipt']['id']}")).json()
    assert receipt["kind"] == "embedding" and receipt["usage"] == {"in": 10, "out": 3}


async def test_base64_encoding_with_the_official_client(
        served: tuple[Client, TextEmbedder]) -> None:
    client, embedder = served
    response = await client.post("/v1/embeddings", json={
        "model": MODEL, "input": ["the mat"], "encoding_format": "base64"})
    encoded = (await response.json())["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    np.testing.assert_allclose(decoded, embedder.reference("the mat"), rtol=1e-5, atol=1e-6)

    # The official client asks for base64 by default and decodes it itself.
    official = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused",
                                  max_retries=0)
    try:
        result = await official.embeddings.create(model=MODEL, input=["a cat", "the dog ran"])
        floats = await official.embeddings.create(model=MODEL, input="a cat",
                                                  encoding_format="float")
    finally:
        await official.close()
    assert len(result.data) == 2
    np.testing.assert_allclose(result.data[0].embedding, embedder.reference("a cat"),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.data[1].embedding, embedder.reference("the dog ran"),
                               rtol=1e-5, atol=1e-6)
    assert result.usage.prompt_tokens == 5
    np.testing.assert_allclose(floats.data[0].embedding, result.data[0].embedding, rtol=1e-6)


async def test_too_long_input_is_a_context_error_and_writes_no_receipt(
        served: tuple[Client, TextEmbedder]) -> None:
    client, _ = served
    before = (await (await client.get("/api/node")).json())["receipts"]
    response = await client.post("/v1/embeddings", json={
        "model": MODEL, "input": ["a", "the cat sat on the mat a dog ran"]})  # 9 > 8
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert (await (await client.get("/api/node")).json())["receipts"] == before


async def test_models_api_registers_an_embedder_with_its_tokenizer(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path) -> None:
    embedder = write_text_embedder(tmp_path / "upload", seed=2)
    client = await aiohttp_client(create_app(settings))
    digests = {}
    for key, path in (("weights", embedder.path), ("tokenizer", embedder.tokenizer_path)):
        data = path.read_bytes()
        digests[key] = "sha256:" + hashlib.sha256(data).hexdigest()
        assert (await client.put(f"/api/blobs/{digests[key]}", data=data)).status == 201
    missing = "sha256:" + "0" * 64
    response = await client.post("/api/models", json={
        "name": "uploaded", "runtime": "onnx", "weights": digests["weights"],
        "tokenizer": missing})
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "tokenizer"
    response = await client.post("/api/models", json={
        "name": "uploaded", "runtime": "onnx", "weights": digests["weights"],
        "tokenizer": digests["tokenizer"], "embedding_output": "last_hidden_state"})
    assert response.status == 201, await response.text()
    view = await response.json()
    assert view["tokenizer"] == digests["tokenizer"].removeprefix("sha256:")
    assert view["embedding_output"] == "last_hidden_state"
    response = await client.post("/v1/embeddings", json={"model": "uploaded", "input": "a cat"})
    assert response.status == 200, await response.text()
    np.testing.assert_allclose((await response.json())["data"][0]["embedding"],
                               embedder.reference("a cat"), rtol=1e-5, atol=1e-6)


async def test_an_onnx_model_without_a_tokenizer_does_not_embed(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path) -> None:
    embedder = write_text_embedder(tmp_path / "plain", seed=4)
    store = ModelStore(settings.models_dir)
    store.add(Manifest(name="plain", runtime="onnx", weights=put_blob(store, embedder.path),
                       size=0, owner="o"))
    client = await aiohttp_client(create_app(settings))
    response = await client.post("/v1/embeddings", json={"model": "plain", "input": "a cat"})
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "unsupported"
