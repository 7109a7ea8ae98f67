"""``knn/1``: credit the contributors of the nearest examples (models with no final linear layer).

Features (inputs or an embedding) are standardised with the datanet's own
mean and standard deviation; similarity is the cosine of standardised vectors,
mapped to ``[0, 1]`` as ``(1 + cos) / 2``. Each of the ``k`` nearest examples
adds its similarity to its contributor's score when its label agrees with the
predicted class and subtracts it when it does not. As in ``influence/1``,
non-positive scores get no share (``influence_weights``); much weaker than
influence where a final linear layer is available.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from attribution.commitments import digest
from attribution.influence import influence_weights, quantised_scores

METHOD = "knn/1"
DEFAULT_K = 10
_EPSILON = 1e-12

FloatArray = npt.NDArray[np.float64]


class KnnIndex:
    """Standardised, unit-normalised contributor examples for cosine nearest-neighbour search."""

    def __init__(
        self, features: npt.ArrayLike, labels: npt.ArrayLike, contributors: Sequence[str]
    ) -> None:
        raw = np.asarray(features, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[0] < 1:
            raise ValueError(f"features must be [n, d] with n >= 1; got {raw.shape}")
        if not np.all(np.isfinite(raw)):
            raise ValueError("features must be finite")
        self.labels = np.asarray(labels).ravel().astype(np.int64)
        self.contributors: tuple[str, ...] = tuple(str(c) for c in contributors)
        if self.labels.shape != (raw.shape[0],) or len(self.contributors) != raw.shape[0]:
            raise ValueError("labels and contributors need one entry per example")
        self.mean: FloatArray = raw.mean(axis=0)
        self.scale: FloatArray = raw.std(axis=0)
        self.scale[self.scale < _EPSILON] = 1.0
        self._unit = self._normalise(raw)
        self.names: tuple[str, ...] = tuple(sorted(set(self.contributors)))
        position = {name: i for i, name in enumerate(self.names)}
        self._member = np.array([position[c] for c in self.contributors], dtype=np.int64)

    def _normalise(self, x: FloatArray) -> FloatArray:
        standard = (x - self.mean) / self.scale
        norms = np.linalg.norm(standard, axis=-1, keepdims=True)
        result: FloatArray = standard / np.maximum(norms, _EPSILON)
        return result

    @property
    def params(self) -> dict[str, Any]:
        """Canonical-encodable parameters (without k, which ``evidence`` records)."""
        return {
            "method": METHOD,
            "similarity": "(1+cos)/2 standardised",
            "examples": int(self.labels.shape[0]),
            "features": int(self.mean.shape[0]),
            "contributors": list(self.names),
        }

    def digest(self) -> bytes:
        """SHA-256 of the canonical ``params``."""
        return digest(self.params)

    def weights(
        self, x: npt.ArrayLike, predicted_class: int, k: int = DEFAULT_K
    ) -> dict[str, float]:
        """Signed score per contributor (every contributor present; 0.0 if none is near)."""
        if k < 1:
            raise ValueError("k must be at least 1")
        query = np.asarray(x, dtype=np.float64).ravel()
        if query.shape != self.mean.shape:
            raise ValueError(f"features must have shape {self.mean.shape}; got {query.shape}")
        similarity = self._unit @ self._normalise(query)
        k = min(k, similarity.shape[0])
        nearest = np.argpartition(-similarity, k - 1)[:k]
        signs = np.where(self.labels[nearest] == predicted_class, 1.0, -1.0)
        contributions = signs * (1.0 + similarity[nearest]) / 2.0
        scores = np.bincount(self._member[nearest], contributions, minlength=len(self.names))
        return {name: float(s) for name, s in zip(self.names, scores, strict=True)}

    def evidence(
        self, scores: Mapping[str, float], *, predicted_class: int, k: int = DEFAULT_K
    ) -> dict[str, Any]:
        """Integers and strings only, like ``InfluenceIndex.evidence``."""
        return {
            "method": METHOD,
            "params": self.params,
            "k": int(k),
            "predicted_class": int(predicted_class),
            "scores": quantised_scores(scores),
            "weights": influence_weights(scores),
        }


__all__ = ["KnnIndex", "METHOD", "influence_weights"]
