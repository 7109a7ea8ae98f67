"""influence/1 through the daemon: bind contributor examples to an ONNX classifier, then
every prediction's receipt splits the data share by influence."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edged.app import create_app
from edged.bindings import BINDINGS
from edged.ledger import LEDGER
from edged.settings import Settings
from tests.edged.conftest import AppClientFactory
from tests.edged.http.test_oip import MODEL, install_onnx_model, tensor

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


def _write_mlp(path: Path, *, softmax: bool = True) -> Any:
    """input [-1, 4] -> relu(x W1 + b1) = "hidden" (a declared output) -> logits -> softmax
    (without ``softmax``, the logits are the output: no classifier layer to find)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    w1, b1 = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    w2, b2 = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w1"], ["m1"]),
         helper.make_node("Add", ["m1", "b1"], ["a1"]),
         helper.make_node("Relu", ["a1"], ["hidden"]),
         helper.make_node("MatMul", ["hidden", "w2"], ["m2"]),
         helper.make_node("Add", ["m2", "b2"], ["logits" if softmax else "probabilities"]),
         *([helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)] if softmax
           else [])],
        "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3]),
         helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [None, 5])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                    (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)

    def probabilities(x: np.ndarray) -> np.ndarray:
        logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))

    return probabilities


def _mlp_examples(probabilities: Any) -> bytes:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, features=x, labels=probabilities(x).argmax(axis=1),
             contributors=np.array(["a"] * 20 + ["b"] * 20 + ["c"] * 20))
    return buffer.getvalue()


async def _predict(client: Client, model: str) -> dict[str, Any]:
    """The receipt of one prediction of two rows."""
    x = np.random.default_rng(5).normal(size=(60, 4)).astype(np.float32)
    answer = await (await client.post(f"/v2/models/{model}/infer", json={
        "inputs": [tensor(x[:2])]})).json()
    receipt: dict[str, Any] = await (await client.get(
        f"/v1/receipts/{answer['receipt']['id']}")).json()
    return receipt


async def _bind_and_predict(client: Client, model: str, probabilities: Any,
                            **params: str) -> dict[str, Any]:
    bound = await client.put(f"/api/models/{model}/examples", params=params,
                             data=_mlp_examples(probabilities))
    assert bound.status == 201, await bound.text()
    return await _predict(client, model)


def _add_model(settings: Settings, path: Path, name: str, **fields: Any) -> None:
    import hashlib

    from edged.manifest import Manifest
    from edged.models import ModelStore

    store = ModelStore(settings.models_dir)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with store.blob_writer(digest) as writer:
        writer.write(data)
    store.add(Manifest(name=name, runtime="onnx", weights=digest, size=0, owner="o",
                       data_share_ppm=300_000, batch_delay_us=0, **fields))


async def test_influence_through_a_named_or_found_hidden_layer(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path) -> None:
    probabilities = _write_mlp(tmp_path / "mlp.onnx")
    hidden = {"features": "hidden", "weights": "w2", "bias": "b2"}
    _add_model(settings, tmp_path / "mlp.onnx", "mlp", influence_layer=hidden)
    _add_model(settings, tmp_path / "mlp.onnx", "mlp-found")
    client = await aiohttp_client(create_app(settings))

    named = await _bind_and_predict(client, "mlp", probabilities)
    found = await _bind_and_predict(client, "mlp-found", probabilities)
    for receipt in (named, found):
        assert receipt["attr"]["method"] == "influence/1"
        assert sum(p[2] for p in receipt["payees"] if p[1] == "data") == 300_000
    # The same layer, named or found, gives the same attribution.
    assert named["payees"] == found["payees"] and named["attr"] == found["attr"]
    layers = {name: client.app[BINDINGS].get(name).layer  # type: ignore[union-attr]
              for name in ("mlp", "mlp-found")}
    assert {n: layer.describe() if layer else None for n, layer in layers.items()} == {
        "mlp": {**hidden, "source": "manifest"}, "mlp-found": {**hidden, "source": "found"}}
    # The model view names the method and the layer found, without a warning.
    shown = await (await client.get("/api/models/mlp-found")).json()
    assert shown["binding"] == {"method": "influence/1", "params": found["attr"]["params"],
                                "layer": {**hidden, "source": "found"}}
    # The manifest records the layer edged found, so the receipt's manifest names it.
    assert shown["influence_layer"] == {**hidden, "source": "found"}
    assert found["model"]["manifest"] == shown["digest"]


async def test_without_a_layer_the_data_share_is_not_paid_at_random(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path) -> None:
    """No layer and no opt-in: binding is refused and the data share goes where
    ``unmatched_data_to`` says (owner/1); knn/1 runs only when the owner opts in, and the
    opt-in survives a restart."""
    from edged.bindings import InfluenceBindings
    from edged.models import ModelStore

    probabilities = _write_mlp(tmp_path / "logits.onnx", softmax=False)
    _add_model(settings, tmp_path / "logits.onnx", "mlp-knn")
    _add_model(settings, tmp_path / "logits.onnx", "to-operator", unmatched_data_to="operator")
    client = await aiohttp_client(create_app(settings))
    operator = f"node:{(await (await client.get('/api/node')).json())['public_key']}"
    for model in ("mlp-knn", "to-operator"):
        refused = await client.put(f"/api/models/{model}/examples",
                                   data=_mlp_examples(probabilities))
        assert refused.status == 400
        error = (await refused.json())["error"]
        assert error["param"] == "method" and "knn" in error["message"]
    assert client.app[BINDINGS].get("mlp-knn") is None
    owner_kept = await _predict(client, "mlp-knn")
    assert owner_kept["attr"]["method"] == "owner/1"
    assert owner_kept["payees"] == [[operator, "operator", 100_000], ["o", "owner", 900_000]]
    operator_kept = await _predict(client, "to-operator")
    assert operator_kept["attr"]["method"] == "owner/1"
    assert operator_kept["payees"] == [[operator, "operator", 400_000],
                                       ["o", "owner", 600_000]]
    # The two splits are told apart by their parameters.
    assert operator_kept["attr"]["params"] != owner_kept["attr"]["params"]
    assert (await (await client.get("/api/models/mlp-knn")).json())["binding"] is None

    wrong = await client.put("/api/models/mlp-knn/examples", params={"method": "nearest"},
                             data=_mlp_examples(probabilities))
    assert wrong.status == 400 and (await wrong.json())["error"]["param"] == "method"
    bound = await client.put("/api/models/mlp-knn/examples", params={"method": "knn"},
                             data=_mlp_examples(probabilities))
    assert bound.status == 201, await bound.text()
    answer = await bound.json()
    assert answer["method"] == "knn/1" and answer["layer"] is None
    assert answer["warning"].startswith("knn/1 measured near-random fidelity")
    knn = await _predict(client, "mlp-knn")
    assert knn["attr"]["method"] == "knn/1"
    assert sum(p[2] for p in knn["payees"] if p[1] == "data") == 300_000
    shown = await (await client.get("/api/models/mlp-knn")).json()
    assert shown["binding"] == {key: answer[key] for key in ("method", "layer", "params",
                                                            "warning")}

    store = ModelStore(settings.models_dir)
    manifest = store.get("mlp-knn")
    restarted = InfluenceBindings(settings.data_dir / "influence")
    restarted.load(manifest, store.weights_path(manifest))
    again = restarted.get("mlp-knn")
    assert again is not None and again.method == "knn/1"
    # A knn/1 binding stored before the opt-in existed is not used after a restart.
    stored = settings.data_dir / "influence" / "mlp-knn.knn.npz"
    with np.load(stored) as arrays:
        legacy = {name: arrays[name] for name in arrays.files if name != "opted_in"}
    np.savez(stored, **legacy)
    legacy_load = InfluenceBindings(settings.data_dir / "influence")
    legacy_load.load(manifest, store.weights_path(manifest))
    assert legacy_load.get("mlp-knn") is None


async def test_cli_bind_opts_in_to_knn_and_show_warns(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path) -> None:
    from tests.edged.test_datanets_duplicates import run_cli

    probabilities = _write_mlp(tmp_path / "logits.onnx", softmax=False)
    _add_model(settings, tmp_path / "logits.onnx", "mlp-knn")
    client = await aiohttp_client(create_app(settings))
    examples = tmp_path / "examples.npz"
    examples.write_bytes(_mlp_examples(probabilities))
    bound = await run_cli(client, settings.data_dir, "models", "bind", "mlp-knn",
                          str(examples), "--method", "knn")
    assert "bound 60 examples of 3 contributors to mlp-knn (knn/1)" in bound.stdout
    assert "warning: knn/1 measured near-random fidelity" in bound.stderr
    shown = await run_cli(client, settings.data_dir, "models", "show", "mlp-knn")
    assert json.loads(shown.stdout)["binding"]["method"] == "knn/1"
    assert "attribution: knn/1" in shown.stderr
    assert "warning: knn/1 measured near-random fidelity" in shown.stderr


async def test_a_skl2onnx_mlp_is_attributed_through_its_found_layer_after_a_restart(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path) -> None:
    """skl2onnx keeps the hidden activations inside the graph (no output carries them):
    the binding computes them from the input rows, before and after a restart."""
    import warnings

    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from edged.bindings import InfluenceBindings
    from edged.models import ModelStore

    rng = np.random.default_rng(9)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    labels = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier((5,), max_iter=300, random_state=0).fit(x, labels)
    onx = to_onnx(mlp, x[:1], options={"zipmap": False}, target_opset=17)
    (tmp_path / "sk.onnx").write_bytes(onx.SerializeToString())
    _add_model(settings, tmp_path / "sk.onnx", "sk-mlp")
    client = await aiohttp_client(create_app(settings))
    buffer = io.BytesIO()
    np.savez(buffer, features=x, labels=labels, contributors=np.array(["a", "b", "c"] * 20))
    bound = await client.put("/api/models/sk-mlp/examples", data=buffer.getvalue())
    assert bound.status == 201, await bound.text()
    binding = client.app[BINDINGS].get("sk-mlp")
    assert binding is not None and binding.layer is not None
    assert binding.layer.describe() == {"features": "next_activations", "weights": "coefficient1",
                                        "bias": "intercepts1", "source": "found"}
    answer = await (await client.post("/v2/models/sk-mlp/infer", json={
        "inputs": [tensor(x[:3], name="X")]})).json()
    receipt = await (await client.get(f"/v1/receipts/{answer['receipt']['id']}")).json()
    assert receipt["attr"]["method"] == "influence/1"
    hidden = np.maximum(x[:3] @ mlp.coefs_[0] + mlp.intercepts_[0], 0.0)
    expected = [binding.influence.influence(h, int(c)) for h, c in  # type: ignore[union-attr]
                zip(hidden, mlp.predict(x[:3]), strict=True)]
    got = [binding.scores(row, {}, 0)[0] for row in x[:3]]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine == pytest.approx(theirs, rel=1e-4, abs=1e-9)

    manifest = ModelStore(settings.models_dir).get("sk-mlp")
    restarted = InfluenceBindings(settings.data_dir / "influence")
    restarted.load(manifest, ModelStore(settings.models_dir).weights_path(manifest))
    again = restarted.get("sk-mlp")
    assert again is not None and again.layer is not None
    assert again.layer.describe() == binding.layer.describe()
    assert [again.scores(row, {}, 0)[0] for row in x[:3]] == got


async def test_examples_that_do_not_fit_are_400_and_attribution_failures_fall_back(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from edged.predict import PREDICT

    install_onnx_model(settings, tmp_path, data_share_ppm=500_000, batch_delay_us=0)
    client = await aiohttp_client(create_app(settings))
    bad_files = {
        "too few features": dict(features=np.zeros((4, 3)), labels=np.zeros(4, dtype=int),
                                 contributors=np.array(["a"] * 4)),
        "scalar contributors": dict(features=np.zeros((4, 4)), labels=np.zeros(4, dtype=int),
                                    contributors=np.array("a")),
    }
    for name, arrays in bad_files.items():
        buffer = io.BytesIO()
        np.savez(buffer, features=arrays["features"], labels=arrays["labels"],
                 contributors=arrays["contributors"])
        response = await client.put(f"/api/models/{MODEL}/examples", data=buffer.getvalue())
        assert response.status == 400, name

    def broken(*args: Any) -> Any:
        raise ValueError("binding no longer fits")

    monkeypatch.setattr(client.app[PREDICT].attributor, "attribute_prediction", broken)
    row = np.zeros((1, 4), dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="edged.predict"):
        for _ in range(3):
            answer = await client.post(f"/v2/models/{MODEL}/infer",
                                       json={"inputs": [tensor(row)]})
            assert answer.status == 200
            receipt = await (await client.get(
                f"/v1/receipts/{(await answer.json())['receipt']['id']}")).json()
            assert receipt["attr"]["method"] == "owner/1"
    # The failures are counted by cause and shown by the node; logged once, without data.
    node = await (await client.get("/api/node")).json()
    assert node["attribution_failures"] == {"ValueError": 3}
    logged = [r for r in caplog.records if r.name == "edged.predict"]
    assert len(logged) == 1 and "ValueError" in logged[0].getMessage()
    assert "no longer fits" not in caplog.text


async def test_parsing_graph_loading_and_attribution_run_off_the_event_loop(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import edged.bindings
    import edged.http.oip
    from edged.predict import PREDICT

    classifier = install_onnx_model(settings, tmp_path, influence_layer=LAYER,
                                    data_share_ppm=500_000, batch_delay_us=0)
    client = await aiohttp_client(create_app(settings))
    on_loop: dict[str, list[bool]] = {"parse": [], "graph": [], "attribute": []}

    def watched(step: str, function: Any) -> Any:
        def call(*args: Any) -> Any:
            on_loop[step].append(_event_loop_running())
            return function(*args)
        return call

    monkeypatch.setattr(edged.http.oip, "parse_examples",
                        watched("parse", edged.http.oip.parse_examples))
    monkeypatch.setattr(edged.bindings, "_graph", watched("graph", edged.bindings._graph))
    attributor = client.app[PREDICT].attributor
    monkeypatch.setattr(attributor, "attribute_prediction",
                        watched("attribute", attributor.attribute_prediction))

    x, labels, contributors = _examples(classifier)
    buffer = io.BytesIO()
    np.savez(buffer, features=x, labels=labels, contributors=np.array(contributors))
    bound = await client.put(f"/api/models/{MODEL}/examples", data=buffer.getvalue())
    assert bound.status == 201, await bound.text()
    answer = await (await client.post(f"/v2/models/{MODEL}/infer", json={
        "inputs": [tensor(np.array([[2.0, 0.1, 0.0, 0.0]], dtype=np.float32))]})).json()
    receipt = await (await client.get(f"/v1/receipts/{answer['receipt']['id']}")).json()
    assert receipt["attr"]["method"] == "influence/1"  # the same attribution as before
    assert all(on_loop.values()), on_loop  # each step ran
    assert on_loop == {step: [False] * len(calls) for step, calls in on_loop.items()}


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
