"""``influence/1``: closed-form influence through a model's final linear layer.

Why one module of ~490 lines: binding and scoring are the two halves of one closed form
and must agree on the logit reduction, the damping basis and the vectors' layout; some
75 lines are the derivation below.

The model's output is a softmax (or, for binary models, a sigmoid) over
``z = h @ W + b``, where ``h`` [d] are the features entering the final linear
layer (the inputs themselves for a linear model). Only that layer is treated
as trainable; the features are taken as fixed.

Binding (once per datanet, ``bind_influence``): with ``x = [h, 1]`` (a bias
feature) and the parameters ``theta = [W; b]`` flattened row-major,

* per-example cross-entropy gradients ``g_i = x_i (x) (s_i - y_i)``;
* the damped Hessian of the *mean* loss,
  ``H = mean_i( (diag(s_i) - s_i s_i^T) (x) x_i x_i^T ) + damping * I``;
* one vector per contributor ``v_c = H^-1 * sum_{i in c} g_i``, stored as ``V``
  [contributors, p].

Binary models are reduced to one logit (``p = d + 1``): a single sigmoid unit
(``k = 1``) directly, a two-unit softmax (``k = 2``) through the logit
difference ``z1 - z0``, whose Hessian is not singular the way the two-unit
softmax's is. Then ``H = mean_i sigma_i (1 - sigma_i) x_i x_i^T + damping * I``.

Inference (``InfluenceIndex.influence``): with ``g`` the gradient of the
predicted class's loss ``-log p(predicted | h)``, the score of contributor c is
``g . v_c / n``: the first-order (Newton-step) estimate of how much the
predicted class's log-probability would *drop* if c's examples were removed
from the mean training loss. Positive = c supports the prediction; negative =
c argues against it. One [contributors, p] mat-vec.

Damping: ``damping * I`` is added to the Hessian of the mean loss over the
layer's features *standardised* by the datanet's own per-feature mean and
standard deviation (``damping_basis = "standardised"``, the default; a constant
feature is centred but not scaled). Binding computes in that basis, with the
layer rewritten to give the same logits, and stores the vectors mapped back to
the model's own features, so scoring is unchanged. Why: with the damping in
raw feature units the result depended on how the model is written. A model
that standardises its input and the same model with the standardisation folded
into its first linear layer (``W / std``, ``b - (mean / std) W``, as the demo
classifier is written) compute the same function, yet the folded breast-cancer
logistic regression scored a mean Spearman of 0.68 against leave-one-out
retraining instead of 0.91, and no fixed raw damping fixed it. In the
standardised basis any per-feature affine transform folded into the layer
(scale, sign, shift) gives the same scores up to rounding; so does rescaling a
ReLU unit's incoming and outgoing weights in an MLP. Full whitening (the
covariance instead of its diagonal) would also undo rotations, but it
amplifies the directions correlated features leave almost empty; a damping
relative to the Hessian's trace would only undo one global scale.

The damping keeps ``H`` invertible (separable data, a saturated sigmoid,
duplicated or constant features, the softmax's shift invariance) and plays the
role of the L2 penalty the model was trained with on standardised inputs:
scikit-learn's ``LogisticRegression(C=...)`` corresponds to ``1 / (n * C)`` on
the weights, its MLP's ``alpha`` to ``alpha / n``. The default 0.01 is of that
order for datanets of a few hundred examples and larger than needed beyond
(``bench/bench_influence.py`` sweeps it); larger damping shrinks every vector
towards the plain gradient sum (a "gradient alignment" score), which ranks
contributors more robustly when the final layer's features move during
retraining (deep models). The damping and its basis are recorded in the
parameters of every receipt; indexes of format 1 (before the basis existed)
load with ``damping_basis = "raw"`` and keep their numbers.

Negative influence gets no share: ``influence_weights`` keeps positive scores
only; when none is positive the result is empty and the caller decides where
the data share goes (as ``spans/1`` does when nothing matched).

Scores are quantised to integers (``SCORE_SCALE`` units per nat) before the
ppm split, so the evidence (integers and strings only) determines the ppm
exactly on any machine.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from attribution.commitments import digest
from attribution.payees import Role, split_ppm

METHOD = "influence/1"
FORMAT = 2  # format 1 (before standardisation) still loads, as damping_basis "raw"
SCORE_SCALE = 10**12  # integer score units per nat of predicted-class log-probability
DEFAULT_DAMPING = 0.01
STANDARDISED = "standardised"  # damping * I acts on standardised layer features
RAW = "raw"  # damping * I acts on the features as the model has them (format 1)
DAMPING_BASES = (STANDARDISED, RAW)
_CONSTANT = 1e-12  # a feature whose standard deviation is below this is left unscaled

FloatArray = npt.NDArray[np.float64]


def _quantise(score: float) -> int:
    """A float score -> integer units of ``1 / SCORE_SCALE`` (round half to even)."""
    if not np.isfinite(score):
        raise ValueError("influence scores must be finite")
    return int(round(score * SCORE_SCALE))


def ppm_from_integer_weights(weights: Mapping[str, int]) -> dict[str, int]:
    """Non-negative integer weights -> ppm summing to exactly 10**6; ``{}`` if none positive.

    Same rounding as ``payees.split_ppm`` (largest remainder, ties by id) and
    ``spans.to_ppm``; zero and negative weights are dropped.
    """
    data: Role = "data"
    positive = [(name, data, weight) for name, weight in sorted(weights.items()) if weight > 0]
    if not positive:
        return {}
    return {payee.payee_id: payee.ppm for payee in split_ppm(positive)}


def quantised_scores(scores: Mapping[str, float]) -> dict[str, int]:
    """Scores as signed integers (``SCORE_SCALE`` units), sorted by contributor id."""
    return {name: _quantise(float(scores[name])) for name in sorted(scores)}


def influence_weights(scores: Mapping[str, float]) -> dict[str, int]:
    """Influence scores -> ppm of the data share, summing to exactly 1,000,000.

    Scores are quantised (``quantised_scores``); contributors with non-positive
    influence get nothing; all non-positive gives ``{}`` (the caller decides
    where the data share goes).
    """
    return ppm_from_integer_weights(quantised_scores(scores))


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = np.empty_like(z)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    exp_z = np.exp(z[~positive])
    out[~positive] = exp_z / (1.0 + exp_z)
    return out


def _softmax(z: FloatArray) -> FloatArray:
    shifted = z - z.max(axis=-1, keepdims=True)
    exp_z = np.exp(shifted)
    result: FloatArray = exp_z / exp_z.sum(axis=-1, keepdims=True)
    return result


def _as_2d_weights(weights: npt.ArrayLike, bias: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[:, None]
    b = np.atleast_1d(np.asarray(bias, dtype=np.float64)).ravel()
    if w.ndim != 2 or b.shape != (w.shape[1],):
        raise ValueError(f"weights must be [d, k] and bias [k]; got {w.shape} and {b.shape}")
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise ValueError("weights and bias must be finite")
    return w, b


def _logit_reduction(w: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray, bool]:
    """(W', b', binary): binary models as one logit; softmax models unchanged."""
    k = w.shape[1]
    if k == 1:
        return w, b, True
    if k == 2:
        return (w[:, 1] - w[:, 0])[:, None], np.array([b[1] - b[0]]), True
    return w, b, False


@dataclass(frozen=True)
class InfluenceAttribution:
    """The result of ``InfluenceIndex.attribute``: ppm, raw scores and the evidence."""

    weights_ppm: dict[str, int]  # empty when no contributor has positive influence
    scores: dict[str, float]
    evidence: dict[str, Any] = field(default_factory=dict)

    def evidence_digest(self) -> bytes:
        """SHA-256 of the canonical evidence: the receipt's ``attr.evidence``."""
        return digest(self.evidence)


class InfluenceIndex:
    """Per-contributor vectors ``v_c = H^-1 * sum of c's gradients`` of a final linear layer.

    Build it with ``bind_influence`` or ``InfluenceIndex.load``. ``weights``
    [d, k] and ``bias`` [k] are the layer as the model has it (``k = 1``: one
    sigmoid unit; ``k >= 2``: softmax); ``vectors`` is [contributors, p] with
    ``p = d + 1`` for binary models and ``(d + 1) * k`` otherwise.
    """

    def __init__(
        self,
        contributors: Sequence[str],
        vectors: npt.ArrayLike,
        weights: npt.ArrayLike,
        bias: npt.ArrayLike,
        *,
        examples: int,
        damping: float,
        damping_basis: str = STANDARDISED,
    ) -> None:
        self.contributors: tuple[str, ...] = tuple(str(c) for c in contributors)
        if len(set(self.contributors)) != len(self.contributors):
            raise ValueError("contributor ids must be unique")
        self.weights, self.bias = _as_2d_weights(weights, bias)
        self._w, self._b, self.binary = _logit_reduction(self.weights, self.bias)
        self.vectors: FloatArray = np.ascontiguousarray(vectors, dtype=np.float64)
        p = (self._w.shape[0] + 1) * self._w.shape[1]
        if self.vectors.shape != (len(self.contributors), p):
            raise ValueError(
                f"vectors must be [{len(self.contributors)}, {p}]; got {self.vectors.shape}"
            )
        if examples < 1:
            raise ValueError("examples must be positive")
        if not damping > 0:
            raise ValueError("damping must be positive")
        if damping_basis not in DAMPING_BASES:
            raise ValueError(f"damping_basis must be one of {DAMPING_BASES}")
        self.examples = int(examples)
        self.damping = float(damping)
        self.damping_basis = damping_basis
        for array in (self.weights, self.bias, self.vectors):
            array.setflags(write=False)
        # Scoring layout: [C, q, k'] / n, so that score = (scaled @ r) @ [h, 1].
        q, k = self._w.shape[0] + 1, self._w.shape[1]
        scaled = self.vectors.reshape(-1, q, k) / self.examples
        self._scaled_w: FloatArray = np.ascontiguousarray(scaled[:, :-1, :].transpose(0, 2, 1))
        self._scaled_b: FloatArray = np.ascontiguousarray(scaled[:, -1, :])
        self._scaled_w0: FloatArray = self._scaled_w[:, 0, :]
        self._scaled_b0: FloatArray = self._scaled_b[:, 0]
        self._w_vector: FloatArray = np.ascontiguousarray(self._w[:, 0])
        self._b_scalar = float(self._b[0])
        self._params = self._make_params()

    @property
    def features(self) -> int:
        """d: the width of the final linear layer's input."""
        return int(self.weights.shape[0])

    @property
    def classes(self) -> int:
        """Number of classes (2 for a single sigmoid unit)."""
        return 2 if self.binary else int(self.weights.shape[1])

    @property
    def params(self) -> dict[str, Any]:
        """Canonical-encodable parameters; their digest is the receipt's ``attr.params``.

        ``index`` is the SHA-256 of the layer and the vectors as little-endian
        float64 bytes, so the parameters commit to the exact index used.
        """
        return {**self._params, "contributors": list(self.contributors)}

    def _make_params(self) -> dict[str, Any]:
        hasher = hashlib.sha256()
        for array in (self.weights, self.bias, self.vectors):
            hasher.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
        return {
            "method": METHOD,
            "format": FORMAT,
            "loss": "logistic" if self.binary else "softmax",
            "damping": repr(self.damping),
            "damping_basis": self.damping_basis,
            "examples": self.examples,
            "features": self.features,
            "classes": self.classes,
            "contributors": list(self.contributors),
            "score_scale": SCORE_SCALE,
            "index": hasher.hexdigest(),
        }

    def digest(self) -> bytes:
        """SHA-256 of the canonical ``params``."""
        return digest(self.params)

    def score_vector(self, h: npt.ArrayLike, predicted_class: int) -> FloatArray:
        """Scores in ``contributors`` order (see ``influence``).

        ``g . v_c / n`` with ``g = [h, 1] (x) r`` and ``r`` the residual of the
        predicted class, computed without forming ``g``: one [C, d] mat-vec
        (binary) or a [C, k, d] tensor-vector product (softmax).
        """
        x = np.asarray(h, dtype=np.float64)
        if x.shape != (self.features,):
            x = x.ravel()
            if x.shape != (self.features,):
                raise ValueError(f"features must have shape ({self.features},); got {x.shape}")
        if not 0 <= predicted_class < self.classes:
            raise ValueError(f"predicted_class must be in 0..{self.classes - 1}")
        if self.binary:
            z = float(x @ self._w_vector) + self._b_scalar
            # residual of -log p(class): sigmoid(z) - class, computed stably.
            if z >= 0:
                residual = 1.0 / (1.0 + math.exp(-z)) - predicted_class
            else:
                e = math.exp(z)
                residual = e / (1.0 + e) - predicted_class
            result: FloatArray = (self._scaled_w0 @ x + self._scaled_b0) * residual
            return result
        probs = _softmax(x @ self._w + self._b)
        probs[predicted_class] -= 1.0
        result = (self._scaled_w @ x + self._scaled_b) @ probs
        return result

    def influence(self, h: npt.ArrayLike, predicted_class: int) -> dict[str, float]:
        """Estimated drop in ``log p(predicted_class | h)`` if each contributor were removed.

        ``h`` [d] are the final layer's input features for this prediction.
        Positive = the contributor supports the prediction.
        """
        scores = self.score_vector(h, predicted_class)
        return {name: float(s) for name, s in zip(self.contributors, scores, strict=True)}

    def evidence(
        self, scores: Mapping[str, float], *, predicted_class: int | None = None
    ) -> dict[str, Any]:
        """Integers and strings only, from which the ppm is recomputed exactly::

        {"method": "influence/1", "params": params, "predicted_class": int | -1,
         "scores": {contributor: signed int, SCORE_SCALE per nat},
         "weights": {contributor: ppm}}
        """
        quantised = quantised_scores(scores)
        return {
            "method": METHOD,
            "params": self.params,
            "predicted_class": -1 if predicted_class is None else int(predicted_class),
            "scores": quantised,
            "weights": ppm_from_integer_weights(quantised),
        }

    def attribute(self, h: npt.ArrayLike, predicted_class: int) -> InfluenceAttribution:
        """Scores, ppm and evidence of one prediction."""
        scores = self.influence(h, predicted_class)
        evidence = self.evidence(scores, predicted_class=predicted_class)
        return InfluenceAttribution(dict(evidence["weights"]), scores, evidence)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an uncompressed ``.npz`` (no pickles) holding the ids, layer and vectors."""
        with open(path, "wb") as handle:
            np.savez(
                handle,
                format=np.array(FORMAT, dtype=np.int64),
                contributors=np.array(self.contributors, dtype=np.str_),
                vectors=self.vectors,
                weights=self.weights,
                bias=self.bias,
                examples=np.array(self.examples, dtype=np.int64),
                damping=np.array(self.damping, dtype=np.float64),
                damping_basis=np.array(self.damping_basis, dtype=np.str_),
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InfluenceIndex:
        """Read an index written by ``save``."""
        with np.load(path, allow_pickle=False) as data:
            version = int(data["format"])
            if version not in (1, FORMAT):
                raise ValueError(f"unsupported influence index format {version}")
            basis = str(data["damping_basis"]) if version == FORMAT else RAW
            return cls(
                [str(c) for c in data["contributors"].tolist()],
                data["vectors"],
                data["weights"],
                data["bias"],
                examples=int(data["examples"]),
                damping=float(data["damping"]),
                damping_basis=basis,
            )


def bind_influence(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    contributors: Sequence[str],
    weights: npt.ArrayLike,
    bias: npt.ArrayLike,
    *,
    damping: float = DEFAULT_DAMPING,
    damping_basis: str = STANDARDISED,
) -> InfluenceIndex:
    """Build the index of a datanet for a final linear layer (see the module docstring).

    ``features`` [n, d] are the inputs of the final linear layer for every
    contributor example, ``labels`` [n] their integer classes, ``contributors``
    [n] who gave each example. With ``damping_basis="standardised"`` (the
    default) the damping acts on the features standardised by the datanet's
    own mean and standard deviation; ``"raw"`` is the format-1 behaviour, kept
    for comparison. The stored vectors are in the model's own coordinates
    either way. Cost: O(n p^2 + p^3) once, ``p`` the number of parameters of
    the layer (``(d + 1) * k``, or ``d + 1`` when binary).
    """
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).ravel()
    w, b = _as_2d_weights(weights, bias)
    w_red, b_red, binary = _logit_reduction(w, b)
    n = h.shape[0] if h.ndim == 2 else -1
    if h.ndim != 2 or n < 1 or h.shape[1] != w.shape[0]:
        raise ValueError(f"features must be [n, {w.shape[0]}] with n >= 1; got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("features must be finite")
    if y.shape != (n,) or len(contributors) != n:
        raise ValueError("labels and contributors need one entry per example")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integer class indices")
        y = y.astype(np.int64)
    classes = 2 if binary else w.shape[1]
    if y.min() < 0 or y.max() >= classes:
        raise ValueError(f"labels must be in 0..{classes - 1}")
    if not damping > 0:
        raise ValueError("damping must be positive")
    if damping_basis not in DAMPING_BASES:
        raise ValueError(f"damping_basis must be one of {DAMPING_BASES}")

    z = h @ w_red + b_red  # the model's own logits, whatever the basis
    centre, scale = _standardisation(h) if damping_basis == STANDARDISED else _identity(h)
    x = np.hstack([(h - centre) / scale, np.ones((n, 1))])
    if binary:
        s = _sigmoid(z[:, 0])
        residual = (s - y)[:, None]
        p = x.shape[1]
        hessian = (x * (s * (1.0 - s))[:, None]).T @ x / n
    else:
        k = w_red.shape[1]
        probs = _softmax(z)
        residual = probs.copy()
        residual[np.arange(n), y] -= 1.0
        q = x.shape[1]
        p = q * k
        blocks = np.empty((q, k, q, k))
        for a in range(k):
            for c in range(a, k):
                coupling = probs[:, a] * ((a == c) - probs[:, c])
                block = (x * coupling[:, None]).T @ x / n
                blocks[:, a, :, c] = block
                blocks[:, c, :, a] = block.T
        hessian = blocks.reshape(p, p)
    hessian[np.diag_indices(p)] += damping

    ids = tuple(str(c) for c in contributors)
    names = sorted(set(ids))
    position = {name: i for i, name in enumerate(names)}
    member = np.fromiter((position[c] for c in ids), dtype=np.int64, count=n)
    # sum_{i in c} x_i (x) r_i = X_c^T R_c, flattened row-major like theta.
    gradient_sums = np.empty((len(names), p))
    for i in range(len(names)):
        rows = member == i
        gradient_sums[i] = (x[rows].T @ residual[rows]).ravel()
    solved = np.asarray(np.linalg.solve(hessian, gradient_sums.T).T, dtype=np.float64)
    vectors = _to_model_coordinates(solved, centre, scale)
    return InfluenceIndex(
        names, vectors, w, b, examples=n, damping=damping, damping_basis=damping_basis
    )


def _standardisation(h: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The datanet's per-feature mean and standard deviation (1 for a constant feature)."""
    centre: FloatArray = h.mean(axis=0)
    scale: FloatArray = h.std(axis=0)
    scale[scale < _CONSTANT * np.maximum(1.0, np.abs(centre))] = 1.0
    return centre, scale


def _identity(h: FloatArray) -> tuple[FloatArray, FloatArray]:
    return np.zeros(h.shape[1]), np.ones(h.shape[1])


def _to_model_coordinates(vectors: FloatArray, centre: FloatArray, scale: FloatArray) -> FloatArray:
    """Vectors over ``[u, 1]``, ``u = (h - centre) / scale``, rewritten over ``[h, 1]``.

    ``[u, 1] = [h, 1] M`` with ``M = [[diag(1/scale), 0], [-centre/scale, 1]]``, so
    ``([u, 1] (x) r) . v = ([h, 1] (x) r) . (M v)`` for every residual ``r``: scoring
    with ``M v`` on the model's own features gives the same numbers.
    """
    contributors, d = vectors.shape[0], centre.shape[0]
    per_row = vectors.reshape(contributors, d + 1, -1)
    weights = per_row[:, :d, :] / scale[None, :, None]
    bias = per_row[:, d:, :] - np.einsum("j,cjk->ck", centre, weights)[:, None, :]
    result: FloatArray = np.concatenate([weights, bias], axis=1).reshape(contributors, -1)
    return result
