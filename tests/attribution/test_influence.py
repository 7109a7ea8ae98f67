"""Fidelity and unit tests of ``influence/1`` and ``knn/1``.

The fidelity experiment (breast-cancer data, 8 non-IID contributors,
leave-one-contributor-out retraining as ground truth) lives in
``edged/devtools/fidelity.py``, shared with ``bench/bench_influence.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from attribution.canonical import encode
from attribution.commitments import digest
from attribution.influence import (
    RAW,
    SCORE_SCALE,
    STANDARDISED,
    InfluenceIndex,
    bind_influence,
    influence_weights,
)
from attribution.knn import KnnIndex
from edged.devtools.fidelity import CONTRIBUTORS, Array, influence_scores, run_experiment

# --------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize(("model", "target"), [("lr", 0.85), ("mlp", 0.5)])
def test_influence_fidelity_meets_target(model: str, target: float) -> None:
    _, results = run_experiment()
    assert results[model].fidelity["influence/1"] >= target, results[model].fidelity


@pytest.mark.parametrize("model", ["lr", "mlp"])
def test_folding_the_standardisation_into_the_model_changes_nothing(model: str) -> None:
    """The same model with its input standardisation folded into the first layer (as the
    demo classifier is written) gets the same fidelity; with the damping on raw features
    (format 1) the folded logistic regression lost a quarter of it."""
    _, results = run_experiment()
    fidelity = results[model].fidelity
    assert fidelity["influence/1 folded"] == pytest.approx(fidelity["influence/1"], abs=1e-9)
    assert fidelity["influence/1 folded"] >= (0.85 if model == "lr" else 0.5)
    if model == "lr":
        raw = results[model].influence_fidelity(folded=True, damping_basis=RAW)
        assert raw < fidelity["influence/1"] - 0.1


@pytest.mark.parametrize("model", ["lr", "mlp"])
def test_influence_beats_knn_and_random(model: str) -> None:
    _, results = run_experiment()
    fidelity = results[model].fidelity
    assert fidelity["influence/1"] > fidelity["knn/1"], fidelity
    assert fidelity["influence/1"] > fidelity["random"], fidelity


def test_sign_matches_leave_one_out() -> None:
    """Positive influence = removing the contributor lowers the predicted class (LR)."""
    _, results = run_experiment()
    lr = results["lr"]
    scores = influence_scores(lr.index, lr.h_test, lr.predicted)
    big = np.abs(lr.truth) > 0.05
    agreement = np.mean(np.sign(scores[big]) == np.sign(lr.truth[big]))
    assert agreement > 0.9


def test_non_iid_split() -> None:
    split, _ = run_experiment()
    assert len(split.names) == CONTRIBUTORS
    sizes = [split.owner.count(name) for name in split.names]
    assert max(sizes) - min(sizes) <= 1
    # Contiguous along PC1: contributors' label mixes differ markedly.
    rates = [split.y_train[np.array(split.owner) == name].mean() for name in split.names]
    assert max(rates) - min(rates) > 0.5


# --------------------------------------------------------------------------- unit


def _toy_index(k: int = 3, seed: int = 1) -> tuple[InfluenceIndex, Array]:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((60, 4))
    labels = rng.integers(0, max(k, 2), size=60)
    owners = [f"c{i % 5}" for i in range(60)]
    w, b = rng.standard_normal((4, k)), rng.standard_normal(k)
    return bind_influence(h, labels, owners, w, b, damping=0.05), h


def test_ppm_sums_to_exactly_one_million() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        scores = {f"c{i}": float(s) for i, s in enumerate(rng.standard_normal(8) * 1e-3)}
        ppm = influence_weights(scores)
        if any(s * SCORE_SCALE >= 0.5 for s in scores.values()):
            assert sum(ppm.values()) == 1_000_000
        assert all(v > 0 for v in ppm.values())


def test_negative_influence_gets_nothing() -> None:
    ppm = influence_weights({"a": 0.3, "b": -0.5, "c": 0.1, "d": 0.0})
    assert set(ppm) == {"a", "c"}
    assert ppm == {"a": 750_000, "c": 250_000}
    assert influence_weights({"a": -1.0, "b": 0.0}) == {}
    assert influence_weights({}) == {}


def test_non_finite_scores_rejected() -> None:
    with pytest.raises(ValueError):
        influence_weights({"a": float("nan")})


def test_save_load_round_trip(tmp_path: Path) -> None:
    for k in (1, 2, 3):
        index, h = _toy_index(k)
        path = tmp_path / f"index-{k}.npz"
        index.save(path)
        loaded = InfluenceIndex.load(path)
        assert loaded.contributors == index.contributors
        assert loaded.digest() == index.digest()
        assert loaded.params == index.params
        for row in h[:5]:
            assert loaded.influence(row, 1) == index.influence(row, 1)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_scores_do_not_change_when_an_affine_transform_is_folded_in(k: int) -> None:
    """Features ``h' = h * a + c`` (per feature, any sign and scale) with the layer
    rewritten to compute the same logits give the same scores; damping on raw features
    does not."""
    rng = np.random.default_rng(6)
    h = rng.standard_normal((80, 5))
    labels = rng.integers(0, max(k, 2), size=80)
    owners = [f"c{i % 4}" for i in range(80)]
    w, b = rng.standard_normal((5, k)), rng.standard_normal(k)
    a = np.array([1e3, -0.01, 7.0, 1e-4, 1.0])
    c = np.array([-50.0, 3.0, 0.0, 2e-3, 1e4])
    h_folded, w_folded, b_folded = h * a + c, w / a[:, None], b - (c / a) @ w
    np.testing.assert_allclose(h_folded @ w_folded + b_folded, h @ w + b, atol=1e-8)
    for basis, same in ((STANDARDISED, True), (RAW, False)):
        plain = bind_influence(h, labels, owners, w, b, damping_basis=basis)
        folded = bind_influence(h_folded, labels, owners, w_folded, b_folded,
                                damping_basis=basis)
        for row, row_folded in zip(h[:6], h_folded[:6], strict=True):
            for predicted in range(plain.classes):
                expected = plain.score_vector(row, predicted)
                got = folded.score_vector(row_folded, predicted)
                assert np.allclose(got, expected, rtol=1e-6, atol=1e-12) == same


def test_a_constant_feature_is_harmless() -> None:
    rng = np.random.default_rng(8)
    h = np.hstack([rng.standard_normal((40, 3)), np.full((40, 1), 5.0)])
    labels = rng.integers(0, 2, size=40)
    index = bind_influence(h, labels, ["a", "b"] * 20, rng.standard_normal((4, 1)), [0.1])
    assert np.all(np.isfinite(index.vectors))
    assert np.all(np.isfinite(index.score_vector(h[0], 1)))


def test_a_format_1_index_loads_with_raw_damping(tmp_path: Path) -> None:
    """Bindings written before standardisation keep their numbers and say how they were
    made, so receipts made with them stay reproducible."""
    index, h = _toy_index(3)
    path = tmp_path / "old.npz"
    np.savez(path, format=np.array(1), contributors=np.array(index.contributors),
             vectors=index.vectors, weights=index.weights, bias=index.bias,
             examples=np.array(index.examples), damping=np.array(index.damping))
    loaded = InfluenceIndex.load(path)
    assert loaded.params["damping_basis"] == RAW and index.params["damping_basis"] == STANDARDISED
    assert loaded.influence(h[0], 1) == index.influence(h[0], 1)


def test_params_and_evidence_are_canonical() -> None:
    index, h = _toy_index(3)
    encode(index.params)
    assert index.digest() == digest(index.params)
    result = index.attribute(h[0], 2)
    encode(result.evidence)
    assert result.evidence_digest() == digest(result.evidence)
    assert result.evidence["weights"] == result.weights_ppm == influence_weights(result.scores)
    assert all(isinstance(v, int) for v in result.evidence["scores"].values())
    assert result.evidence["predicted_class"] == 2


def test_softmax_matches_brute_force_newton_step() -> None:
    """A k-class index equals H^-1 g computed densely from per-example terms (damping on the
    features as given; the standardised basis is the same computation on standardised
    features, tested by the invariance test above)."""
    rng = np.random.default_rng(3)
    n, d, k, damping = 40, 3, 3, 0.1
    h = rng.standard_normal((n, d))
    labels = rng.integers(0, k, size=n)
    owners = ["a" if i < 15 else "b" for i in range(n)]
    w, b = rng.standard_normal((d, k)), rng.standard_normal(k)
    index = bind_influence(h, labels, owners, w, b, damping=damping, damping_basis=RAW)
    x = np.hstack([h, np.ones((n, 1))])
    z = h @ w + b
    s = np.exp(z - z.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    p = (d + 1) * k
    hessian = damping * np.eye(p)
    grads = np.zeros((n, p))
    for i in range(n):
        onehot = np.eye(k)[labels[i]]
        grads[i] = np.outer(x[i], s[i] - onehot).ravel()
        coupling = np.diag(s[i]) - np.outer(s[i], s[i])
        hessian += np.kron(np.outer(x[i], x[i]), coupling) / n
    expected = np.linalg.solve(hessian, np.stack([grads[:15].sum(0), grads[15:].sum(0)]).T).T
    np.testing.assert_allclose(index.vectors, expected, rtol=1e-9, atol=1e-12)


def test_two_unit_softmax_equals_sigmoid() -> None:
    """A two-class softmax layer is bound as the equivalent single sigmoid unit."""
    rng = np.random.default_rng(4)
    h = rng.standard_normal((50, 4))
    labels = rng.integers(0, 2, size=50)
    owners = [f"c{i % 3}" for i in range(50)]
    w2, b2 = rng.standard_normal((4, 2)), rng.standard_normal(2)
    two = bind_influence(h, labels, owners, w2, b2)
    one = bind_influence(h, labels, owners, w2[:, 1:] - w2[:, :1], b2[1:] - b2[:1])
    np.testing.assert_allclose(two.vectors, one.vectors)
    assert two.influence(h[0], 0) == pytest.approx(one.influence(h[0], 0))


def test_bad_input_rejected() -> None:
    index, h = _toy_index(3)
    with pytest.raises(ValueError):
        index.influence(h[0][:2], 0)
    with pytest.raises(ValueError):
        index.influence(h[0], 3)
    with pytest.raises(ValueError):
        bind_influence(h, np.full(len(h), 5), ["a"] * len(h), np.ones((4, 3)), np.ones(3))
    with pytest.raises(ValueError):
        bind_influence(h, np.zeros(len(h)), ["a"] * len(h), np.ones((4, 3)), np.ones(3), damping=0)


def test_influence_is_one_small_mat_vec() -> None:
    """8 contributors over a 17-parameter layer: scoring costs microseconds."""
    _, results = run_experiment()
    mlp = results["mlp"]
    assert mlp.index.vectors.shape == (CONTRIBUTORS, mlp.h_test.shape[1] + 1)
    h, c = mlp.h_test[0], int(mlp.predicted[0])
    mlp.index.score_vector(h, c)
    rounds = 2_000
    started = time.perf_counter()
    for _ in range(rounds):
        mlp.index.score_vector(h, c)
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 200e-6  # generous for slow CI; typically a few microseconds


def test_knn_weights() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 3))
    labels = np.array([0] * 15 + [1] * 15)
    owners = ["a"] * 15 + ["b"] * 15
    knn = KnnIndex(x, labels, owners)
    scores = knn.weights(x[0], 0, k=1)
    assert scores["a"] > 0 and scores["b"] == 0.0
    assert influence_weights(scores) == {"a": 1_000_000}
    encode(knn.evidence(scores, predicted_class=0, k=1))
    everything = knn.weights(x[0], 1, k=100)
    assert everything["a"] < 0 < everything["b"]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_scores_equal_gradient_dot_vector(k: int) -> None:
    """score_c = (grad of -log p(predicted)) . v_c / n, with g formed explicitly."""
    index, h = _toy_index(k)
    for row in h[:4]:
        for c in range(index.classes):
            z = row @ index.weights + index.bias
            if k == 1:
                residual = np.array([1 / (1 + np.exp(-z[0])) - c])
            elif k == 2:
                residual = np.array([1 / (1 + np.exp(-(z[1] - z[0]))) - c])
            else:
                residual = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                residual[c] -= 1.0
            g = np.outer(np.append(row, 1.0), residual).ravel()
            expected = index.vectors @ g / index.examples
            np.testing.assert_allclose(index.score_vector(row, c), expected, rtol=1e-10)
