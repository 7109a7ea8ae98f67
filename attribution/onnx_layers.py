"""Find the final linear layer of an ONNX classifier, for ``influence/1``.

``influence/1`` needs the layer whose logits feed the classifier's sigmoid or
softmax, and the tensor entering it. ``find_final_linear_layer`` recognises
the shapes common exporters write:

* ``Gemm(h, W, C)`` (``transB`` 0 or 1, ``transA`` 0) followed by ``Softmax``
  or ``Sigmoid``: a ``torch.nn.Linear`` as ``torch.onnx.export`` writes it;
* ``MatMul(h, W)`` then ``Add`` of a bias (either operand order), followed by
  ``Softmax`` or ``Sigmoid``: skl2onnx's ``MLPClassifier``, ``edged``'s demo
  classifier, and ``torch.onnx.export`` of ``Linear`` on inputs of rank > 2;
* skl2onnx's ``LinearClassifier`` (``ai.onnx.ml``, e.g. ``LogisticRegression``):
  ``SOFTMAX`` over one row per class, or ``LOGISTIC`` over the two opposite rows
  skl2onnx writes for a binary model (read as one sigmoid unit).

``W`` and the bias must be initializers (the ``LinearClassifier`` keeps them in
node attributes). Only an activation whose output reaches a graph output
counts, a ``Sigmoid`` only over one logit and a ``Softmax`` only over the last
axis; when anything but exactly one layer fits, the answer is ``None`` and the
caller falls back (to ``knn/1``, or to a layer named by the operator). It
reads the graph only: nothing is run and no package of ours is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class FinalLayer:
    """The final linear layer ``z = h @ weight_values + bias_values`` of a classifier.

    ``features`` is the tensor ``h`` entering the layer; ``weights`` and ``bias``
    name where its parameters live (initializer names, or
    ``<node>.coefficients`` / ``<node>.intercepts`` for a ``LinearClassifier``);
    ``weight_values`` [d, k] and ``bias_values`` [k] are the parameters as the
    model applies them (``k = 1`` for a single sigmoid unit); ``activation`` is
    ``"sigmoid"`` or ``"softmax"``; ``node`` the op that holds the layer.
    """

    features: str
    weights: str
    bias: str
    weight_values: FloatArray
    bias_values: FloatArray
    activation: str
    node: str

    def describe(self) -> dict[str, str]:
        """Names only, for manifests and ``models show``: what edged found and uses."""
        return {"features": self.features, "weights": self.weights, "bias": self.bias,
                "activation": self.activation, "node": self.node}


def find_final_linear_layer(model: Any) -> FinalLayer | None:
    """The final linear layer of an ``onnx.ModelProto`` classifier, or None (see module doc)."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: np.asarray(numpy_helper.to_array(init), dtype=np.float64)
                    for init in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output if output}
    live = _tensors_reaching_outputs(graph, producers)
    found: list[FinalLayer] = []
    for node in graph.node:
        if not any(output in live for output in node.output):
            continue
        layer: FinalLayer | None = None
        if node.op_type in ("Softmax", "Sigmoid") and node.domain in _DEFAULT_DOMAINS:
            layer = _linear_before(node, producers, initializers)
        elif node.op_type == "LinearClassifier" and node.domain == "ai.onnx.ml":
            layer = _linear_classifier(node)
        if layer is not None:
            found.append(layer)
    return found[0] if len(found) == 1 else None


def _tensors_reaching_outputs(graph: Any, producers: Mapping[str, Any]) -> set[str]:
    """Every tensor some graph output depends on."""
    live: set[str] = set()
    pending = [output.name for output in graph.output]
    while pending:
        name = pending.pop()
        if name in live:
            continue
        live.add(name)
        node = producers.get(name)
        if node is not None:
            pending.extend(i for i in node.input if i)
    return live


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _linear_before(activation: Any, producers: Mapping[str, Any],
                   initializers: Mapping[str, FloatArray]) -> FinalLayer | None:
    """The Gemm, or MatMul + Add, whose output the activation reads."""
    source = producers.get(activation.input[0])
    if source is None or source.domain not in _DEFAULT_DOMAINS:
        return None
    parsed = None
    if source.op_type == "Gemm":
        parsed = _gemm(source, initializers)
    elif source.op_type == "Add":
        parsed = _matmul_add(source, producers, initializers)
    if parsed is None:
        return None
    features, weights, bias, w, b, node = parsed
    k = w.shape[1]
    if activation.op_type == "Sigmoid":
        if k != 1:
            return None  # several independent sigmoids: multi-label, not one class
        name = "sigmoid"
    else:
        if k < 2 or _attributes(activation).get("axis", -1) not in (-1, 1):
            return None
        name = "softmax"
    return FinalLayer(features, weights, bias, w, b, name, node)


_Parsed = tuple[str, str, str, FloatArray, FloatArray, str]


def _gemm(node: Any, initializers: Mapping[str, FloatArray]) -> _Parsed | None:
    attributes = _attributes(node)
    if len(node.input) < 3 or attributes.get("transA", 0) != 0:
        return None
    features, weights, bias = node.input[:3]
    if weights not in initializers or bias not in initializers:
        return None
    w = initializers[weights]
    if w.ndim != 2:
        return None
    w = (w.T if attributes.get("transB", 0) else w) * float(attributes.get("alpha", 1.0))
    b = initializers[bias] * float(attributes.get("beta", 1.0))
    return _checked(features, weights, bias, w, b, node.name or node.op_type)


def _matmul_add(add: Any, producers: Mapping[str, Any],
                initializers: Mapping[str, FloatArray]) -> _Parsed | None:
    if len(add.input) != 2:
        return None
    first, second = add.input
    for product, bias in ((first, second), (second, first)):
        matmul = producers.get(product)
        if (bias in initializers and matmul is not None and matmul.op_type == "MatMul"
                and matmul.domain in _DEFAULT_DOMAINS and matmul.input[1] in initializers):
            features, weights = matmul.input
            return _checked(features, weights, bias, initializers[weights], initializers[bias],
                            matmul.name or matmul.op_type)
    return None


def _checked(features: str, weights: str, bias: str, w: FloatArray, b: FloatArray,
             node: str) -> _Parsed | None:
    """A [d, k] weight and a bias of k values ([k] or [1, k]), else None."""
    if w.ndim != 2 or b.size != w.shape[1] or (b.ndim == 2 and b.shape[0] != 1) or b.ndim > 2:
        return None
    return features, weights, bias, w, b.reshape(-1), node


def _linear_classifier(node: Any) -> FinalLayer | None:
    """skl2onnx's ``LinearClassifier``: coefficients [rows * d], intercepts [rows]."""
    attributes = _attributes(node)
    coefficients = np.asarray(attributes.get("coefficients", []), dtype=np.float64)
    intercepts = np.asarray(attributes.get("intercepts", []), dtype=np.float64)
    rows = intercepts.size
    if rows == 0 or coefficients.size % rows or coefficients.size == 0:
        return None
    w = coefficients.reshape(rows, -1).T  # [d, rows]
    transform = attributes.get("post_transform", b"NONE")
    name = node.name or node.op_type
    weights, bias = f"{name}.coefficients", f"{name}.intercepts"
    if transform == b"SOFTMAX" and rows >= 2:
        return FinalLayer(node.input[0], weights, bias, w, intercepts, "softmax", name)
    # Binary: rows (-w, w) and intercepts (-b, b); p(1) = sigmoid(h @ w + b).
    if (transform == b"LOGISTIC" and rows == 2 and np.array_equal(w[:, 0], -w[:, 1])
            and intercepts[0] == -intercepts[1]):
        return FinalLayer(node.input[0], weights, bias, w[:, 1:], intercepts[1:], "sigmoid",
                          name)
    return None
