"""``find_final_linear_layer`` on the classifier graphs exporters write: skl2onnx's logistic
regression and MLP, torch-style Gemm or MatMul + Add then Softmax/Sigmoid; and None
where no single layer fits. Each found layer is checked against what ONNX Runtime computes."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from attribution.onnx_layers import FinalLayer, find_final_linear_layer

D = 5


def _data(classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((90, D)).astype(np.float32)
    y = np.arange(90) % classes
    x[:, 0] += y * 2.0  # separable enough to train quickly
    return x, y


def _run(model: Any, x: np.ndarray, output: str) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run([output], {name: x})[0], dtype=np.float64)


def _probabilities(layer: FinalLayer, h: np.ndarray) -> np.ndarray:
    """Class probabilities from the found layer alone."""
    z = h @ layer.weight_values + layer.bias_values
    if layer.activation == "sigmoid":
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("classes", [2, 3])
def test_skl2onnx_logistic_regression(classes: int) -> None:
    x, y = _data(classes)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    model = to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17)
    layer = find_final_linear_layer(model)
    assert layer is not None
    assert (layer.features, layer.weights, layer.bias) == (
        "X", "LinearClassifier.coefficients", "LinearClassifier.intercepts")
    assert layer.activation == ("sigmoid" if classes == 2 else "softmax")
    np.testing.assert_allclose(layer.weight_values, clf.coef_.T, rtol=1e-6)
    np.testing.assert_allclose(_probabilities(layer, x), _run(model, x, "probabilities"),
                               atol=1e-5)


@pytest.mark.parametrize("classes", [2, 3])
def test_skl2onnx_mlp(classes: int) -> None:
    x, y = _data(classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((6,), max_iter=200, random_state=0).fit(x, y)
    model = to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17)
    layer = find_final_linear_layer(model)
    assert layer is not None
    assert (layer.features, layer.weights, layer.bias) == (
        "next_activations", "coefficient1", "intercepts1")
    assert layer.activation == ("sigmoid" if classes == 2 else "softmax")
    hidden = np.maximum(x @ clf.coefs_[0] + clf.intercepts_[0], 0.0)
    np.testing.assert_allclose(_probabilities(layer, hidden), _run(model, x, "probabilities"),
                               atol=1e-5)


def _graph(nodes: list[Any], arrays: dict[str, np.ndarray], outputs: list[str]) -> Any:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", None])
         for name in outputs],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _torch_mlp(last: str, classes: int, *, trans_b: int = 1) -> Any:
    """input -> Gemm -> Relu -> (Gemm | MatMul + Add) -> Softmax | Sigmoid, as
    ``torch.onnx.export`` writes ``nn.Sequential(Linear, ReLU, Linear, Softmax)``."""
    rng = np.random.default_rng(1)
    k = 1 if last == "Sigmoid" else classes
    w1, b1 = rng.standard_normal((7, D)), rng.standard_normal(7)
    w2, b2 = rng.standard_normal((k, 7)), rng.standard_normal(k)
    nodes = [helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["/fc1/Gemm"],
                              transB=1),
             helper.make_node("Relu", ["/fc1/Gemm"], ["/relu/Relu"])]
    arrays = {"fc1.weight": w1, "fc1.bias": b1, "fc2.bias": b2}
    if trans_b is None:  # MatMul + Add, the bias as the first operand
        arrays["fc2.weight"] = w2.T
        nodes += [helper.make_node("MatMul", ["/relu/Relu", "fc2.weight"], ["/fc2/MatMul"]),
                  helper.make_node("Add", ["fc2.bias", "/fc2/MatMul"], ["logits"])]
    else:
        arrays["fc2.weight"] = w2 if trans_b else w2.T
        nodes.append(helper.make_node("Gemm", ["/relu/Relu", "fc2.weight", "fc2.bias"],
                                      ["logits"], transB=trans_b))
    activation = {"axis": 1} if last == "Softmax" else {}
    nodes.append(helper.make_node(last, ["logits"], ["output"], **activation))
    return _graph(nodes, arrays, ["output"])


@pytest.mark.parametrize(("last", "trans_b"), [("Softmax", 1), ("Softmax", 0),
                                               ("Softmax", None), ("Sigmoid", 1)])
def test_torch_style_mlp(last: str, trans_b: int | None) -> None:
    model = _torch_mlp(last, classes=3, trans_b=trans_b)  # type: ignore[arg-type]
    layer = find_final_linear_layer(model)
    assert layer is not None
    assert (layer.features, layer.weights, layer.bias) == ("/relu/Relu", "fc2.weight",
                                                           "fc2.bias")
    x = np.random.default_rng(2).standard_normal((6, D)).astype(np.float32)
    arrays = {i.name: numpy_helper.to_array(i).astype(np.float64)
              for i in model.graph.initializer}
    hidden = np.maximum(x @ arrays["fc1.weight"].T + arrays["fc1.bias"], 0.0)
    expected = _run(model, x, "output")
    got = _probabilities(layer, hidden)
    np.testing.assert_allclose(got if last == "Softmax" else got[:, 1:], expected, atol=1e-5)


def test_a_linear_softmax_reading_the_input() -> None:
    """A square layer (d == k) stored transposed for Gemm is oriented by transB, not shape."""
    w, b = np.random.default_rng(3).standard_normal((D, D)), np.zeros(D)
    model = _graph([helper.make_node("Gemm", ["input", "w", "b"], ["z"], transB=1),
                    helper.make_node("Softmax", ["z"], ["p"])], {"w": w, "b": b}, ["p"])
    layer = find_final_linear_layer(model)
    assert layer is not None and layer.features == "input"
    np.testing.assert_allclose(layer.weight_values, w.astype(np.float32).T)


def test_none_where_no_single_layer_fits() -> None:
    rng = np.random.default_rng(4)
    w, b = rng.standard_normal((D, 3)), rng.standard_normal(3)
    linear = [helper.make_node("MatMul", ["input", "w"], ["m"]),
              helper.make_node("Add", ["m", "b"], ["z"])]
    arrays = {"w": w, "b": b}
    no_activation = _graph(linear, arrays, ["z"])
    multi_label = _graph([*linear, helper.make_node("Sigmoid", ["z"], ["p"])], arrays, ["p"])
    unused = _graph([*linear, helper.make_node("Softmax", ["z"], ["p"])], arrays, ["z"])
    no_bias = _graph([helper.make_node("MatMul", ["input", "w"], ["z"]),
                      helper.make_node("Softmax", ["z"], ["p"])], arrays, ["p"])
    two_heads = _graph(
        [*linear, helper.make_node("Softmax", ["z"], ["p"]),
         helper.make_node("Gemm", ["input", "w2", "b2"], ["z2"]),
         helper.make_node("Softmax", ["z2"], ["p2"])],
        {**arrays, "w2": w, "b2": b}, ["p", "p2"])
    weights_computed = _graph(
        [helper.make_node("Relu", ["w"], ["w_relu"]),
         helper.make_node("MatMul", ["input", "w_relu"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["z"]),
         helper.make_node("Softmax", ["z"], ["p"])], arrays, ["p"])
    for model in (no_activation, multi_label, unused, no_bias, two_heads, weights_computed):
        assert find_final_linear_layer(model) is None
