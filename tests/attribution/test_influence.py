"""Fidelity and unit tests of ``influence/1`` and ``knn/1``.

Fidelity: scikit-learn's bundled breast-cancer data, standardised, split into a
held-out test set and 8 non-IID contributors (training points sorted along the
first principal component, cut into 8 contiguous chunks). A logistic
regression and a small MLP are trained on all contributors, then retrained
(same hyper-parameters, same seed) without each contributor in turn. Ground
truth for a test point and contributor: the drop in the predicted class's
probability when that contributor is removed. Both models are binary with one
sigmoid output, so the predicted class's probability is monotone in its signed
logit; the drop is measured on the logit, which ranks contributors exactly as
the probability does without losing precision on saturated points. Each
method's per-contributor scores are compared with it by Spearman's rank
correlation per test point, averaged over the test set.

``run_experiment`` is shared with ``bench/bench_influence.py``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from attribution.canonical import encode
from attribution.influence import (
    PPM_TOTAL if False else "PPM",  # type: ignore[misc]  # placeholder removed below
)
