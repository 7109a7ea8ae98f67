"""The ONNX Runtime backend on tiny generated graphs (see edged.devtools.tiny_onnx).

This machine's onnxruntime-gpu build lists CUDA (and TensorRT) as available but has no
CUDA libraries, so sessions really run on CPU: the tests check that the backend reports
what the session uses, never what was asked for.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edged.devtools.tiny_onnx import LinearClassifier, write_int64_model, write_linear_classifier
from runtimes import load_backend
from runtimes.base import (
    Backend,
    BackendError,
    GenerationParams,
    InvalidInput,
    MissingDependency,
    ModelSpec,
    UnsupportedOperation,
)
from runtimes.fake import FakeBackend
from runtimes.onnx_runtime import OnnxBackend, choose_providers, graph_metadata

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> LinearClassifier:
    return write_linear_classifier(tmp_path_factory.mktemp("onnx") / "linear.onnx", seed=7)


def onnx_spec(path: Path, **options: object) -> ModelSpec:
    return ModelSpec(name="tiny-onnx", path=path, threads=1, options=options)


@pytest.fixture
def backend(classifier: LinearClassifier) -> Iterator[Backend]:
    loaded = load_backend("onnx", onnx_spec(classifier.path))
    yield loaded
    loaded.close()


def rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 4)).astype(np.float32)


def test_describe_reports_tensors_and_the_providers_in_use(backend: Backend) -> None:
    assert isinstance(backend, OnnxBackend)
    described = backend.describe()
    assert described["runtime"] == "onnx"
    assert described["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert described["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
    ]
    # No usable GPU here: the default asks for CUDA first (the build lists it) but the
    # session runs on CPU, and that is what is reported.
    assert described["requested_providers"] == ["CUDAExecutionProvider", *CPU]
    assert described["providers"] == CPU
    assert backend._session is not None
    assert described["providers"] == backend._session.get_providers()


def test_predict_matches_numpy(backend: Backend, classifier: LinearClassifier) -> None:
    x = rows(5)
    outputs = backend.predict({"input": x})
    assert sorted(outputs) == ["logits", "probabilities"]
    assert outputs["logits"].dtype == np.float32
    assert outputs["logits"].shape == (5, 3)
    np.testing.assert_allclose(outputs["logits"], classifier.logits(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        outputs["probabilities"], classifier.probabilities(x), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-6)


def test_stacked_requests_give_each_row_its_own_result(backend: Backend) -> None:
    requests = [rows(1, seed=1), rows(3, seed=2), rows(2, seed=3)]
    alone = [backend.predict({"input": r}) for r in requests]
    stacked = backend.predict({"input": np.concatenate(requests, axis=0)})
    start = 0
    for request, result in zip(requests, alone, strict=True):
        end = start + len(request)
        for name in ("probabilities", "logits"):
            np.testing.assert_allclose(stacked[name][start:end], result[name], rtol=1e-6)
        start = end
    assert start == len(stacked["logits"])


@pytest.mark.parametrize(
    ("inputs", "param", "reason"),
    [
        ({"features": rows(1)}, "features", "unknown input"),
        ({}, "input", "missing input"),
        ({"input": rows(1), "extra": rows(1)}, "extra", "unknown input"),
        ({"input": rows(2).astype(np.float64)}, "input", "datatype FP32"),
        ({"input": rows(2).astype(np.int64)}, "input", "datatype FP32"),
        ({"input": rows(2).reshape(2, 2, 2)}, "input", "2 dimensions"),
        ({"input": np.zeros(4, dtype=np.float32)}, "input", "2 dimensions"),
        ({"input": np.zeros((2, 5), dtype=np.float32)}, "input", "size 4 on axis 1"),
        ({"input": [[0.0, 0.0, 0.0, 0.0]]}, "input", "must be an array"),
    ],
)
def test_bad_inputs_are_refused(
    backend: Backend, inputs: dict[str, np.ndarray], param: str, reason: str
) -> None:
    with pytest.raises(InvalidInput, match=reason) as caught:
        backend.predict(inputs)
    assert caught.value.param == param
    assert isinstance(caught.value, BackendError)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_refused(backend: Backend, bad: float) -> None:
    x = rows(3)
    x[1, 2] = bad
    with pytest.raises(InvalidInput, match="NaN or infinity") as caught:
        backend.predict({"input": x})
    assert caught.value.param == "input"


def test_non_finite_floats_pass_when_the_model_allows_them(classifier: LinearClassifier) -> None:
    backend = load_backend("onnx", onnx_spec(classifier.path, allow_non_finite=True))
    try:
        x = rows(2)
        x[0, 0] = np.nan
        outputs = backend.predict({"input": x})
        assert np.isnan(outputs["logits"][0]).all()
        np.testing.assert_allclose(outputs["logits"][1], classifier.logits(x[1:])[0], rtol=1e-5)
    finally:
        backend.close()


def test_int64_inputs(tmp_path: Path) -> None:
    path = write_int64_model(tmp_path / "sum.onnx")
    backend = load_backend("onnx", onnx_spec(path))
    try:
        assert backend.describe()["inputs"] == [
            {"name": "ids", "datatype": "INT64", "shape": [-1, 2]}
        ]
        ids = np.array([[1, 2], [30, 40], [2**40, 1]], dtype=np.int64)
        total = backend.predict({"ids": ids})["total"]
        assert total.dtype == np.int64
        assert total.tolist() == [[3], [70], [2**40 + 1]]
        with pytest.raises(InvalidInput, match="datatype INT64"):
            backend.predict({"ids": ids.astype(np.int32)})
        with pytest.raises(InvalidInput, match="datatype INT64"):
            backend.predict({"ids": ids.astype(np.float32)})
    finally:
        backend.close()


def test_asking_for_cuda_without_cuda_libraries_runs_on_cpu_and_says_so(
    classifier: LinearClassifier, caplog: pytest.LogCaptureFixture
) -> None:
    assert "CUDAExecutionProvider" in ort.get_available_providers()  # listed by the build...
    spec = onnx_spec(classifier.path, providers=["CUDAExecutionProvider"])
    with caplog.at_level(logging.WARNING, logger="runtimes.onnx_runtime"):
        backend = load_backend("onnx", spec)
    try:
        described = backend.describe()
        assert described["requested_providers"] == ["CUDAExecutionProvider", *CPU]
        assert described["providers"] == CPU  # ...but not usable: never claimed
        assert "CUDAExecutionProvider could not be used" in caplog.text
        x = rows(2)
        np.testing.assert_allclose(
            backend.predict({"input": x})["logits"], classifier.logits(x), rtol=1e-5
        )
    finally:
        backend.close()


def test_explicit_cpu_provider_logs_nothing(
    classifier: LinearClassifier, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="runtimes.onnx_runtime"):
        backend = load_backend("onnx", onnx_spec(classifier.path, providers=CPU))
    try:
        assert backend.describe()["requested_providers"] == CPU
        assert backend.describe()["providers"] == CPU
        assert caplog.records == []
    finally:
        backend.close()


def test_provider_choice() -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    # TensorRT only when asked; CPU always last.
    assert choose_providers(None, available) == ["CUDAExecutionProvider", *CPU]
    assert choose_providers(None, CPU) == CPU
    assert choose_providers(["CPUExecutionProvider", "TensorrtExecutionProvider"], available) == [
        "TensorrtExecutionProvider",
        *CPU,
    ]
    # Known to onnxruntime but not in this build: dropped, no onnxruntime UserWarning.
    assert choose_providers(["CoreMLExecutionProvider"], available) == CPU
    with pytest.raises(BackendError, match="unknown ONNX Runtime execution provider"):
        choose_providers(["CudaProvider"], available)
    with pytest.raises(BackendError, match="must be a list"):
        choose_providers("CUDAExecutionProvider", available)


def test_bad_options_and_files(classifier: LinearClassifier, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="graph_optimization"):
        load_backend("onnx", onnx_spec(classifier.path, graph_optimization="max"))
    with pytest.raises(BackendError, match="not found"):
        load_backend("onnx", onnx_spec(tmp_path / "missing.onnx"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(BackendError, match="could not load") as caught:
        load_backend("onnx", onnx_spec(garbage))
    assert str(tmp_path) not in str(caught.value)  # errors never echo paths
    with pytest.raises(BackendError, match="not a readable ONNX model"):
        graph_metadata(garbage)


def test_graph_metadata_matches_describe(backend: Backend, classifier: LinearClassifier) -> None:
    metadata = graph_metadata(classifier.path)
    described = backend.describe()
    assert metadata["inputs"] == described["inputs"]
    assert metadata["outputs"] == described["outputs"]
    assert metadata["float_initializers"] == [
        {"name": "linear.weight", "datatype": "FP32", "shape": [4, 3]},
        {"name": "linear.bias", "datatype": "FP32", "shape": [3]},
    ]


def test_graph_metadata_leaves_out_integer_initializers(tmp_path: Path) -> None:
    metadata = graph_metadata(write_int64_model(tmp_path / "sum.onnx"))
    assert metadata == {
        "inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, 2]}],
        "outputs": [{"name": "total", "datatype": "INT64", "shape": [-1, 1]}],
        "float_initializers": [],
    }


def test_text_operations_memory_concurrency_and_close(
    backend: Backend, classifier: LinearClassifier
) -> None:
    with pytest.raises(UnsupportedOperation):
        backend.generate("hello", GenerationParams(), threading.Event())
    with pytest.raises(UnsupportedOperation):
        backend.embed(["hello"])
    assert backend.max_concurrency == 1
    assert backend.memory_bytes() == classifier.path.stat().st_size
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        backend.predict({"input": rows(1)})


def test_other_backends_refuse_predict_and_describe_nothing(tmp_path: Path) -> None:
    fake = FakeBackend.load(ModelSpec(name="fake", path=tmp_path / "none"))
    with pytest.raises(UnsupportedOperation, match="fake runtime"):
        fake.predict({"input": rows(1)})
    assert fake.describe() == {}


def test_missing_onnxruntime_names_the_extra(
    classifier: LinearClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes the import fail
    with pytest.raises(MissingDependency, match=r"pip install 'edged\[onnx\]'") as caught:
        load_backend("onnx", onnx_spec(classifier.path))
    assert caught.value.package == "onnxruntime"
