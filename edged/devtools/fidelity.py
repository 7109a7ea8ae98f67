"""The fidelity experiment of ``influence/1`` (tests and ``bench/bench_influence.py``).

A scikit-learn bundled data set (breast cancer, wine or digits; no download),
standardised with the training statistics, is split into a held-out test set
and 8 non-IID contributors (training points sorted along the first principal
component, cut into 8 contiguous chunks). A logistic regression and a small
MLP are trained on all contributors, then retrained (same hyper-parameters,
same seed) without each contributor in turn. Ground truth for a test point
and contributor: the drop of the predicted class when that contributor is
removed, measured on the signed logit for binary models (it ranks
contributors exactly as the probability does, without losing precision on
saturated points) and on the predicted class's log-probability otherwise.
Each method's per-contributor scores are compared with it by Spearman's rank
correlation per test point, averaged over the test set.

Every model is also scored in its *folded* form: the standardisation folded
into its first linear layer (``W / std``, ``b - (mean / std) W``), as
``edged/demo_classifier.py`` writes the demo. The folded model computes the
same function, so it has the same ground truth; only what influence sees
differs: for a logistic regression the final layer's input becomes the raw
features, for an MLP nothing changes at the final layer.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from attribution.influence import STANDARDISED, InfluenceIndex, bind_influence
from attribution.knn import KnnIndex

CONTRIBUTORS = 8
SEED = 0
KNN_K = 10
Array = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int64]
DATASETS: dict[str, Callable[..., Any]] = {
    "breast-cancer": load_breast_cancer,
    "wine": load_wine,
    "digits": load_digits,
}


@dataclass(frozen=True)
class Split:
    """Standardised train/test data; ``owner[i]`` is the contributor of training row i.

    ``mean`` and ``std`` are the training statistics the data was standardised
    with (``std`` 1 for a constant feature), so ``x * std + mean`` is the raw data.
    """

    dataset: str
    x_train: Array
    y_train: Labels
    owner: tuple[str, ...]
    x_test: Array
    y_test: Labels
    mean: Array
    std: Array

    @property
    def names(self) -> list[str]:
        return sorted(set(self.owner))

    @property
    def classes(self) -> int:
        return int(self.y_train.max()) + 1

    def raw(self, x: Array) -> Array:
        """Standardised rows back in the data set's own units."""
        result: Array = x * self.std + self.mean
        return result

    def without(self, name: str) -> tuple[Array, Labels]:
        keep = np.array([o != name for o in self.owner])
        return self.x_train[keep], self.y_train[keep]


@cache
def make_split(dataset: str = "breast-cancer") -> Split:
    """25% held out (stratified), 8 contiguous chunks along the first principal component."""
    bunch = DATASETS[dataset]()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data.astype(np.float64), bunch.target, test_size=0.25, random_state=SEED,
        stratify=bunch.target,
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0  # constant pixels of the digits
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    _, _, vt = np.linalg.svd(x_train - x_train.mean(axis=0), full_matrices=False)
    order = np.argsort(x_train @ vt[0], kind="stable")
    owner = [""] * len(order)
    for j, chunk in enumerate(np.array_split(order, CONTRIBUTORS)):
        for row in chunk:
            owner[row] = f"contributor-{j}"
    return Split(dataset, x_train, y_train.astype(np.int64), tuple(owner), x_test,
                 y_test.astype(np.int64), mean, std)


@dataclass(frozen=True)
class ModelSpec:
    """How to train a model, read its final linear layer and fold an input transform in."""

    name: str
    fit: Callable[[Array, Labels], Any]
    features: Callable[[Any, Array], Array]  # input of the final linear layer
    layer: Callable[[Any], tuple[Array, Array]]  # (W [d, k], b [k]); k = 1 when binary
    fold: Callable[[Any, Array, Array], None]  # fold (x - mean) / std into the first layer

    def logits(self, model: Any, x: Array) -> Array:
        w, b = self.layer(model)
        result: Array = self.features(model, x) @ w + b
        return result

    def predicted(self, model: Any, x: Array) -> Labels:
        z = self.logits(model, x)
        if z.shape[1] == 1:
            return (z[:, 0] > 0).astype(np.int64)
        return np.argmax(z, axis=1).astype(np.int64)

    def predicted_score(self, model: Any, x: Array, predicted: Labels) -> Array:
        """What removing a contributor lowers: the predicted class's signed logit (binary)
        or log-probability (several classes)."""
        z = self.logits(model, x)
        if z.shape[1] == 1:
            result: Array = np.where(predicted == 1, 1.0, -1.0) * z[:, 0]
            return result
        shifted = z - z.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        result = log_p[np.arange(len(x)), predicted]
        return result

    def folded(self, model: Any, mean: Array, std: Array) -> Any:
        """A copy of ``model`` that reads raw features: the same function, other weights."""
        twin = copy.deepcopy(model)
        self.fold(twin, mean, std)
        return twin


def fit_lr(x: Array, y: Labels) -> LogisticRegression:
    return LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x, y)


def fit_mlp(x: Array, y: Labels) -> MLPClassifier:
    """scikit-learn's default solver (adam), ReLU, alpha=1e-4; converges in ~350-500 epochs.

    With ``solver="lbfgs"`` the leave-one-out retrainings land in different
    minima and the ground truth itself becomes noise (influence/1 then reaches
    only 0.0-0.4 whatever the damping); adam from the same seed moves less.
    """
    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=2_000, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    assert model.activation == "relu"
    return model


def mlp_hidden(model: MLPClassifier, x: Array) -> Array:
    """The hidden ReLU activations, computed with numpy from the fitted weights."""
    hidden: Array = np.maximum(x @ model.coefs_[0] + model.intercepts_[0], 0.0)
    return hidden


def _fold_lr(model: LogisticRegression, mean: Array, std: Array) -> None:
    model.intercept_ = model.intercept_ - model.coef_ @ (mean / std)
    model.coef_ = model.coef_ / std


def _fold_mlp(model: MLPClassifier, mean: Array, std: Array) -> None:
    model.intercepts_[0] = model.intercepts_[0] - (mean / std) @ model.coefs_[0]
    model.coefs_[0] = model.coefs_[0] / std[:, None]


LR = ModelSpec("logistic regression", fit_lr, lambda m, x: x,
               lambda m: (m.coef_.T, m.intercept_), _fold_lr)
MLP = ModelSpec("MLP (16 hidden)", fit_mlp, mlp_hidden,
                lambda m: (m.coefs_[1], m.intercepts_[1]), _fold_mlp)
MODELS = {"lr": LR, "mlp": MLP}


def rank(values: Array) -> Array:
    """Ranks from 1, ties get their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start + 1
        while stop < len(values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2.0
        start = stop
    return ranks


def spearman(a: Array, b: Array) -> float:
    """Spearman's rho; 0.0 when either side is constant."""
    ra, rb = rank(np.asarray(a, dtype=np.float64)), rank(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb) / denominator if denominator > 0 else 0.0


def mean_spearman(scores: Array, truth: Array) -> float:
    """Mean over test points (rows) of Spearman across contributors (columns)."""
    return float(np.mean([spearman(s, t) for s, t in zip(scores, truth, strict=True)]))


@dataclass
class ModelResult:
    """Fidelity of each method on one model, and what the benchmark times."""

    spec: ModelSpec
    split: Split
    model: Any
    folded: Any  # the same model with the standardisation folded into its first layer
    index: InfluenceIndex
    knn: KnnIndex
    truth: Array  # [test points, contributors]: drop of the predicted class when removed
    predicted: Labels
    h_test: Array
    bind_seconds: float
    fidelity: dict[str, float] = field(default_factory=dict)

    def influence_fidelity(self, *, folded: bool, damping: float = 0.01,
                           damping_basis: str = STANDARDISED) -> float:
        """Mean Spearman of influence/1 bound on the standardised or the folded model."""
        model = self.folded if folded else self.model
        x_train, x_test = self.split.x_train, self.split.x_test
        if folded:
            x_train, x_test = self.split.raw(x_train), self.split.raw(x_test)
        w, b = self.spec.layer(model)
        index = bind_influence(self.spec.features(model, x_train), self.split.y_train,
                               self.split.owner, w, b, damping=damping,
                               damping_basis=damping_basis)
        scores = influence_scores(index, self.spec.features(model, x_test), self.predicted)
        return mean_spearman(scores, self.truth)


def ground_truth(spec: ModelSpec, split: Split, model: Any, predicted: Labels) -> Array:
    """Leave-one-contributor-out: drop of the predicted class's score per contributor."""
    full = spec.predicted_score(model, split.x_test, predicted)
    columns = []
    for name in split.names:
        retrained = spec.fit(*split.without(name))
        columns.append(full - spec.predicted_score(retrained, split.x_test, predicted))
    return np.stack(columns, axis=1)


def influence_scores(index: InfluenceIndex, h_test: Array, predicted: Labels) -> Array:
    return np.stack([index.score_vector(h, int(c)) for h, c in zip(h_test, predicted, strict=True)])


def knn_scores(knn: KnnIndex, x_test: Array, predicted: Labels, k: int = KNN_K) -> Array:
    return np.array(
        [
            [knn.weights(x, int(c), k=k)[name] for name in knn.names]
            for x, c in zip(x_test, predicted, strict=True)
        ]
    )


def evaluate(spec: ModelSpec, split: Split, *, damping: float = 0.01) -> ModelResult:
    """Train, bind both indices, compute the ground truth and each method's mean Spearman."""
    model = spec.fit(split.x_train, split.y_train)
    predicted = spec.predicted(model, split.x_test)
    assert np.array_equal(predicted, model.predict(split.x_test))
    folded = spec.folded(model, split.mean, split.std)
    assert np.array_equal(spec.predicted(folded, split.raw(split.x_test)), predicted)
    w, b = spec.layer(model)
    h_train = spec.features(model, split.x_train)
    started = time.perf_counter()
    index = bind_influence(h_train, split.y_train, split.owner, w, b, damping=damping)
    bind_seconds = time.perf_counter() - started
    knn = KnnIndex(split.x_train, split.y_train, split.owner)
    assert list(index.contributors) == split.names == list(knn.names)
    truth = ground_truth(spec, split, model, predicted)
    h_test = spec.features(model, split.x_test)
    rng = np.random.default_rng(SEED)
    result = ModelResult(spec, split, model, folded, index, knn, truth, predicted, h_test,
                         bind_seconds)
    result.fidelity = {
        "influence/1": mean_spearman(influence_scores(index, h_test, predicted), truth),
        "influence/1 folded": result.influence_fidelity(folded=True, damping=damping),
        "knn/1": mean_spearman(knn_scores(knn, split.x_test, predicted), truth),
        "random": mean_spearman(rng.standard_normal(truth.shape), truth),
    }
    return result


@cache
def run_experiment(dataset: str = "breast-cancer") -> tuple[Split, dict[str, ModelResult]]:
    """The fidelity experiment on both models of one data set (cached: tests share a run)."""
    split = make_split(dataset)
    return split, {key: evaluate(spec, split) for key, spec in MODELS.items()}
