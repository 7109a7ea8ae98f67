"""Benchmark: fidelity and per-prediction cost of ``influence/1`` (and ``knn/1``).

Runs the fidelity experiment of ``tests/attribution/test_influence.py``
(breast-cancer data, 8 non-IID contributors, leave-one-contributor-out
retraining as ground truth) and prints:

1. mean Spearman of ``influence/1``, ``knn/1`` and a random split against the
   ground truth, for a logistic regression and a 16-unit MLP, plus a damping
   sweep for ``influence/1``;
2. the time to bind the datanet (per-example gradients, Hessian, solve);
3. the cost per prediction of ``influence/1`` (scores only: one gradient and
   one [contributors, p] mat-vec; and the full ``attribute``: scores, ppm and
   evidence) against the model's own prediction of one row: scikit-learn's
   ``predict_proba``, a numpy forward pass, and ONNX Runtime (CPU, via
   skl2onnx) when both are installed.

Numbers come from one machine and one run; timings are the median of
``--repeats`` batches. Not a test: no asserts on timings.

Run: ``.venv/bin/python bench/bench_influence.py [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attribution.influence import bind_influence  # noqa: E402
from tests.attribution.test_influence import (  # noqa: E402
    ModelResult,
    Split,
    influence_scores,
    mean_spearman,
    run_experiment,
)

DAMPINGS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def per_call(fn: Callable[[], Any], repeats: int, target_seconds: float = 0.05) -> float:
    """Median seconds per call over ``repeats`` batches of ~``target_seconds`` each."""
    fn()
    calls = 1
    while True:
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - started >= target_seconds / 4:
            break
        calls *= 2
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - started) / calls)
    return statistics.median(samples)


def numpy_forward(result: ModelResult, x: np.ndarray) -> Callable[[], Any]:
    """One-row forward pass with numpy to the predicted-class probability."""
    model = result.model
    if hasattr(model, "coefs_"):
        w0, b0, w1, b1 = (
            model.coefs_[0],
            model.intercepts_[0],
            model.coefs_[1],
            model.intercepts_[1],
        )

        def mlp() -> Any:
            hidden = np.maximum(x @ w0 + b0, 0.0)
            return 1.0 / (1.0 + np.exp(-(hidden @ w1 + b1)))

        return mlp
    w, b = model.coef_.T, model.intercept_

    def linear() -> Any:
        return 1.0 / (1.0 + np.exp(-(x @ w + b)))

    return linear


def onnx_predict(result: ModelResult, x: np.ndarray) -> Callable[[], Any] | None:
    """ONNX Runtime (CPU, one thread) on one row, or None when skl2onnx/onnxruntime are absent."""
    try:
        import onnxruntime as ort
        from skl2onnx import to_onnx
    except ImportError:
        return None
    row = x[None, :].astype(np.float32)
    onx = to_onnx(result.model, row, options={"zipmap": False}, target_opset=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        onx.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: row})


def fidelity_table(split: Split, results: dict[str, ModelResult]) -> None:
    print("\nFidelity: mean Spearman vs leave-one-contributor-out (per test point, averaged)")
    print(f"{'model':<22}{'influence/1':>13}{'knn/1':>10}{'random':>10}{'target':>9}")
    targets = {"lr": 0.85, "mlp": 0.5}
    for key, result in results.items():
        f = result.fidelity
        print(
            f"{result.spec.name:<22}{f['influence/1']:>13.3f}{f['knn/1']:>10.3f}"
            f"{f['random']:>10.3f}{targets[key]:>9.2f}"
        )
    print(
        f"\n{len(split.x_test)} test points, {len(split.names)} contributors, "
        f"{len(split.x_train)} training examples"
    )
    print("\ninfluence/1 by damping (default 0.01):")
    print(f"{'model':<22}" + "".join(f"{d:>9g}" for d in DAMPINGS))
    for result in results.values():
        w, b = result.spec.layer(result.model)
        h_train = result.spec.features(result.model, split.x_train)
        row = []
        for damping in DAMPINGS:
            index = bind_influence(h_train, split.y_train, split.owner, w, b, damping=damping)
            row.append(
                mean_spearman(
                    influence_scores(index, result.h_test, result.predicted), result.truth
                )
            )
        print(f"{result.spec.name:<22}" + "".join(f"{r:>9.3f}" for r in row))


def cost_table(split: Split, results: dict[str, ModelResult], repeats: int) -> None:
    print("\nCost per prediction (one row, microseconds; median of batches)")
    header = (
        f"{'model':<22}{'bind ms':>9}{'p':>5}{'scores':>8}{'attribute':>11}"
        f"{'sk proba':>10}{'numpy':>8}{'onnx':>8}{'scores/onnx':>13}{'scores/sk':>11}"
    )
    print(header)
    for result in results.values():
        x = split.x_test[0]
        h, c = result.h_test[0], int(result.predicted[0])
        index = result.index
        scores_s = per_call(partial(index.score_vector, h, c), repeats)
        attribute_s = per_call(partial(index.attribute, h, c), repeats)
        sk_s = per_call(partial(result.model.predict_proba, x[None, :]), repeats)
        np_s = per_call(numpy_forward(result, x), repeats)
        onnx_fn = onnx_predict(result, x)
        onnx_s = per_call(onnx_fn, repeats) if onnx_fn is not None else float("nan")
        print(
            f"{result.spec.name:<22}{result.bind_seconds * 1e3:>9.2f}"
            f"{index.vectors.shape[1]:>5}{scores_s * 1e6:>8.1f}{attribute_s * 1e6:>11.1f}"
            f"{sk_s * 1e6:>10.1f}{np_s * 1e6:>8.1f}{onnx_s * 1e6:>8.1f}"
            f"{scores_s / onnx_s:>13.1%}{scores_s / sk_s:>11.1%}"
        )
    print(
        "\nscores = influence/1's per-contributor scores (gradient + one mat-vec); attribute ="
        "\nscores + ppm + evidence dict (+ params digest inputs). Percentages: scores over the"
        "\nmodel's own one-row prediction."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    started = time.perf_counter()
    split, results = run_experiment()
    print(
        f"experiment (train + 8 retrainings per model + both indices): "
        f"{time.perf_counter() - started:.1f} s"
    )
    fidelity_table(split, results)
    cost_table(split, results, args.repeats)


if __name__ == "__main__":
    main()
