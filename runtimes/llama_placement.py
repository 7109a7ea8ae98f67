"""Where a llama.cpp load puts a model's weights, decided before it loads: repacked into
the CPU's extra buffer types or not (:func:`default_repack`, honoured by
:func:`llama_type`), and how many layers go to a GPU (:class:`GpuPlacement`, planned by
:mod:`runtimes.llama_devices` against the GPUs' free memory and the KV cache
:func:`kv_cache_bytes` estimates). :mod:`runtimes.llama_cpp` loads with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtimes.base import BackendError, ModelSpec
from runtimes.gguf_file import GGUFError, check_gguf
from runtimes.llama_devices import AUTO, gpu_free_bytes, list_devices, plan_gpu_layers

if TYPE_CHECKING:
    from types import ModuleType

    from llama_cpp import Llama

_KV_CACHE_BYTES_PER_VALUE = 2  # llama.cpp's default K/V cache type is f16


def default_repack(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether to let llama.cpp repack weights into its extra CPU buffer types by default.

    Off when the CPU advertises AMX: llama.cpp then routes quantised matmuls through AMX
    tiles, and some VMs (this project's build machine among them) advertise AMX but fault
    on its first ``ldtilecfg``, killing the process. Elsewhere repacking is a speed-up.
    """
    try:
        with cpuinfo.open(encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return "amx_tile" not in line.split()
    except OSError:
        pass
    return True


def llama_type(llama_cpp: ModuleType, repack: bool) -> type[Llama]:
    """``llama_cpp.Llama``, or a subclass that loads with ``use_extra_bufts=False``.

    ``Llama()`` has no parameter for it, but its ``__init__`` assigns ``self.model_params``
    before loading the model: a property setter adjusts the struct at that moment.
    """
    if repack:
        llama: type[Llama] = llama_cpp.Llama
        return llama

    class NoRepackLlama(llama_cpp.Llama):  # type: ignore[name-defined]
        @property
        def model_params(self) -> Any:
            return self.__dict__["_no_repack_model_params"]

        @model_params.setter
        def model_params(self, params: Any) -> None:
            params.use_extra_bufts = False
            self.__dict__["_no_repack_model_params"] = params

    return NoRepackLlama


@dataclass(frozen=True)
class GpuPlacement:
    """The ``n_gpu_layers`` a model was loaded with, and the GPU memory the load took
    (free GPU memory before it minus after it, engine contexts included)."""

    n_gpu_layers: int
    free_before: int = 0
    device_bytes: int = 0

    @classmethod
    def plan(cls, llama_cpp: ModuleType, spec: ModelSpec, *, parallel: int) -> GpuPlacement:
        """``spec.options["n_gpu_layers"]`` (a count, -1 for all, or ``"auto"``, the
        default) for this build and the GPUs' free memory now (see llama_devices), with
        the KV cache of ``parallel`` sequences."""
        requested = spec.options.get("n_gpu_layers", AUTO)
        if not llama_cpp.llama_supports_gpu_offload():
            return cls(0)
        try:
            summary = check_gguf(spec.path)
        except GGUFError as exc:
            raise BackendError(f"model {spec.name!r}: {exc}") from None
        metadata = {key: str(value) for key, value in summary.values.items()}
        free = gpu_free_bytes(list_devices(llama_cpp))
        kv_bytes = kv_cache_bytes(metadata, spec.context_length) * parallel
        n_gpu_layers = plan_gpu_layers(
            requested, supports_offload=True, n_layers=summary.number("block_count"),
            weights_bytes=spec.path.stat().st_size, kv_cache_bytes=kv_bytes, free_bytes=free)
        return cls(n_gpu_layers, free_before=free)

    def loaded(self, llama_cpp: ModuleType) -> GpuPlacement:
        """This placement with the GPU memory the load took, read from the devices."""
        if self.n_gpu_layers == 0:
            return self
        used = self.free_before - gpu_free_bytes(list_devices(llama_cpp))
        return replace(self, device_bytes=max(0, used))


def kv_cache_bytes(metadata: Mapping[str, str], n_ctx: int) -> int:
    """K and V for every layer and position, from the GGUF's hyperparameters."""
    arch = metadata.get("general.architecture", "")

    def number(key: str, default: int) -> int:
        value = metadata.get(f"{arch}.{key}")
        return int(value) if value and value.isdigit() else default

    n_embd = number("embedding_length", 0)
    n_head = max(number("attention.head_count", 1), 1)
    n_head_kv = number("attention.head_count_kv", n_head)
    key_length = number("attention.key_length", n_embd // n_head)
    value_length = number("attention.value_length", n_embd // n_head)
    per_token = number("block_count", 0) * n_head_kv * (key_length + value_length)
    return per_token * n_ctx * _KV_CACHE_BYTES_PER_VALUE

