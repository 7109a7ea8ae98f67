"""Checks that a file is a well-formed GGUF before llama.cpp is ever asked to load it.

A GGUF file is a header (magic ``GGUF``, version, tensor count, metadata count), the
metadata key/value pairs, the tensor table (name, dimensions, type, offset) and, aligned,
the tensor data. :func:`check_gguf` reads the header, the metadata and the tensor table,
and checks every count, length and offset against the file's size, so that a truncated
file, garbage after the magic or absurd counts are refused at registration with a reason,
instead of failing every later request. It reads no tensor data.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMENSIONS = 4  # GGML_MAX_DIMS
MAX_STRING_BYTES = 1 << 24
MAX_TYPE_ID = 255  # ggml type ids are small; a larger one is garbage
DEFAULT_ALIGNMENT = 32
# Metadata value types: fixed-size scalars by id; 8 is a string, 9 an array.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is not a well-formed GGUF; the message says where it goes wrong."""


@dataclass(frozen=True)
class GGUFSummary:
    version: int
    tensors: int
    metadata: int
    architecture: str | None
    # The scalar and string metadata values by key (arrays, such as the vocabulary, left
    # out), for what is needed before llama.cpp loads the model (layer counts, sizes).
    values: Mapping[str, int | float | str] = field(default_factory=dict)

    def number(self, key: str, default: int = 0) -> int:
        """An integer metadata value of the model's architecture (``block_count``, ...)."""
        value = self.values.get(f"{self.architecture}.{key}")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) \
            else default


def check_gguf(path: Path) -> GGUFSummary:
    """Read and check ``path``'s header, metadata and tensor table; raise GGUFError."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        return _Reader(handle, size).summary()


class _Reader:
    def __init__(self, handle: BinaryIO, size: int) -> None:
        self._handle = handle
        self._size = size
        self._position = 0

    def summary(self) -> GGUFSummary:
        if self._bytes(4, "magic") != MAGIC:
            raise GGUFError("not a GGUF file (bad magic)")
        version = self._scalar("<I", "version")
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"unsupported GGUF version {version}")
        tensors = self._count("tensor count", minimum_item_bytes=8 + 4 + 8 + 4 + 8)
        entries = self._count("metadata count", minimum_item_bytes=8 + 4)
        architecture: str | None = None
        alignment = DEFAULT_ALIGNMENT
        values: dict[str, int | float | str] = {}
        for _ in range(entries):
            key = self._string("metadata key")
            kind = self._scalar("<I", f"type of {key!r}")
            value = self._value(kind, key)
            if isinstance(value, int | float | str):
                values[key] = value
            if key == "general.architecture" and isinstance(value, str):
                architecture = value
            if key == "general.alignment":
                if not isinstance(value, int) or value <= 0 or value & (value - 1):
                    raise GGUFError("general.alignment must be a power of two")
                alignment = value
        offsets = [self._tensor_info(index) for index in range(tensors)]
        data_start = -(-self._position // alignment) * alignment
        for index, offset in enumerate(offsets):
            if offset % alignment or data_start + offset >= self._size:
                raise GGUFError(f"tensor {index} lies outside the file")
        return GGUFSummary(version, tensors, entries, architecture, values)

    def _tensor_info(self, index: int) -> int:
        self._string(f"tensor {index} name")
        dimensions = self._scalar("<I", f"tensor {index} dimensions")
        if not 1 <= dimensions <= MAX_DIMENSIONS:
            raise GGUFError(f"tensor {index} has {dimensions} dimensions")
        elements = 1
        for _ in range(dimensions):
            extent = self._scalar("<Q", f"tensor {index} shape")
            if extent == 0:
                raise GGUFError(f"tensor {index} has an empty dimension")
            elements *= extent
        if elements > self._size * 8:  # not even one bit per element fits in the file
            raise GGUFError(f"tensor {index} is larger than the file")
        if self._scalar("<I", f"tensor {index} type") > MAX_TYPE_ID:
            raise GGUFError(f"tensor {index} has an unknown type")
        offset: int = self._scalar("<Q", f"tensor {index} offset")
        return offset

    def _value(self, kind: int, key: str) -> object:
        if kind in _SCALAR_FORMATS:
            return self._scalar(_SCALAR_FORMATS[kind], f"value of {key!r}")
        if kind == _STRING:
            return self._string(f"value of {key!r}")
        if kind == _ARRAY:
            item_kind = self._scalar("<I", f"item type of {key!r}")
            if item_kind == _ARRAY:
                raise GGUFError(f"{key!r} is an array of arrays")
            if item_kind in _SCALAR_FORMATS:
                item_size = struct.calcsize(_SCALAR_FORMATS[item_kind])
                count = self._count(f"length of {key!r}", minimum_item_bytes=item_size)
                self._skip(count * item_size, f"items of {key!r}")
            elif item_kind == _STRING:
                count = self._count(f"length of {key!r}", minimum_item_bytes=8)
                for _ in range(count):
                    self._string(f"item of {key!r}")
            else:
                raise GGUFError(f"{key!r} has an unknown item type {item_kind}")
            return None
        raise GGUFError(f"{key!r} has an unknown type {kind}")

    def _count(self, what: str, *, minimum_item_bytes: int) -> int:
        """A u64 count whose items, at their smallest, still fit in the rest of the file."""
        count: int = self._scalar("<Q", what)
        if count * minimum_item_bytes > self._size - self._position:
            raise GGUFError(f"{what} ({count}) does not fit in the file")
        return count

    def _string(self, what: str) -> str:
        length = self._scalar("<Q", f"{what} length")
        if length > MAX_STRING_BYTES:
            raise GGUFError(f"{what} is {length} bytes long")
        try:
            return self._bytes(length, what).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{what} is not UTF-8") from None

    def _scalar(self, fmt: str, what: str) -> int:
        value: int = struct.unpack(fmt, self._bytes(struct.calcsize(fmt), what))[0]
        return value

    def _skip(self, count: int, what: str) -> None:
        if self._position + count > self._size:
            raise GGUFError(f"the file ends inside the {what}")
        self._handle.seek(count, 1)
        self._position += count

    def _bytes(self, count: int, what: str) -> bytes:
        if self._position + count > self._size:
            raise GGUFError(f"the file ends inside the {what}")
        data = self._handle.read(count)
        if len(data) != count:
            raise GGUFError(f"the file ends inside the {what}")
        self._position += count
        return data
