"""Tiny ONNX graphs for tests, built with ``onnx.helper``: they load and run in milliseconds.

- :func:`write_linear_classifier`: ``logits = x @ W + b``, ``probabilities = softmax(logits)``;
  input ``"input"`` FP32 ``[batch, 4]`` (dynamic batch), outputs ``"probabilities"`` and
  ``"logits"`` FP32 ``[batch, 3]``; ``W`` and ``b`` are float initializers named
  ``"linear.weight"`` and ``"linear.bias"``.
- :func:`write_int64_model`: input ``"ids"`` INT64 ``[batch, 2]``, output ``"total"``
  INT64 ``[batch, 1]`` (the row sums).
- :func:`write_text_embedder`: a token-lookup text embedder (``input_ids``,
  ``attention_mask`` -> ``last_hidden_state`` ``[batch, tokens, 8]``) with its
  ``tokenizer.json``.

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


EMBEDDING_VOCAB = ("[PAD]", "[UNK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran")
EMBEDDING_DIM = 8


@dataclass(frozen=True)
class TextEmbedder:
    """A token-embedding lookup graph and its tokenizer.json, for numpy references."""

    path: Path
    tokenizer_path: Path
    table: np.ndarray  # FP32 [len(EMBEDDING_VOCAB), EMBEDDING_DIM]

    def token_ids(self, text: str) -> list[int]:
        """What the WordLevel tokenizer makes of ``text`` (lowercased, whitespace split)."""
        index = {word: i for i, word in enumerate(EMBEDDING_VOCAB)}
        return [index.get(word, 1) for word in text.lower().split()]

    def reference(self, text: str) -> np.ndarray:
        """Mean of the tokens' rows, L2-normalised (float64)."""
        rows = self.table[self.token_ids(text)].astype(np.float64)
        mean = rows.mean(axis=0)
        return mean / np.linalg.norm(mean)


def write_text_embedder(folder: Path, seed: int = 0, max_length: int = 16) -> TextEmbedder:
    """Write ``embedder.onnx`` and ``tokenizer.json`` into ``folder``.

    The graph takes ``input_ids`` and ``attention_mask`` (INT64 ``[batch, tokens]``) and
    returns ``last_hidden_state`` FP32 ``[batch, tokens, 8]``: each token's row of a seeded
    table (the mask is multiplied in, so padded positions are zeros, and the graph uses
    both inputs). The tokenizer is a WordLevel model over :data:`EMBEDDING_VOCAB` with a
    lowercase normalizer, whitespace pre-tokenizer, padding and truncation at ``max_length``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    rng = np.random.default_rng(seed)
    table = rng.normal(size=(len(EMBEDDING_VOCAB), EMBEDDING_DIM)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embeddings.weight", "input_ids"], ["gathered"], axis=0),
            helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask_float", "unsqueeze.axes"], ["mask_3d"]),
            helper.make_node("Mul", ["gathered", "mask_3d"], ["last_hidden_state"]),
        ],
        "text_embedder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "tokens"]
            ),
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", EMBEDDING_DIM]
            )
        ],
        initializer=[
            numpy_helper.from_array(table, "embeddings.weight"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "unsqueeze.axes"),
        ],
    )
    path = _save(graph, folder / "embedder.onnx")
    tokenizer = Tokenizer(
        WordLevel({word: i for i, word in enumerate(EMBEDDING_VOCAB)}, unk_token="[UNK]")
    )
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer_path = folder / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    return TextEmbedder(path, tokenizer_path, table)
