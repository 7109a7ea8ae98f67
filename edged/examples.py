"""Tabular contributor examples bound to a tensor model, for ``influence/1``.

An examples file (NPZ with ``features`` [n, d], ``labels`` [n], ``contributors`` [n];
or CSV with columns ``contributor,label,f1..fd``) is bound to an ONNX model whose
manifest names its final linear layer (``influence_layer``: ``features`` = the graph
input that feeds it, ``weights`` and ``bias`` = initializer names). Binding computes
the per-contributor influence vectors once (attribution.influence) and stores them in
``<data_dir>/influence/<model>.npz``; every prediction is then attributed with one
small matrix-vector product per row. Only layers fed directly by a graph input (linear
models, e.g. skl2onnx logistic regression) are supported for now: models whose final
layer is fed by hidden activations would need those as a declared graph output.
"""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attribution.influence import InfluenceIndex, bind_influence
from edged.errors import InvalidRequest
from edged.models import Manifest, validate_name

MAX_EXAMPLES = 1_000_000


@dataclass(frozen=True)
class Examples:
    features: np.ndarray  # [n, d] float
    labels: np.ndarray  # [n] int
    contributors: list[str]


def parse_examples(data: bytes, kind: str) -> Examples:
    """Parse an NPZ or CSV examples file; refuse anything malformed with a clear error."""
    try:
        if kind == "npz":
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                features = np.asarray(archive["features"], dtype=np.float64)
                labels = np.asarray(archive["labels"])
                contributors = [str(c) for c in archive["contributors"]]
        elif kind == "csv":
            rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
            header, body = rows[0], [r for r in rows[1:] if r]
            if header[:2] != ["contributor", "label"] or len(header) < 3:
                raise InvalidRequest("CSV columns are contributor,label,f1,...")
            contributors = [r[0] for r in body]
            labels = np.asarray([int(r[1]) for r in body])
            features = np.asarray([[float(v) for v in r[2:]] for r in body], dtype=np.float64)
        else:
            raise InvalidRequest("examples are 'npz' or 'csv'", param="format")
    except InvalidRequest:
        raise
    except (KeyError, ValueError, IndexError, UnicodeDecodeError, OSError):
        raise InvalidRequest(f"not a valid {kind} examples file") from None
    n = len(contributors)
    if features.ndim != 2 or not 0 < n <= MAX_EXAMPLES or features.shape[0] != n \
            or labels.shape != (n,) or not np.all(np.isfinite(features)):
        raise InvalidRequest("examples need matching features [n, d] (finite), labels [n] "
                             "and contributors [n]")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise InvalidRequest("labels are non-negative integers (class indices)")
    return Examples(features, labels.astype(np.int64), contributors)


class InfluenceBindings:
    """Influence indexes of the models that have examples bound. Blocking methods."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, tuple[InfluenceIndex, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def _path(self, model: str) -> Path:
        return self.root / f"{validate_name(model)}.npz"

    def bind(self, manifest: Manifest, weights_path: Path, examples: Examples) -> InfluenceIndex:
        layer = manifest.influence_layer
        if not layer:
            raise InvalidRequest("the manifest names no influence_layer (features, weights, "
                                 "bias)", param="influence_layer")
        w, b = _initializers(weights_path, layer["weights"], layer["bias"])
        d = examples.features.shape[1]
        if w.shape[0] != d and w.ndim == 2 and w.shape[1] == d:
            w = w.T  # Gemm with transB stores [k, d]
        if w.shape[0] != d:
            raise InvalidRequest("the examples' features do not fit the layer's weights")
        index = bind_influence(examples.features, examples.labels, examples.contributors, w, b)
        index.save(self._path(manifest.name))
        with self._lock:
            self._cache[manifest.name] = (index, w, b)
        return index

    def get(self, model: str) -> tuple[InfluenceIndex, np.ndarray, np.ndarray] | None:
        with self._lock:
            if model in self._cache:
                return self._cache[model]
        return None

    def load(self, manifest: Manifest, weights_path: Path) -> None:
        """Load a stored binding (at start-up or first use)."""
        path = self._path(manifest.name)
        if path.is_file() and manifest.influence_layer and self.get(manifest.name) is None:
            layer = manifest.influence_layer
            w, b = _initializers(weights_path, layer["weights"], layer["bias"])
            index = InfluenceIndex.load(path)
            if w.shape[0] != index.features:
                w = w.T
            with self._lock:
                self._cache[manifest.name] = (index, w, b)


def _initializers(path: Path, weights: str, bias: str) -> tuple[np.ndarray, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    found = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer
             if init.name in (weights, bias)}
    if weights not in found or bias not in found:
        raise InvalidRequest("influence_layer names initializers the graph does not have",
                             param="influence_layer")
    return np.asarray(found[weights], np.float64), np.asarray(found[bias], np.float64)
