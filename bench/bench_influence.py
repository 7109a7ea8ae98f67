"""Benchmark: fidelity and per-prediction cost of ``influence/1`` (and ``knn/1``).

Runs the fidelity experiment of ``edged/devtools/fidelity.py`` (8 non-IID
contributors, leave-one-contributor-out retraining as ground truth) on
scikit-learn's bundled breast-cancer, wine and digits data and prints:

1. mean Spearman of ``influence/1``, ``knn/1`` and a random split against the
   ground truth, for a logistic regression and a 16-unit MLP, each bound on
   the standardised model and on the same model with the standardisation
   folded into its first layer (as the demo classifier is written), with the
   damping on standardised features (the default) and on raw features (index
   format 1); plus a damping sweep for ``influence/1``;
2. the time to bind the datanet (per-example gradients, Hessian, solve);
3. the cost per prediction of ``influence/1`` (scores only: one gradient and
   one [contributors, p] mat-vec; and the full ``attribute``: scores, ppm and
   evidence) against the model's own prediction of one row: scikit-learn's
   ``predict_proba``, a numpy forward pass, and ONNX Runtime (CPU, via
   skl2onnx) when both are installed.

Numbers come from one machine and one run; timings are the median of
``--repeats`` batches. Not a test: no asserts on timings.

Run: ``.venv/bin/python bench/bench_influence.py [--repeats 7] [--datasets ...]``
(about a minute on 2 cores; digits takes most of it).
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

from attribution.influence import RAW, STANDARDISED  # noqa: E402
from edged.devtools.fidelity import (  # noqa: E402
    DATASETS,
    ModelResult,
    Split,
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


def fidelity_table(experiments: dict[str, tuple[Split, dict[str, ModelResult]]]) -> None:
    print("\nFidelity: mean Spearman vs leave-one-contributor-out (per test point, averaged)")
    print("influence/1 bound on the standardised model / on the folded model, damping 0.01 "
          "on\nstandardised features (default) and on raw features (index format 1)")
    print(f"{'data set':<15}{'model':<22}{'std':>7}{'folded':>8}{'std raw':>9}"
          f"{'folded raw':>12}{'knn/1':>8}{'random':>8}{'n':>6}{'k':>4}")
    for dataset, (split, results) in experiments.items():
        for result in results.values():
            f = result.fidelity
            raw = [result.influence_fidelity(folded=folded, damping_basis=RAW)
                   for folded in (False, True)]
            print(f"{dataset:<15}{result.spec.name:<22}{f['influence/1']:>7.3f}"
                  f"{f['influence/1 folded']:>8.3f}{raw[0]:>9.3f}{raw[1]:>12.3f}"
                  f"{f['knn/1']:>8.3f}{f['random']:>8.3f}{len(split.x_train):>6}"
                  f"{split.classes:>4}")
    print("\nn = training examples (8 contributors), k = classes; test points: "
          + ", ".join(f"{d} {len(s.x_test)}" for d, (s, _) in experiments.items()))
    print("\ninfluence/1 by damping on the folded model, standardised basis (raw basis):")
    print(f"{'data set':<15}{'model':<22}" + "".join(f"{d:>15g}" for d in DAMPINGS))
    for dataset, (_, results) in experiments.items():
        for result in results.values():
            cells = [
                f"{result.influence_fidelity(folded=True, damping=d):.3f} "
                f"({result.influence_fidelity(folded=True, damping=d, damping_basis=RAW):.3f})"
                for d in DAMPINGS
            ]
            print(f"{dataset:<15}{result.spec.name:<22}" + "".join(f"{c:>15}" for c in cells))


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
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS),
                        default=list(DATASETS))
    args = parser.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    experiments = {}
    for dataset in args.datasets:
        started = time.perf_counter()
        experiments[dataset] = run_experiment(dataset)
        print(f"{dataset}: train + 8 retrainings per model + indices: "
              f"{time.perf_counter() - started:.1f} s")
    fidelity_table(experiments)
    split, results = next(iter(experiments.values()))
    print(f"\n({next(iter(experiments))} data, damping basis {STANDARDISED})")
    cost_table(split, results, args.repeats)


if __name__ == "__main__":
    main()
