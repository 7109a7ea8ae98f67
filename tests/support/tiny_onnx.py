"""Tiny ONNX graphs for tests, built with ``onnx.helper``: they load and run in milliseconds.

- :func:`write_linear_classifier`: ``logits = x @ W + b``, ``probabilities = softmax(logits)``;
  input ``"input"`` FP32 ``[batch, 4]`` (dynamic batch), outputs ``"probabilities"`` and
  ``"logits"`` FP32 ``[batch, 3]``; ``W`` and ``b`` are float initializers named
  ``"linear.weight"`` and ``"linear.bias"``.
- :func:`write_int64_model`: input ``"ids"`` INT64 ``[batch, 2]``, output ``"total"``
  INT64 ``[batch, 1]`` (the row sums).

Weights come from a seeded generator, so the same seed writes the same file; the reference
arrays are returned so tests can compute the expected outputs with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # well inside what onnxruntime 1.17+ supports
IR_VERSION = 8  # the IR of opset 17; newer IRs are refused by older onnxruntime releases
FEATURES = 4
CLASSES = 3


@dataclass(frozen=True)
class LinearClassifier:
    """Where the classifier was written and its weights, for numpy references."""

    path: Path
    weight: np.ndarray  # FP32 [FEATURES, CLASSES]
    bias: np.ndarray  # FP32 [CLASSES]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The reference ``x @ W + b`` (computed in float64, returned as float32)."""
        return (x.astype(np.float64) @ self.weight + self.bias).astype(np.float32)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """The reference softmax over the last axis."""
        z = x.astype(np.float64) @ self.weight + self.bias
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edged-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_linear_classifier(path: Path, seed: int = 0) -> LinearClassifier:
    """Write the softmax linear classifier to ``path``."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    bias = rng.normal(size=(CLASSES,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "linear.weight"], ["matmul"]),
            helper.make_node("Add", ["matmul", "linear.bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "linear_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
        ],
        initializer=[
            numpy_helper.from_array(weight, "linear.weight"),
            numpy_helper.from_array(bias, "linear.bias"),
        ],
    )
    return LinearClassifier(_save(graph, path), weight, bias)


def write_int64_model(path: Path) -> Path:
    """Write a graph whose input is INT64 ``ids [batch, 2]`` and output its row sums."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "sum.axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["ids", "sum.axes"], ["total"], keepdims=1)],
        "int64_sum",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("total", TensorProto.INT64, ["batch", 1])],
        initializer=[axes],
    )
    return _save(graph, path)
