"""The devices llama.cpp can run on, their free memory, and how many layers to offload.

llama.cpp (through ggml's backend registry) knows which devices its build supports: the
CPU always, and a CUDA, Metal, Vulkan, ... GPU when built with one. llama-cpp-python
exposes none of that registry, so :func:`list_devices` reads it through ctypes from the
``libggml`` that llama-cpp-python ships and has already loaded.

:func:`plan_gpu_layers` turns a ``gpu_layers`` request (``"auto"`` or a count) into the
``n_gpu_layers`` llama.cpp is given. ``auto`` offloads every layer when the build
supports offload and the model fits the free memory the GPUs report, else as many
layers as fit, else none; the KV cache (which llama.cpp keeps next to the offloaded
layers) and a margin for compute buffers are counted first.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

AUTO = "auto"
ALL_LAYERS = -1  # llama.cpp: a negative n_gpu_layers offloads every layer
# Room left on the device for llama.cpp's compute buffers and the CUDA context.
COMPUTE_MARGIN_BYTES = 512 << 20
# ggml_backend_dev_type: CPU, GPU (dedicated memory), IGPU (host memory), ACCEL, META.
_GPU_TYPES = {1: "GPU", 2: "IGPU"}
_TYPE_NAMES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL", 4: "META"}


@dataclass(frozen=True)
class Device:
    """One ggml backend device as llama.cpp sees it now."""

    index: int
    name: str
    description: str
    kind: str  # CPU, GPU, IGPU, ACCEL
    free_bytes: int
    total_bytes: int

    @property
    def is_gpu(self) -> bool:
        return self.kind in _GPU_TYPES.values()


def list_devices(llama_cpp: ModuleType) -> list[Device]:
    """Every device of this llama.cpp build, with its free and total memory now."""
    from llama_cpp import _ggml  # the libggml llama-cpp-python loaded with libllama

    llama_cpp.llama_backend_init()  # registers the build's backends; idempotent
    lib = _ggml_functions(_ggml.libggml)
    devices = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        devices.append(Device(
            index=index,
            name=(lib.ggml_backend_dev_name(device) or b"").decode(errors="replace"),
            description=(lib.ggml_backend_dev_description(device) or b"").decode(
                errors="replace"),
            kind=_TYPE_NAMES.get(lib.ggml_backend_dev_type(device), "unknown"),
            free_bytes=free.value, total_bytes=total.value))
    return devices


def gpu_free_bytes(devices: Sequence[Device]) -> int:
    """Free memory summed over the GPUs (llama.cpp splits layers across all of them)."""
    return sum(device.free_bytes for device in devices if device.is_gpu)


def plan_gpu_layers(requested: int | str, *, supports_offload: bool, n_layers: int,
                    weights_bytes: int, kv_cache_bytes: int, free_bytes: int) -> int:
    """The ``n_gpu_layers`` to load with: ``requested`` as given (a count, or -1 for all)
    when offload is possible, or for ``"auto"`` what fits in ``free_bytes``.

    llama.cpp counts ``n_layers`` repeating blocks plus the output layer, so a model has
    ``n_layers + 1`` offloadable layers; each is taken to weigh an equal share of the
    weights file.
    """
    if not supports_offload:
        return 0
    if requested != AUTO:
        return int(requested)
    room = free_bytes - kv_cache_bytes - COMPUTE_MARGIN_BYTES
    if weights_bytes <= room:
        return ALL_LAYERS
    per_layer = weights_bytes / (n_layers + 1) if n_layers >= 0 else weights_bytes
    return max(0, min(n_layers, int(room // per_layer))) if room > 0 else 0


def offloaded_layers(n_gpu_layers: int, n_layers: int) -> int:
    """How many of the ``n_layers + 1`` layers llama.cpp puts on the GPU for a count."""
    total = n_layers + 1
    return total if n_gpu_layers < 0 else min(n_gpu_layers, total)


def processor_label(cpu_bytes: int, gpu_bytes: int) -> str:
    """``ollama ps``'s wording: ``CPU``, ``100% GPU`` or ``48%/52% CPU/GPU``."""
    if gpu_bytes <= 0:
        return "CPU"
    if cpu_bytes <= 0:
        return "100% GPU"
    gpu_percent = round(100 * gpu_bytes / (cpu_bytes + gpu_bytes))
    if gpu_percent >= 100:
        return "100% GPU"
    return f"{100 - gpu_percent}%/{gpu_percent}% CPU/GPU"


def _ggml_functions(lib: Any) -> Any:
    """Declare the ggml backend-registry functions used here (idempotent)."""
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_count.argtypes = []
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    return lib
