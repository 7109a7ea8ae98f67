"""The demo classifier: trained from bundled data, bound, and attributing from a cold start;
its folded weights attribute as a graph that standardises first does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attribution.influence import influence_weights
from edged.app import create_app
from edged.bindings import Binding, InfluenceBindings
from edged.demo_classifier import (
    DEMO_CLASSIFIER,
    StandardisedLogisticRegression,
    demo_rows,
    install_demo_classifier,
    train_logistic_regression,
)
from edged.devtools.fidelity import Split, make_split, mean_spearman
from edged.example_files import Examples
from edged.manifest import Manifest
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


def _bound(tmp_path: Path, name: str, graph: bytes, examples: Examples) -> Binding:
    """Bind ``examples`` to an ONNX graph whose manifest names no layer: edged finds it."""
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(graph)
    manifest = Manifest(name=name, runtime="onnx", weights="0" * 64, size=0, owner="o",
                        data_share_ppm=500_000)
    return InfluenceBindings(tmp_path / "influence").bind(manifest, path, examples)


def test_the_folded_demo_and_a_standardising_graph_attribute_alike(tmp_path: Path) -> None:
    """The demo's recipe on the breast-cancer split: the graph with the standardisation
    folded into its weights (the demo) and the graph that standardises first (``Sub``,
    ``Div``, then the layer over a hidden tensor) get the same influence, and both rank
    contributors as leave-one-contributor-out retraining does (mean Spearman >= 0.85; the
    retrainings keep the full data's standardisation, as the fidelity experiment does)."""
    split = make_split("breast-cancer")
    x_train, x_test = split.raw(split.x_train), split.raw(split.x_test)
    model = train_logistic_regression(x_train, split.y_train)
    examples = Examples(x_train, split.y_train, list(split.owner))
    folded = _bound(tmp_path, "folded", model.onnx_graph(folded=True), examples)
    standardising = _bound(tmp_path, "standardising", model.onnx_graph(folded=False), examples)
    assert folded.layer is not None and standardising.layer is not None
    assert folded.layer.describe() == {"features": "features", "weights": "clf.weight",
                                       "bias": "clf.bias", "source": "found"}
    assert standardising.layer.features == "standardised"
    assert folded.features == standardising.features == "features"  # both read input rows

    weight, bias = model.folded()
    logits = x_test @ weight[:, 0] + bias[0]
    predicted = (logits > 0).astype(np.int64)
    sign = np.where(predicted == 1, 1.0, -1.0)
    scaler = (model.mean, model.std)
    truth = np.stack([sign * (logits - _logits(train_logistic_regression(
        *_without(split, x_train, name), scaler=scaler), x_test)) for name in split.names],
        axis=1)
    scores = {}
    for binding in (folded, standardising):
        rows = [binding.scores(row, {}, i) for i, row in enumerate(x_test)]
        assert [c for _, c in rows] == predicted.tolist()
        scores[id(binding)] = np.array([[s[n] for n in split.names] for s, _ in rows])
        assert mean_spearman(scores[id(binding)], truth) >= 0.85
    np.testing.assert_allclose(scores[id(folded)], scores[id(standardising)], rtol=1e-3,
                               atol=1e-6 * np.abs(scores[id(folded)]).max())
    for row in x_test:  # the ppm of the data share: the same but for float32 rounding
        mine = influence_weights(folded.scores(row, {}, 0)[0])
        theirs = influence_weights(standardising.scores(row, {}, 0)[0])
        assert all(abs(mine.get(k, 0) - theirs.get(k, 0)) <= 2 for k in mine.keys() | theirs)


def _logits(model: StandardisedLogisticRegression, x: np.ndarray) -> np.ndarray:
    weight, bias = model.folded()
    return np.asarray(x @ weight[:, 0] + bias[0])


def _without(split: Split, x_train: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    keep = np.array([owner != name for owner in split.owner])
    return x_train[keep], split.y_train[keep]
