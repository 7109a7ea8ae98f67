"""ONNX models (classifiers, scorers, embedders) through ONNX Runtime.

Why one module of ~500 lines: it is one backend whose input checks, ``describe`` and
:func:`graph_metadata` (the same description read from the file, without a session)
share the datatype tables, so all three name tensors alike; the tables and this
docstring are a quarter of it.

Tensors in and out: :meth:`OnnxBackend.predict` takes named numpy arrays, checks them
against the graph (names, datatype, rank, fixed dimensions, and NaN/Inf in float inputs)
and raises :class:`~runtimes.base.InvalidInput` before anything runs, then returns every
tensor output by name. A dynamic first dimension is the batch: the daemon stacks the rows
of several requests along axis 0, runs once and splits the result.

Execution providers: ``spec.options["providers"]`` (a list of names, in order of
preference) or, by default, those of :data:`DEFAULT_PROVIDER_PREFERENCE` that this
onnxruntime build offers. TensorRT is used only when asked for (it compiles engines at
load time, minutes for a large graph). onnxruntime-gpu lists CUDA as available even when
the CUDA libraries are missing and then silently runs on CPU, so the providers reported by
:meth:`OnnxBackend.describe` are the ones the session reports it actually uses, never the
requested ones.

Text embeddings: with ``spec.options["tokenizer_path"]`` (a Hugging Face ``tokenizer.json``)
:meth:`OnnxBackend.embed` tokenizes the texts, feeds ``input_ids`` (and ``attention_mask``
and ``token_type_ids`` when the graph has them), takes ``spec.options["embedding_output"]``
(default: the first tensor output) and mean-pools a ``[batch, tokens, hidden]`` output over
the attention mask (a ``[batch, hidden]`` output is used as is), then L2-normalises. A text
longer than the model's maximum length (``spec.options["max_length"]``, else the
tokenizer's truncation length, else a fixed second dimension of ``input_ids``, else
:data:`DEFAULT_MAX_TOKENS`) raises :class:`~runtimes.base.ContextLengthExceeded`: texts are
never silently truncated.

Other ``spec.options``: ``allow_non_finite`` (false: NaN/Inf in float inputs are refused),
``graph_optimization`` (``"all"``, the default, ``"extended"``, ``"basic"`` or
``"disabled"``). ``spec.threads`` sets ONNX Runtime's intra-op thread count.

Datatypes are named as in the Open Inference Protocol (``FP32``, ``INT64``, ``BOOL``...);
shapes use -1 for a dynamic dimension. Outputs that are not tensors (sequences or maps,
e.g. skl2onnx's ZipMap) are described with ``datatype`` and ``shape`` None and not
returned by :meth:`OnnxBackend.predict`: export classifiers with ``zipmap=False``.

``onnxruntime`` and ``tokenizers`` are imported in :meth:`OnnxBackend.load` and ``onnx`` in
:func:`graph_metadata`, so this module imports without them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtimes.base import (
    Backend,
    BackendError,
    ContextLengthExceeded,
    Delta,
    Done,
    EmbeddingResult,
    GenerationParams,
    InvalidInput,
    MissingDependency,
    ModelSpec,
    Prompt,
    UnsupportedOperation,
)

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

DEFAULT_PROVIDER_PREFERENCE = (
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)
"""Providers tried by default, best first (TensorRT only when configured)."""

CPU_PROVIDER = "CPUExecutionProvider"
DEFAULT_MAX_TOKENS = 512
"""A text-embedding model's maximum length when neither options nor tokenizer give one."""
_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# ONNX TensorProto element type names -> Open Inference Protocol datatype names.
_ONNX_TO_OIP = {
    "FLOAT": "FP32",
    "DOUBLE": "FP64",
    "FLOAT16": "FP16",
    "BFLOAT16": "BF16",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "BOOL": "BOOL",
    "STRING": "BYTES",
}
# onnxruntime's type strings ("tensor(float)") -> OIP datatype names.
_ORT_TO_OIP = {
    "float": "FP32",
    "double": "FP64",
    "float16": "FP16",
    "bfloat16": "BF16",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
    "string": "BYTES",
}
# OIP datatype -> the numpy dtype an input array must have (BF16 has none in numpy).
OIP_TO_NUMPY: Mapping[str, np.dtype[Any]] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "FP16": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
    "BYTES": np.dtype(object),
}
_FLOAT_INITIALIZER_TYPES = frozenset({"FP32", "FP64", "FP16", "BF16"})
_OPTIMIZATION_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _dims(shape: Sequence[object] | None) -> list[int] | None:
    """A shape with -1 for every dimension that is symbolic, unknown or not positive."""
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _ort_datatype(type_string: str) -> str | None:
    """``"tensor(float)"`` -> ``"FP32"``; None for sequences, maps and unknown types."""
    if not (type_string.startswith("tensor(") and type_string.endswith(")")):
        return None
    return _ORT_TO_OIP.get(type_string[len("tensor(") : -1])


def graph_metadata(path: Path | str) -> dict[str, Any]:
    """Read a model's inputs, outputs and float initializers from the ONNX file; no session.

    Returns ``{"inputs": [...], "outputs": [...], "float_initializers": [...]}``; each
    input/output is ``{"name", "datatype", "shape"}`` as in :meth:`OnnxBackend.describe`
    (graph inputs that are initializers, as older exporters write them, are left out) and
    each float initializer is ``{"name", "datatype", "shape"}`` (candidates for the final
    linear layer's weights). External weight data is not loaded.
    """
    try:
        import onnx
    except ImportError:
        raise MissingDependency("onnx", "onnx") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError, OSError...
        raise BackendError(f"not a readable ONNX model: {type(error).__name__}") from None

    def value_info(value: Any) -> dict[str, Any]:
        if value.type.WhichOneof("value") != "tensor_type":
            return {"name": value.name, "datatype": None, "shape": None}
        tensor = value.type.tensor_type
        element = onnx.TensorProto.DataType.Name(tensor.elem_type)
        shape: list[int] | None = None
        if tensor.HasField("shape"):
            shape = [
                d.dim_value if d.WhichOneof("value") == "dim_value" else -1
                for d in tensor.shape.dim
            ]
        return {"name": value.name, "datatype": _ONNX_TO_OIP.get(element), "shape": _dims(shape)}

    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    floats = []
    for init in graph.initializer:
        datatype = _ONNX_TO_OIP.get(onnx.TensorProto.DataType.Name(init.data_type))
        if datatype in _FLOAT_INITIALIZER_TYPES:
            floats.append({"name": init.name, "datatype": datatype, "shape": list(init.dims)})
    return {
        "inputs": [value_info(v) for v in graph.input if v.name not in initializer_names],
        "outputs": [value_info(v) for v in graph.output],
        "float_initializers": floats,
    }


def choose_providers(requested: object, available: Sequence[str]) -> list[str]:
    """The provider list to hand to ``InferenceSession``, best first.

    ``requested`` is ``spec.options.get("providers")``: None for the default preference, or
    a list of provider names. Names onnxruntime does not know are an error (a typo must not
    silently mean CPU); known ones this build does not offer are dropped with a warning.
    CPU is always last, so a session can be created whatever else fails.
    """
    if requested is None:
        chosen = [p for p in DEFAULT_PROVIDER_PREFERENCE if p in available]
    else:
        if isinstance(requested, str) or not isinstance(requested, Sequence):
            raise BackendError("option 'providers' must be a list of execution provider names")
        from onnxruntime import get_all_providers

        known = set(get_all_providers())
        chosen = []
        for name in requested:
            if not isinstance(name, str) or name not in known:
                raise BackendError(f"unknown ONNX Runtime execution provider {name!r}")
            if name not in available:
                logger.warning("execution provider %s is not available in this build", name)
            elif name not in chosen:
                chosen.append(name)
    if CPU_PROVIDER in chosen:
        chosen.remove(CPU_PROVIDER)
    return [*chosen, CPU_PROVIDER]


class OnnxBackend(Backend):
    """One ``onnxruntime.InferenceSession``; see the module docstring."""

    runtime = "onnx"

    def __init__(
        self,
        spec: ModelSpec,
        session: InferenceSession,
        requested_providers: list[str],
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.spec = spec
        self.allow_non_finite = bool(spec.options.get("allow_non_finite", False))
        self.requested_providers = requested_providers
        self.providers: list[str] = list(session.get_providers())
        self.inputs = [
            {"name": i.name, "datatype": _ort_datatype(i.type), "shape": _dims(i.shape)}
            for i in session.get_inputs()
        ]
        self.outputs = [
            {"name": o.name, "datatype": _ort_datatype(o.type), "shape": _dims(o.shape)}
            for o in session.get_outputs()
        ]
        self._tensor_outputs = [o["name"] for o in self.outputs if o["datatype"] is not None]
        self._file_bytes = Path(spec.path).stat().st_size
        self._session: InferenceSession | None = session
        self._tokenizer = tokenizer
        self._max_tokens = DEFAULT_MAX_TOKENS
        self._pad_id = 0
        self._embedding_output: str | None = None
        if tokenizer is not None:
            self._setup_embeddings(tokenizer)

    def _setup_embeddings(self, tokenizer: Tokenizer) -> None:
        """Check the graph can embed text and settle the length limit and pad id."""
        names = {str(i["name"]) for i in self.inputs}
        if "input_ids" not in names:
            raise BackendError(f"model {self.spec.name!r}: a text model needs an 'input_ids' input")
        unknown = sorted(names - set(_TOKEN_INPUTS))
        if unknown:
            raise BackendError(
                f"model {self.spec.name!r}: cannot feed input {unknown[0]!r} from a tokenizer"
            )
        wanted = self.spec.options.get("embedding_output")
        if wanted is None:
            if not self._tensor_outputs:
                raise BackendError(f"model {self.spec.name!r} has no tensor output to embed with")
            wanted = self._tensor_outputs[0]
        if wanted not in self._tensor_outputs:
            raise BackendError(f"model {self.spec.name!r} has no tensor output {wanted!r}")
        self._embedding_output = str(wanted)
        limit = self.spec.options.get("max_length")
        truncation = tokenizer.truncation
        ids_shape = next(i["shape"] for i in self.inputs if i["name"] == "input_ids")
        if limit is None and truncation:
            limit = truncation.get("max_length")
        if limit is None and ids_shape is not None and len(ids_shape) == 2 and ids_shape[1] > 0:
            limit = ids_shape[1]
        self._max_tokens = int(limit) if limit else DEFAULT_MAX_TOKENS
        padding = tokenizer.padding
        if padding:
            self._pad_id = int(padding.get("pad_id", 0))
        # Whole texts, unpadded: lengths are checked and padding is done here.
        tokenizer.no_truncation()
        tokenizer.no_padding()

    @classmethod
    def load(cls, spec: ModelSpec) -> OnnxBackend:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependency("onnxruntime", "onnx") from None
        requested = choose_providers(spec.options.get("providers"), ort.get_available_providers())
        options = ort.SessionOptions()
        if spec.threads is not None:
            options.intra_op_num_threads = spec.threads
        level = spec.options.get("graph_optimization", "all")
        if level not in _OPTIMIZATION_LEVELS:
            raise BackendError(
                f"option 'graph_optimization' must be one of {sorted(_OPTIMIZATION_LEVELS)}"
            )
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _OPTIMIZATION_LEVELS[level]
        )
        if not Path(spec.path).is_file():
            raise BackendError(f"model {spec.name!r}: weights file not found")
        try:
            session = ort.InferenceSession(str(spec.path), options, providers=requested)
        except Exception as error:  # onnxruntime's Fail, InvalidGraph, NoSuchFile...
            # The message may carry the path; keep only the kind of failure.
            raise BackendError(
                f"model {spec.name!r}: ONNX Runtime could not load it ({type(error).__name__})"
            ) from error
        tokenizer = cls._load_tokenizer(spec)
        backend = cls(spec, session, requested, tokenizer)
        missing = [p for p in requested if p not in backend.providers]
        if missing:
            logger.warning(
                "model %s: execution providers %s could not be used; running on %s",
                spec.name,
                ", ".join(missing),
                ", ".join(backend.providers),
            )
        return backend

    @staticmethod
    def _load_tokenizer(spec: ModelSpec) -> Tokenizer | None:
        path = spec.options.get("tokenizer_path")
        if path is None:
            return None
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise MissingDependency("tokenizers", "onnx") from None
        if not Path(path).is_file():
            raise BackendError(f"model {spec.name!r}: tokenizer file not found")
        try:
            return Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises its own Exception subclasses
            raise BackendError(
                f"model {spec.name!r}: not a readable tokenizer.json ({type(error).__name__})"
            ) from error

    def describe(self) -> dict[str, Any]:
        """Runtime, providers in use (read back from the session) and requested, tensors."""
        return {
            "runtime": self.runtime,
            "providers": list(self.providers),
            "requested_providers": list(self.requested_providers),
            "inputs": [dict(i) for i in self.inputs],
            "outputs": [dict(o) for o in self.outputs],
        }

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`InvalidInput` unless ``inputs`` fits the graph exactly."""
        expected = {str(i["name"]) for i in self.inputs}
        unknown = sorted(set(inputs) - expected)
        if unknown:
            raise InvalidInput(f"unknown input {unknown[0]!r}", param=unknown[0])
        missing = sorted(expected - set(inputs))
        if missing:
            raise InvalidInput(f"missing input {missing[0]!r}", param=missing[0])
        for info in self.inputs:
            name = str(info["name"])
            self._check_tensor(name, info["datatype"], info["shape"], inputs[name])

    def _check_tensor(
        self, name: str, datatype: str | None, shape: list[int] | None, value: object
    ) -> None:
        if not isinstance(value, np.ndarray):
            raise InvalidInput(f"input {name!r} must be an array", param=name)
        dtype = OIP_TO_NUMPY.get(datatype) if datatype is not None else None
        if dtype is None:
            raise InvalidInput(f"input {name!r} has a datatype edged cannot feed", param=name)
        if value.dtype != dtype and not (datatype == "BYTES" and value.dtype.kind in "OSU"):
            raise InvalidInput(f"input {name!r} must have datatype {datatype}", param=name)
        if shape is not None:
            if value.ndim != len(shape):
                raise InvalidInput(
                    f"input {name!r} must have {len(shape)} dimensions, not {value.ndim}",
                    param=name,
                )
            for axis, (want, got) in enumerate(zip(shape, value.shape, strict=True)):
                if want >= 0 and want != got:
                    raise InvalidInput(
                        f"input {name!r} must have size {want} on axis {axis}, not {got}",
                        param=name,
                    )
        if (
            not self.allow_non_finite
            and value.dtype.kind == "f"
            and not bool(np.isfinite(value).all())
        ):
            raise InvalidInput(f"input {name!r} contains NaN or infinity", param=name)

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``inputs`` against the graph, run once, return each tensor output by name.

        Rows are independent for the usual batch-first models, so stacking the rows of
        several requests along axis 0 gives each row the result it gets alone.
        """
        self.check_inputs(inputs)
        session = self._session
        if session is None:
            raise BackendError(f"model {self.spec.name!r} is closed")
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        feed = {name: np.ascontiguousarray(value) for name, value in inputs.items()}
        try:
            results = session.run(self._tensor_outputs, feed)
        except InvalidArgument as error:  # a shape the graph's inner nodes cannot take
            raise InvalidInput("the model refused the input tensors") from error
        except Exception as error:  # onnxruntime's Fail, RuntimeException...
            raise BackendError(f"model {self.spec.name!r}: inference failed") from error
        return {
            name: np.asarray(result)
            for name, result in zip(self._tensor_outputs, results, strict=True)
        }

    def generate(
        self, prompt: Prompt, params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Delta | Done]:
        raise UnsupportedOperation("ONNX models do not generate text; use predict")

    def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        """Tokenize, run once over the padded batch, pool, L2-normalise; one vector per text."""
        tokenizer = self._tokenizer
        if tokenizer is None or self._embedding_output is None:
            raise UnsupportedOperation("this ONNX model does not embed text; use predict")
        session = self._session
        if session is None:
            raise BackendError(f"model {self.spec.name!r} is closed")
        if not texts:
            return EmbeddingResult([], 0)
        encodings = tokenizer.encode_batch(list(texts))
        lengths = [len(e.ids) for e in encodings]
        longest = max(lengths)
        if longest > self._max_tokens:
            raise ContextLengthExceeded(longest, self._max_tokens)
        width = max(longest, 1)
        ids = np.full((len(texts), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = lengths[row]
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feed = {}
        for info in self.inputs:
            name = str(info["name"])
            dtype = OIP_TO_NUMPY.get(info["datatype"] or "INT64", np.dtype(np.int64))
            feed[name] = arrays[name].astype(dtype, copy=False)
        try:
            (output,) = session.run([self._embedding_output], feed)
        except Exception as error:  # onnxruntime's Fail, InvalidArgument...
            raise BackendError(f"model {self.spec.name!r}: inference failed") from error
        hidden = np.asarray(output, dtype=np.float64)
        if hidden.ndim == 3:
            weights = mask.astype(np.float64)[:, :, None]
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        elif hidden.ndim == 2:
            pooled = hidden
        else:
            raise BackendError(
                f"model {self.spec.name!r}: output {self._embedding_output!r} has rank "
                f"{hidden.ndim}; an embedding output is [batch, hidden] or [batch, tokens, hidden]"
            )
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors = pooled / np.maximum(norms, 1e-12)
        return EmbeddingResult(vectors.astype(np.float32).tolist(), int(sum(lengths)))

    def close(self) -> None:
        self._session = None  # dropping the last reference frees the session

    def memory_bytes(self) -> int:
        """The model file's size (weights dominate small ONNX models' memory)."""
        return self._file_bytes

    @property
    def max_concurrency(self) -> int:
        """One call at a time: the daemon batches concurrent requests instead."""
        return 1
