"""The demo tensor model ``make run`` installs: a breast-cancer classifier with its
contributor examples bound, so a first ``/v2/models/demo-classifier/infer`` shows
``influence/1`` attribution.

scikit-learn's bundled breast-cancer data (no download) is split among 8 demo
hospitals, non-IID (contiguous chunks along the first principal component); a
logistic regression is trained on it and written as a plain ONNX graph
(``logit = features @ W + b``, ``probability = sigmoid(logit)``) with the
standardisation folded into ``W`` and ``b``, so the final linear layer reads the graph
input directly.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from edged.bindings import InfluenceBindings
from edged.errors import ModelNotFound
from edged.example_files import Examples
from edged.manifest import Manifest, Price
from edged.models import ModelStore

logger = logging.getLogger(__name__)

DEMO_CLASSIFIER = "demo-classifier"
CONTRIBUTORS = 8
LAYER = {"features": "features", "weights": "clf.weight", "bias": "clf.bias"}


@dataclass(frozen=True)
class StandardisedLogisticRegression:
    """A logistic regression over standardised features: ``logit = ((x - mean) / std) @ coef
    + intercept``."""

    mean: np.ndarray  # [d]
    std: np.ndarray  # [d]
    coef: np.ndarray  # [d]
    intercept: float

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight [d, 1], bias [1]) over raw features: the standardisation folded in."""
        weight = (self.coef / self.std).reshape(-1, 1)
        bias = np.array([self.intercept - float((self.coef * self.mean / self.std).sum())])
        return weight, bias

    def onnx_graph(self, *, folded: bool = True) -> bytes:
        """The model as ONNX: ``features -> MatMul(clf.weight) -> Add(clf.bias) -> logit ->
        Sigmoid -> probability``. Folded (the demo), the layer reads the graph input; else
        ``Sub(mean)`` and ``Div(std)`` compute the hidden tensor ``standardised`` first."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        if folded:
            weight, bias = self.folded()
            nodes, layer_input, extra = [], "features", []
        else:
            weight, bias = self.coef.reshape(-1, 1), np.array([self.intercept])
            nodes = [helper.make_node("Sub", ["features", "scaler.mean"], ["centred"]),
                     helper.make_node("Div", ["centred", "scaler.std"], ["standardised"])]
            layer_input = "standardised"
            extra = [numpy_helper.from_array(self.mean.astype(np.float32), "scaler.mean"),
                     numpy_helper.from_array(self.std.astype(np.float32), "scaler.std")]
        graph = helper.make_graph(
            [*nodes,
             helper.make_node("MatMul", [layer_input, "clf.weight"], ["matmul"]),
             helper.make_node("Add", ["matmul", "clf.bias"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["probability"])],
            "demo_classifier",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                           [None, len(self.coef)])],
            [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [None, 1]),
             helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
            [numpy_helper.from_array(weight.astype(np.float32), "clf.weight"),
             numpy_helper.from_array(bias.astype(np.float32), "clf.bias"), *extra])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model.SerializeToString()


def train_logistic_regression(
        x: np.ndarray, y: np.ndarray, *,
        scaler: tuple[np.ndarray, np.ndarray] | None = None) -> StandardisedLogisticRegression:
    """The demo's recipe: standardise (with the data's own statistics unless ``scaler``
    gives the mean and standard deviation), fit scikit-learn's logistic regression (C=1)
    to convergence."""
    from sklearn.linear_model import LogisticRegression

    mean, std = scaler if scaler is not None else (x.mean(axis=0), x.std(axis=0) + 1e-12)
    model = LogisticRegression(tol=1e-10, max_iter=10_000).fit((x - mean) / std, y)
    return StandardisedLogisticRegression(mean, std, model.coef_[0].copy(),
                                          float(model.intercept_[0]))


def contributor_split(x: np.ndarray, parts: int = CONTRIBUTORS) -> list[str]:
    """Non-IID owners: contiguous chunks of the rows sorted along the first principal
    component of the standardised data, ``hospital-1`` .. ``hospital-<parts>``."""
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-12)
    first_pc = np.linalg.svd(z, full_matrices=False)[2][0]
    owner = [""] * len(x)
    for number, chunk in enumerate(np.array_split(np.argsort(z @ first_pc), parts)):
        for row in chunk:
            owner[row] = f"hospital-{number + 1}"
    return owner


def build_demo_classifier() -> tuple[bytes, Examples]:
    """Train the demo model; return its ONNX bytes (folded) and the contributor examples."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, y = data.data.astype(np.float64), data.target.astype(np.int64)
    model = train_logistic_regression(x, y)
    return model.onnx_graph(folded=True), Examples(x, y, contributor_split(x))


def install_demo_classifier(store: ModelStore, bindings: InfluenceBindings) -> Manifest | None:
    """Install and bind the demo classifier unless it exists; None without scikit-learn."""
    try:
        return store.get(DEMO_CLASSIFIER)
    except ModelNotFound:
        pass
    try:
        model_bytes, examples = build_demo_classifier()
    except ImportError:
        logger.info("scikit-learn/onnx missing: no demo classifier")
        return None
    digest = hashlib.sha256(model_bytes).hexdigest()
    if not store.has_blob(digest):
        with store.blob_writer(digest) as writer:
            writer.write(model_bytes)
    manifest = store.add(Manifest(
        name=DEMO_CLASSIFIER, runtime="onnx", weights=digest, size=0, owner="demo-lab",
        price=Price(request=10, per_row=1), influence_layer=dict(LAYER),
        data_share_ppm=500_000, label_names=("malignant", "benign")))
    bindings.bind(manifest, store.weights_path(manifest), examples)
    logger.info("demo classifier %s installed with %d contributor examples", DEMO_CLASSIFIER,
                len(examples.contributors))
    return manifest


def demo_rows(count: int = 1) -> np.ndarray:
    """Rows of the bundled data, for examples and tests."""
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer().data[:count].astype(np.float32)


