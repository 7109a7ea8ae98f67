"""The demo classifier: trained from bundled data, bound, and attributing from a cold start."""

from __future__ import annotations

from typing import Any

from edged.app import create_app
from edged.demo_classifier import DEMO_CLASSIFIER, demo_rows, install_demo_classifier
from edged.examples import InfluenceBindings
from edged.models import ModelStore
from edged.settings import Settings
from tests.edged.conftest import AppClientFactory


async def test_demo_classifier_predicts_with_influence_after_a_restart(
        aiohttp_client: AppClientFactory, settings: Settings) -> None:
    store = ModelStore(settings.models_dir)
    manifest = install_demo_classifier(store, InfluenceBindings(settings.data_dir / "influence"))
    assert manifest is not None and manifest.runtime == "onnx"
    assert install_demo_classifier(store, InfluenceBindings(settings.data_dir / "x")) == manifest
    # A fresh app (as after a restart) loads the stored binding on first use.
    client = await aiohttp_client(create_app(settings))
    rows = demo_rows(2)
    body: dict[str, Any] = {"inputs": [{"name": "features", "shape": list(rows.shape),
                                        "datatype": "FP32", "data": rows.ravel().tolist()}]}
    answer = await (await client.post(f"/v2/models/{DEMO_CLASSIFIER}/infer", json=body)).json()
    probability = next(o for o in answer["outputs"] if o["name"] == "probability")
    assert probability["shape"] == [2, 1] and all(0 <= p <= 1 for p in probability["data"])
    receipt = await (await client.get(f"/v1/receipts/{answer['receipt']['id']}")).json()
    assert receipt["attr"]["method"] == "influence/1"
    data = [p for p in receipt["payees"] if p[1] == "data"]
    assert data and all(p[0].startswith("hospital-") for p in data)
    assert sum(p[2] for p in data) == 500_000
