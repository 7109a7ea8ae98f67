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

import numpy as np

from edged.errors import ModelNotFound
from edged.examples import Examples, InfluenceBindings
from edged.models import Manifest, ModelStore, Price

logger = logging.getLogger(__name__)

DEMO_CLASSIFIER = "demo-classifier"
CONTRIBUTORS = 8
LAYER = {"features": "features", "weights": "clf.weight", "bias": "clf.bias"}


def build_demo_classifier() -> tuple[bytes, Examples]:
    """Train the demo model; return its ONNX bytes and the contributor examples."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    data = load_breast_cancer()
    x, y = data.data.astype(np.float64), data.target.astype(np.int64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-12
    z = (x - mean) / std
    first_pc = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)[2][0]
    order = np.argsort(z @ first_pc)
    owner = np.empty(len(x), dtype=object)
    for number, chunk in enumerate(np.array_split(order, CONTRIBUTORS)):
        owner[chunk] = f"hospital-{number + 1}"
    model = LogisticRegression(max_iter=5000).fit(z, y)
    weight = (model.coef_[0] / std).reshape(-1, 1)  # standardisation folded in
    bias = np.array([model.intercept_[0] - float((model.coef_[0] * mean / std).sum())])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "clf.weight"], ["matmul"]),
         helper.make_node("Add", ["matmul", "clf.bias"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["probability"])],
        "demo_classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, x.shape[1]])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(weight.astype(np.float32), "clf.weight"),
         numpy_helper.from_array(bias.astype(np.float32), "clf.bias")])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString(), Examples(x, y, [str(o) for o in owner])


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


