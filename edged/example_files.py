"""Contributor example files, the data ``influence/1`` and ``knn/1`` bind to a tensor model:
NPZ with ``features`` [n, d], ``labels`` [n] and ``contributors`` [n], or CSV with columns
``contributor,label,f1..fd``. Read defensively (an upload is untrusted): every size is
checked before anything is decompressed or converted. ``edged/bindings.py`` binds them."""

from __future__ import annotations

import array
import csv
import io
import math
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npy_format

from edged.errors import InvalidRequest, PayloadTooLarge

MAX_EXAMPLES = 1_000_000
MAX_FEATURES = 4096  # feature columns per example
MAX_FEATURE_VALUES = 1 << 25  # examples x features in one file: 256 MiB as float64
MAX_ARRAY_BYTES = 8 * MAX_FEATURE_VALUES  # any one array of an NPZ file, decompressed
MAX_NPY_HEADER_BYTES = 1 << 16
MAX_CSV_LINE_CHARS = 64 * (MAX_FEATURES + 2)
TOO_LARGE = (f"an examples file holds at most {MAX_EXAMPLES} examples of at most "
             f"{MAX_FEATURES} features, {MAX_FEATURE_VALUES} feature values in all")
# What a truncated, corrupt or otherwise malformed file raises while it is read.
MALFORMED = (KeyError, ValueError, IndexError, TypeError, OverflowError, EOFError, OSError,
             csv.Error, zipfile.BadZipFile, zlib.error, NotImplementedError)


@dataclass(frozen=True)
class Examples:
    features: np.ndarray  # [n, d] float
    labels: np.ndarray  # [n] int
    contributors: list[str]


def parse_examples(data: bytes, kind: str) -> Examples:
    """Parse an NPZ or CSV examples file; refuse anything malformed with a clear error.

    Blocking (it can take seconds): call it from a thread. Sizes are checked before the
    data is decompressed or converted, so a small file cannot claim a huge array."""
    if kind not in ("npz", "csv"):
        raise InvalidRequest("examples are 'npz' or 'csv'", param="format")
    try:
        features, labels, contributors = _read_npz(data) if kind == "npz" else _read_csv(data)
    except InvalidRequest:
        raise
    except MemoryError:
        raise PayloadTooLarge("the examples file is too large to read") from None
    except MALFORMED:
        raise InvalidRequest(f"not a valid {kind} examples file") from None
    n = len(contributors)
    if features.ndim != 2 or not 0 < n <= MAX_EXAMPLES or features.shape[0] != n \
            or labels.shape != (n,) or not np.all(np.isfinite(features)):
        raise InvalidRequest("examples need matching features [n, d] (finite), labels [n] "
                             "and contributors [n]")
    if features.shape[1] > MAX_FEATURES:
        raise InvalidRequest(TOO_LARGE)
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise InvalidRequest("labels are non-negative integers (class indices)")
    return Examples(np.asarray(features, dtype=np.float64), labels.astype(np.int64),
                    contributors)


def _read_npz(data: bytes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        features = _read_npy(archive, "features", kinds="biuf", max_values=MAX_FEATURE_VALUES)
        labels = _read_npy(archive, "labels", kinds="iu", max_values=MAX_EXAMPLES)
        contributors = _read_npy(archive, "contributors", kinds="USiu", max_values=MAX_EXAMPLES)
    if contributors.ndim != 1:
        raise InvalidRequest("contributors must be a list, one per example")
    if contributors.dtype.kind == "S":
        return features, labels, [bytes(c).decode("utf-8") for c in contributors]
    return features, labels, [str(c) for c in contributors]


def _read_npy(archive: zipfile.ZipFile, name: str, *, kinds: str,
              max_values: int) -> np.ndarray:
    """One array of an NPZ file. Its sizes, as the zip entry and the array header declare
    them, are checked before anything is decompressed; object types are refused."""
    try:
        entry = archive.getinfo(f"{name}.npy")
    except KeyError:
        raise InvalidRequest(f"the NPZ file has no '{name}' array") from None
    if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InvalidRequest("NPZ entries are stored or deflated (numpy.savez or "
                             "numpy.savez_compressed)")
    if entry.file_size > MAX_NPY_HEADER_BYTES + MAX_ARRAY_BYTES:
        raise InvalidRequest(TOO_LARGE)
    with archive.open(entry) as member:
        version = npy_format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(member)
        else:
            raise InvalidRequest(f"'{name}' is in an unsupported .npy format version")
        if dtype.kind not in kinds:
            raise InvalidRequest(f"'{name}' has an unsupported element type")
        if any(d < 0 for d in shape):
            raise InvalidRequest(f"'{name}' declares a negative dimension")
        count = math.prod(shape)
        size = count * dtype.itemsize
        if count > max_values or size > MAX_ARRAY_BYTES:
            raise InvalidRequest(TOO_LARGE)
        raw = member.read(size)
    if len(raw) != size:
        raise InvalidRequest(f"'{name}' is shorter than its header says")
    values = np.frombuffer(raw, dtype=dtype, count=count) if count else np.empty(0, dtype)
    return values.reshape(shape, order="F" if fortran_order else "C")


def _read_csv(data: bytes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Columns ``contributor,label,f1..fd``, read a line at a time into flat arrays."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    rows = csv.reader(_bounded_lines(text))
    header = next(rows, [])
    if header[:2] != ["contributor", "label"] or len(header) < 3:
        raise InvalidRequest("CSV columns are contributor,label,f1,...")
    width = len(header) - 2
    if width > MAX_FEATURES:
        raise InvalidRequest(TOO_LARGE)
    max_rows = min(MAX_EXAMPLES, MAX_FEATURE_VALUES // width)
    contributors: list[str] = []
    labels = array.array("q")  # int64
    features = array.array("d")  # float64, row after row
    for row in rows:
        if not row:
            continue
        if len(row) != len(header):
            raise InvalidRequest("every CSV row needs as many columns as the header")
        if len(contributors) == max_rows:
            raise InvalidRequest(TOO_LARGE)
        contributors.append(row[0])
        labels.append(int(row[1]))
        features.extend(map(float, row[2:]))
    return (np.frombuffer(features, dtype=np.float64).reshape(-1, width),
            np.frombuffer(labels, dtype=np.int64), contributors)


def _bounded_lines(text: io.TextIOBase) -> Iterator[str]:
    """The lines of ``text``; none longer than a row of ``MAX_FEATURES`` columns can be."""
    while line := text.readline(MAX_CSV_LINE_CHARS + 1):
        if len(line) > MAX_CSV_LINE_CHARS:
            raise InvalidRequest(TOO_LARGE)
        yield line

