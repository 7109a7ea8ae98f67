"""influence/1 through the daemon: bind contributor examples to an ONNX classifier, then
every prediction's receipt splits the data share by influence."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestClient

from edged.app import create_app
from edged.appkeys import LEDGER
from edged.settings import Settings
from tests.edged.conftest import AppClientFactory
from tests.edged.test_api_v2 import MODEL, install_onnx_model, tensor

Client = TestClient[Any, web.Application]
LAYER = {"features": "input", "weights": "linear.weight", "bias": "linear.bias"}


def _examples(classifier: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Three contributors, each with examples from its own region of input space."""
    rng = np.random.default_rng(7)
    centres = {"clinic-a": [2, 0, 0, 0], "clinic-b": [0, 2, 0, 0], "clinic-c": [0, 0, 2, 0]}
    features, contributors = [], []
    for name, centre in centres.items():
        features.append(rng.normal(size=(30, 4)) + np.array(centre))
        contributors += [name] * 30
    x = np.vstack(features).astype(np.float32)
    labels = classifier.probabilities(x).argmax(axis=1)
    return x, labels, contributors


async def test_bound_examples_split_the_data_share_by_influence(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path) -> None:
    classifier = install_onnx_model(settings, tmp_path, influence_layer=LAYER,
                                    data_share_ppm=500_000, batch_delay_us=0)
    client = await aiohttp_client(create_app(settings))
    row = np.array([[2.0, 0.1, 0.0, 0.0]], dtype=np.float32)
    before = await (await client.post(f"/v2/models/{MODEL}/infer",
                                      json={"inputs": [tensor(row)]})).json()
    unbound = await (await client.get(f"/v1/receipts/{before['receipt']['id']}")).json()
    assert unbound["attr"]["method"] == "owner/1"  # nothing bound yet: the owner keeps it

    x, labels, contributors = _examples(classifier)
    buffer = io.BytesIO()
    np.savez(buffer, features=x, labels=labels, contributors=np.array(contributors))
    bound = await client.put(f"/api/models/{MODEL}/examples", params={"format": "npz"},
                             data=buffer.getvalue())
    assert bound.status == 201, await bound.text()
    assert (await bound.json())["contributors"] == 3

    answer = await (await client.post(f"/v2/models/{MODEL}/infer",
                                      json={"inputs": [tensor(row)]})).json()
    receipt = await (await client.get(f"/v1/receipts/{answer['receipt']['id']}")).json()
    assert receipt["attr"]["method"] == "influence/1"
    data = {p[0]: p[2] for p in receipt["payees"] if p[1] == "data"}
    assert data and sum(data.values()) == 500_000
    evidence = await (await client.get(f"/v1/receipts/{answer['receipt']['id']}/evidence")
                      ).json()
    assert evidence["evidence"]["method"] == "influence/1"
    assert set(evidence["evidence"]["scores"]) == {"clinic-a", "clinic-b", "clinic-c"}


async def test_csv_examples_and_bad_files(aiohttp_client: AppClientFactory,
                                          settings: Settings, tmp_path: Path) -> None:
    classifier = install_onnx_model(settings, tmp_path, influence_layer=LAYER,
                                    data_share_ppm=500_000)
    client = await aiohttp_client(create_app(settings))
    x, labels, contributors = _examples(classifier)
    lines = ["contributor,label,f1,f2,f3,f4"] + [
        ",".join([c, str(int(y)), *map(str, row)]) for c, y, row in zip(contributors, labels, x,
                                                                         strict=True)]
    ok = await client.put(f"/api/models/{MODEL}/examples", params={"format": "csv"},
                          data="\n".join(lines).encode())
    assert ok.status == 201
    for body, fmt in ((b"not an npz", "npz"), (b"contributor,label\n", "csv"),
                      (b"a,b,c\n1,2,3\n", "csv"), (b"x", "xlsx")):
        refused = await client.put(f"/api/models/{MODEL}/examples", params={"format": fmt},
                                   data=body)
        assert refused.status == 400
    assert client.app[LEDGER].head()[0] == 0
