"""Tabular contributor examples bound to a tensor model, for ``influence/1``.

An examples file (NPZ with ``features`` [n, d], ``labels`` [n], ``contributors`` [n];
or CSV with columns ``contributor,label,f1..fd``; read by ``edged/example_files.py``) is
bound to an ONNX model. The final
linear layer is the one the manifest names (``influence_layer``: ``features`` = the
tensor that feeds it, ``weights`` and ``bias`` = initializer names) or, when it names
none, the one ``attribution.onnx_layers.find_final_linear_layer`` finds in the graph
(``Binding.layer`` says which, and where it came from). With a layer, binding computes
the per-contributor influence vectors once (``influence/1``); every prediction is then
attributed with one small matrix-vector product per row. The layer's input is the graph
input, a graph output, or a hidden tensor that a second session (the graph with that
tensor exposed) computes from the input rows.

Without a layer there is no binding: ``knn/1`` measured near-random fidelity, so it
runs only when the owner opts in (``method="knn"``, recorded in the stored binding so
it survives a restart); otherwise binding is refused and predictions stay ``owner/1``.
Bindings are stored in ``<data_dir>/influence/``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from attribution.influence import METHOD as INFLUENCE_METHOD
from attribution.influence import InfluenceIndex, bind_influence
from attribution.knn import METHOD as KNN_METHOD
from attribution.knn import KnnIndex
from attribution.onnx_layers import find_final_linear_layer
from edged.errors import InvalidRequest
from edged.example_files import Examples
from edged.manifest import Manifest, validate_name

LAYER_FROM_MANIFEST = "manifest"
LAYER_FOUND = "found"
# What the owner may ask for when binding: influence/1 (the default) or, by explicit
# opt-in only, knn/1.
BIND_INFLUENCE = "influence"
BIND_KNN = "knn"
BIND_METHODS = (BIND_INFLUENCE, BIND_KNN)
KNN_FIDELITY_WARNING = (
    "knn/1 measured near-random fidelity (Spearman -0.07 to 0.06 against leave-one-out "
    "retraining on breast cancer): its payouts barely track which examples mattered. "
    "Name the final linear layer (edged models update NAME --influence-layer ...) and "
    "bind again for influence/1.")
NO_LAYER = ("the model has no final linear layer edged can find, so influence/1 cannot run "
            "and predictions stay owner/1: name the layer (influence_layer) or opt in to "
            "knn/1 with method=knn (near-random fidelity)")
# A knn/1 binding file holds this key only when the owner opted in; files written before
# the opt-in existed lack it and are not loaded.
_OPTED_IN = "opted_in"


@dataclass(frozen=True, eq=False)
class Layer:
    """The final linear layer a binding uses: tensor and parameter names, the parameters
    as the model applies them (``weights`` [d, k]) and where it came from: ``"manifest"``
    (``influence_layer``) or ``"found"`` (``find_final_linear_layer``)."""

    features: str
    weights_name: str
    bias_name: str
    weights: np.ndarray
    bias: np.ndarray
    source: str

    def describe(self) -> dict[str, str]:
        """What to show (``models show``, the bind answer): names and source only."""
        return {"features": self.features, "weights": self.weights_name,
                "bias": self.bias_name, "source": self.source}


@dataclass(frozen=True)
class Binding:
    """What a prediction is attributed with: ``influence/1`` through the final linear
    layer, or ``knn/1`` over the input features when the owner opted in to it."""

    method: str
    features: str  # the tensor (graph input or output) the method reads, per row
    influence: InfluenceIndex | None = None
    knn: KnnIndex | None = None
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    layer: Layer | None = None  # influence/1's layer, named or found
    # Computes a hidden layer input from input rows, when no graph output carries it.
    layer_input: LayerInput | None = None

    def digest(self) -> bytes:
        index = self.influence if self.influence is not None else self.knn
        assert index is not None
        return index.digest()

    def scores(self, row: np.ndarray, outputs: Mapping[str, np.ndarray],
               row_index: int) -> tuple[dict[str, float], int]:
        """Per-contributor scores for one row, and the predicted class used."""
        if self.influence is not None:
            assert self.weights is not None and self.bias is not None
            if self.layer_input is not None:
                row = self.layer_input(row[None, :])[0]
            logits = row @ self.weights + self.bias
            predicted = int(np.argmax(logits)) if logits.size > 1 else int(float(logits[0]) > 0)
            return self.influence.influence(row, predicted), predicted
        assert self.knn is not None
        predicted = _predicted_class(outputs, row_index)
        return self.knn.weights(row, predicted), predicted

    def describe(self) -> dict[str, Any]:
        """What to show of a binding (the bind answer, ``models show``): the method, the
        layer (None for ``knn/1``), the parameters digest receipts name, and for ``knn/1``
        the fidelity warning."""
        view: dict[str, Any] = {"method": self.method,
                                "layer": self.layer.describe() if self.layer else None,
                                "params": self.digest().hex()}
        if self.method == KNN_METHOD:
            view["warning"] = KNN_FIDELITY_WARNING
        return view

    def evidence(self, scores: Mapping[str, float], predicted: int) -> dict[str, Any]:
        if self.influence is not None:
            return self.influence.evidence(scores, predicted_class=predicted)
        assert self.knn is not None
        return self.knn.evidence(scores, predicted_class=predicted)


def _predicted_class(outputs: Mapping[str, np.ndarray], row: int) -> int:
    """The class a tensor model predicted: argmax of its first float output with several
    columns, else one column read as a probability (> 0.5) or a logit (> 0)."""
    for tensor in outputs.values():
        if tensor.dtype.kind == "f" and tensor.ndim >= 1:
            values = tensor[row].ravel()
            if values.size > 1:
                return int(np.argmax(values))
            value = float(values[0])
            return int(value > 0.5) if 0.0 <= value <= 1.0 else int(value > 0)
    return 0


class InfluenceBindings:
    """Attribution indexes of the models that have examples bound. Blocking methods."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, Binding] = {}
        self._lock = threading.Lock()

    def _path(self, model: str, method: str) -> Path:
        suffix = "knn" if method == KNN_METHOD else "influence"
        return self.root / f"{validate_name(model)}.{suffix}.npz"

    def _store(self, model: str, method: str) -> Path:
        """Where a new binding of ``method`` goes; the other method's file is removed, so
        a restart loads what was bound last."""
        other = INFLUENCE_METHOD if method == KNN_METHOD else KNN_METHOD
        self._path(model, other).unlink(missing_ok=True)
        return self._path(model, method)

    def bind(self, manifest: Manifest, weights_path: Path, examples: Examples, *,
             method: str = BIND_INFLUENCE) -> Binding:
        """Build and store the binding; anything that does not fit the model is a 400.

        ``method`` is ``"influence"`` (through the named or found final linear layer;
        refused when there is none) or ``"knn"``: the owner's explicit opt-in to
        ``knn/1``, kept with the stored binding."""
        if method not in BIND_METHODS:
            raise InvalidRequest(f"method must be one of {list(BIND_METHODS)}", param="method")
        try:
            return self._bind(manifest, weights_path, examples, method)
        except ValueError as exc:  # shapes or labels that do not fit the model
            if isinstance(exc, InvalidRequest):
                raise
            raise InvalidRequest(f"the examples do not fit the model: {exc}") from None

    def _bind(self, manifest: Manifest, weights_path: Path, examples: Examples,
              method: str) -> Binding:
        width = _input_width(weights_path)
        if width is not None and examples.features.shape[1] != width:
            raise InvalidRequest(f"the examples have {examples.features.shape[1]} features; "
                                 f"the model's input has {width}")
        if method == BIND_KNN:
            features_name = _single_input(weights_path)
            knn = KnnIndex(examples.features, examples.labels, examples.contributors)
            np.savez(self._store(manifest.name, KNN_METHOD), features=examples.features,
                     labels=examples.labels, contributors=np.array(examples.contributors),
                     opted_in=np.array(True))  # _OPTED_IN: the owner asked for knn/1
            binding = Binding(KNN_METHOD, features_name, knn=knn)
        else:
            layer = _final_layer(manifest, weights_path)
            if layer is None:
                raise InvalidRequest(NO_LAYER, param="method")
            layer_input = LayerInput(weights_path, layer.features)
            features = layer_input(examples.features)
            w = _oriented(layer.weights, features.shape[1])
            index = bind_influence(features, examples.labels, examples.contributors, w,
                                   layer.bias)
            index.save(self._store(manifest.name, INFLUENCE_METHOD))
            binding = _influence_binding(weights_path, layer, index, layer_input)
        with self._lock:
            self._cache[manifest.name] = binding
        return binding

    def get(self, model: str) -> Binding | None:
        with self._lock:
            return self._cache.get(model)

    def describe(self, manifest: Manifest, weights_path: Path) -> dict[str, Any] | None:
        """``Binding.describe()`` of the model's binding (loaded if stored), or None."""
        self.load(manifest, weights_path)
        binding = self.get(manifest.name)
        return binding.describe() if binding is not None else None

    def load(self, manifest: Manifest, weights_path: Path) -> None:
        """Load a stored binding (after a restart, on first use)."""
        if self.get(manifest.name) is not None:
            return
        influence_path = self._path(manifest.name, INFLUENCE_METHOD)
        knn_path = self._path(manifest.name, KNN_METHOD)
        layer = _final_layer(manifest, weights_path) if influence_path.is_file() else None
        if layer is not None:
            index = InfluenceIndex.load(influence_path)
            binding = _influence_binding(weights_path, layer, index, None)
        elif knn_path.is_file():
            with np.load(knn_path, allow_pickle=False) as stored:
                if _OPTED_IN not in stored.files:  # bound before the opt-in: not used
                    return
                knn = KnnIndex(stored["features"], stored["labels"],
                               [str(c) for c in stored["contributors"]])
            binding = Binding(KNN_METHOD, _single_input(weights_path), knn=knn)
        else:
            return
        with self._lock:
            self._cache[manifest.name] = binding


def _final_layer(manifest: Manifest, path: Path) -> Layer | None:
    """The layer the manifest names, else the one found in the graph, else None."""
    named = manifest.influence_layer
    if named and named.get("source") != LAYER_FOUND:
        w, b = _initializers(path, named["weights"], named["bias"])
        return Layer(named["features"], named["weights"], named["bias"], w, b,
                     LAYER_FROM_MANIFEST)
    found = find_final_linear_layer(_graph(path))
    if found is None:
        return None
    layer = Layer(found.features, found.weights, found.bias, found.weight_values,
                  found.bias_values, LAYER_FOUND)
    if named and named != layer.describe():  # recorded at bind time: the graph must agree
        raise InvalidRequest("the manifest records a found influence layer the graph no "
                             "longer has", param="influence_layer")
    return layer


def _influence_binding(path: Path, layer: Layer, index: InfluenceIndex,
                       layer_input: LayerInput | None) -> Binding:
    """Rows come from the graph input or output that is the layer's input; a hidden
    tensor is computed from the input rows by ``layer_input``."""
    graph = _graph(path).graph
    if layer.features in {o.name for o in graph.output} or layer.features == _single_input(
            path):
        features, layer_input = layer.features, None
    else:
        features = _single_input(path)
        layer_input = layer_input or LayerInput(path, layer.features)
    return Binding(INFLUENCE_METHOD, features, influence=index,
                   weights=_oriented(layer.weights, index.features), bias=layer.bias,
                   layer=layer, layer_input=layer_input)


class LayerInput:
    """The final layer's input computed from the graph input's rows: the rows themselves
    when the layer reads the graph input, else the tensor ``name`` (a graph output or any
    hidden tensor, exposed as an output of a copy of the graph) from one run."""

    def __init__(self, path: Path, name: str) -> None:
        self.name = name
        self.input = _single_input(path)
        self._session: Any = None
        if name == self.input:
            return
        import onnxruntime

        model = _graph(path)
        graph = model.graph
        produced = {output for node in graph.node for output in node.output}
        if name not in produced:
            raise InvalidRequest("influence_layer.features must be the graph input or a "
                                 "tensor the graph computes", param="influence_layer")
        if name not in {o.name for o in graph.output}:
            graph.output.append(_value_info(model, name))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._dtype = _input_dtype(self._session)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """[n, d_in] input rows -> [n, d] float64 layer inputs."""
        if self._session is None:
            return np.asarray(rows, dtype=np.float64)
        feed = {self.input: np.asarray(rows, dtype=self._dtype)}
        (result,) = self._session.run([self.name], feed)
        return np.asarray(result, dtype=np.float64).reshape(len(rows), -1)


def _value_info(model: Any, name: str) -> Any:
    """The type of tensor ``name`` as shape inference sees it; float of any shape if it
    cannot tell."""
    from onnx import TensorProto, helper, shape_inference

    try:
        inferred = shape_inference.infer_shapes(model).graph.value_info
    except Exception:  # an op shape inference does not know: keep the default
        inferred = []
    for info in inferred:
        if info.name == name and info.type.tensor_type.elem_type:
            return helper.make_tensor_value_info(name, info.type.tensor_type.elem_type, None)
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _input_dtype(session: Any) -> Any:
    """The numpy type of a session's single input (float32 unless it says double)."""
    return np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32


def _oriented(w: np.ndarray, d: int) -> np.ndarray:
    if w.ndim == 2 and w.shape[0] != d and w.shape[1] == d:
        return w.T  # Gemm with transB stores [k, d]
    if w.shape[0] != d:
        raise InvalidRequest("the layer's features do not fit its weights")
    return w


def _graph(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _input_width(path: Path) -> int | None:
    """The fixed last dimension of the model's single input, when the graph says it."""
    graph = _graph(path).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if dims and dims[-1].dim_value > 0 else None


def _single_input(path: Path) -> str:
    graph = _graph(path).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InvalidRequest("binding examples needs a model with exactly one input")
    return str(inputs[0])


def _initializers(path: Path, weights: str, bias: str) -> tuple[np.ndarray, np.ndarray]:
    from onnx import numpy_helper

    model = _graph(path)
    found = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer
             if init.name in (weights, bias)}
    if weights not in found or bias not in found:
        raise InvalidRequest("influence_layer names initializers the graph does not have",
                             param="influence_layer")
    return np.asarray(found[weights], np.float64), np.asarray(found[bias], np.float64)


BINDINGS = web.AppKey("bindings", InfluenceBindings)
"""Which datanet each model's influence engine reads: ``app[BINDINGS]``."""
