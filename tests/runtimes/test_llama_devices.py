"""llama.cpp's devices (read through ggml's registry) and how many layers to offload."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from edged.devtools.tiny_gguf import N_LAYER
from runtimes.gguf_file import check_gguf
from runtimes.llama_cpp import LlamaCppBackend
from runtimes.llama_devices import (
    ALL_LAYERS,
    AUTO,
    COMPUTE_MARGIN_BYTES,
    gpu_free_bytes,
    list_devices,
    offloaded_layers,
    plan_gpu_layers,
    processor_label,
)
from tests.runtimes.conftest import tiny_spec

GIB = 1 << 30


def test_the_build_lists_its_cpu_with_real_memory() -> None:
    devices = list_devices(llama_cpp)
    cpus = [device for device in devices if device.kind == "CPU"]
    assert len(cpus) == 1 and cpus[0].name == "CPU"
    assert 0 < cpus[0].free_bytes <= cpus[0].total_bytes
    # GPU memory is only what GPU devices report: none on a build without offload.
    if not llama_cpp.llama_supports_gpu_offload():
        assert gpu_free_bytes(devices) == 0 and not any(d.is_gpu for d in devices)


def test_auto_offloads_everything_that_fits() -> None:
    fits = dict(supports_offload=True, n_layers=24, weights_bytes=2 * GIB,
                kv_cache_bytes=GIB // 2)
    room = 2 * GIB + GIB // 2 + COMPUTE_MARGIN_BYTES
    assert plan_gpu_layers(AUTO, free_bytes=room, **fits) == ALL_LAYERS  # type: ignore[arg-type]
    # Half the weights' room: half the 25 layers (24 blocks and the output), rounded down.
    half = GIB + GIB // 2 + COMPUTE_MARGIN_BYTES
    assert plan_gpu_layers(AUTO, free_bytes=half, **fits) == 12  # type: ignore[arg-type]
    # Not even the KV cache and the margin: nothing.
    assert plan_gpu_layers(AUTO, free_bytes=GIB // 2, **fits) == 0  # type: ignore[arg-type]


def test_counts_are_kept_and_nothing_offloads_without_a_gpu_build() -> None:
    sizes = dict(n_layers=24, weights_bytes=GIB, kv_cache_bytes=0, free_bytes=0)
    assert plan_gpu_layers(7, supports_offload=True, **sizes) == 7  # type: ignore[arg-type]
    assert plan_gpu_layers(-1, supports_offload=True, **sizes) == -1  # type: ignore[arg-type]
    for requested in (AUTO, 7, -1):
        assert plan_gpu_layers(requested, supports_offload=False,  # type: ignore[arg-type]
                               **sizes) == 0


def test_offloaded_layers_and_processor_words() -> None:
    assert offloaded_layers(ALL_LAYERS, 18) == 19  # 18 blocks and the output layer
    assert offloaded_layers(40, 18) == 19
    assert offloaded_layers(9, 18) == 9
    assert offloaded_layers(0, 18) == 0
    assert processor_label(100, 0) == "CPU"
    assert processor_label(0, 100) == "100% GPU"
    assert processor_label(48, 52) == "48%/52% CPU/GPU"
    assert processor_label(1, 10_000) == "100% GPU"


def test_gguf_summary_reads_the_layer_count(tiny_gguf_path: Path) -> None:
    summary = check_gguf(tiny_gguf_path)
    assert summary.architecture == "llama"
    assert summary.number("block_count") == N_LAYER
    assert summary.number("no_such_key", 7) == 7


def test_a_cpu_model_reports_where_it_runs(tiny_gguf_path: Path) -> None:
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path))
    try:
        described = backend.describe()
    finally:
        backend.close()
    assert described["layers"] == N_LAYER + 1
    if not llama_cpp.llama_supports_gpu_offload():
        assert described["processor"] == "CPU"
        assert described["gpu_layers"] == 0 and described["device_memory_bytes"] == 0


def test_auto_with_no_free_gpu_memory_offloads_nothing(
        tiny_gguf_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that says it can offload, on a machine whose devices report no GPU: the
    free memory really read from ggml is 0, so auto plans 0 layers and says CPU. (With a
    GPU the tiny model fits, and every layer goes there.)"""
    free = gpu_free_bytes(list_devices(llama_cpp))
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path, options={"n_gpu_layers": AUTO}))
    try:
        described = backend.describe()
    finally:
        backend.close()
    if free == 0:
        assert described["gpu_layers"] == 0 and described["processor"] == "CPU"
    else:
        assert described["gpu_layers"] == N_LAYER + 1 and "GPU" in described["processor"]
