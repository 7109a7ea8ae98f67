"""Examples uploads are bounded before they are decompressed or converted: a small file that
claims a huge array, a decompression bomb or a CSV too wide or too long is a 400 that binds
nothing, and parsing runs off the event loop."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from numpy.lib import format as npy_format

from edged import example_files as examples
from edged.app import create_app
from edged.bindings import BINDINGS
from edged.errors import InvalidRequest
from edged.example_files import parse_examples
from edged.ledger import LEDGER
from edged.settings import Settings
from tests.edged.conftest import AppClientFactory
from tests.edged.http.test_oip import MODEL, install_onnx_model

Client = TestClient[Any, web.Application]
GOOD_LABELS = np.zeros(3, dtype=np.int64)
GOOD_CONTRIBUTORS = np.array(["a", "b", "c"])


def _npz(compression: int = zipfile.ZIP_STORED, **arrays: np.ndarray | bytes) -> bytes:
    """An NPZ file as numpy writes it; an entry given as bytes is stored as it is."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, value in arrays.items():
            if isinstance(value, bytes):
                archive.writestr(f"{name}.npy", value)
            else:
                with archive.open(f"{name}.npy", "w") as entry:
                    npy_format.write_array(entry, value, allow_pickle=True)
    return buffer.getvalue()


def _header_only(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    """A .npy header that declares ``shape`` and no data after it."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buffer.getvalue()


@pytest.fixture
async def client(aiohttp_client: AppClientFactory, settings: Settings,
                 tmp_path: Path) -> Client:
    install_onnx_model(settings, tmp_path, data_share_ppm=500_000, batch_delay_us=0)
    return await aiohttp_client(create_app(settings))


async def _upload(client: Client, data: bytes, fmt: str = "npz") -> tuple[int, Any]:
    response = await client.put(f"/api/models/{MODEL}/examples", params={"format": fmt},
                                data=data)
    return response.status, await response.json()


def _nothing_bound(client: Client, settings: Settings) -> bool:
    stored = list((settings.data_dir / "influence").glob("*"))
    return client.app[BINDINGS].get(MODEL) is None and not stored \
        and client.app[LEDGER].head()[0] == 0


@pytest.mark.parametrize("shape", [(1_000_000, 40_000), (-1, 4), (-3, -4)])
async def test_an_npz_header_claiming_a_huge_or_negative_array_is_400(
        client: Client, settings: Settings, shape: tuple[int, ...]) -> None:
    data = _npz(features=_header_only(shape), labels=GOOD_LABELS,
                contributors=GOOD_CONTRIBUTORS)
    assert len(data) < 2000  # ~300 GiB declared in a file of a few hundred bytes
    status, body = await _upload(client, data)
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert _nothing_bound(client, settings)


async def test_a_decompression_bomb_is_refused_before_it_is_inflated(
        client: Client, settings: Settings) -> None:
    bomb = _npz(zipfile.ZIP_DEFLATED, features=np.zeros((9000, 4000), dtype=np.uint8),
                labels=GOOD_LABELS, contributors=GOOD_CONTRIBUTORS)
    assert len(bomb) < 100_000  # 36 MB of zeros inside; 288 MB once read as float64
    tracemalloc.start()
    try:
        started = time.monotonic()
        status, body = await _upload(client, bomb)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status in (400, 413), body
    assert peak < 16 << 20, peak  # nothing near the declared size was allocated
    assert elapsed < 10
    assert _nothing_bound(client, settings)

    valid = _npz(features=np.zeros((3, 4), dtype=np.float32), labels=GOOD_LABELS,
                 contributors=GOOD_CONTRIBUTORS)
    status, body = await _upload(client, valid)
    assert status == 201, body
    assert body["examples"] == 3 and client.app[BINDINGS].get(MODEL) is not None


@pytest.mark.parametrize("data", [
    _npz(features=np.zeros((3, 4)), labels=GOOD_LABELS,
         contributors=np.array(["a", 1, None], dtype=object)),
    _npz(features=np.zeros((3, 4), dtype=complex), labels=GOOD_LABELS,
         contributors=GOOD_CONTRIBUTORS),
    # bzip2 and lzma entries cannot be inflated a bounded piece at a time: refused
    _npz(zipfile.ZIP_LZMA, features=np.zeros((3, 4)), labels=GOOD_LABELS,
         contributors=GOOD_CONTRIBUTORS),
], ids=["object dtype", "complex features", "lzma entries"])
async def test_object_types_and_unbounded_compression_are_refused(
        client: Client, settings: Settings, data: bytes) -> None:
    status, body = await _upload(client, data)
    assert status == 400, body
    assert _nothing_bound(client, settings)


async def test_a_csv_too_wide_is_refused_over_http(client: Client,
                                                   settings: Settings) -> None:
    width = examples.MAX_FEATURES + 1
    header = ",".join(["contributor", "label"] + [f"f{i}" for i in range(width)])
    row = ",".join(["a", "0"] + ["0"] * width)
    status, body = await _upload(client, f"{header}\n{row}\n".encode(), "csv")
    assert status == 400, body
    assert "f1" not in body["error"]["message"]  # no user data in the message
    assert _nothing_bound(client, settings)


def _csv(rows: int, width: int) -> bytes:
    header = ",".join(["contributor", "label"] + [f"f{i}" for i in range(width)])
    body = [",".join([f"c{r % 3}", str(r % 2)] + [str(r + i) for i in range(width)])
            for r in range(rows)]
    return "\n".join([header, *body]).encode()


def test_csv_rows_and_columns_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = parse_examples(_csv(26, 4), "csv")
    assert parsed.features.shape == (26, 4) and parsed.features[25, 3] == 28.0
    assert parsed.labels.tolist() == [r % 2 for r in range(26)]
    assert parsed.contributors[:4] == ["c0", "c1", "c2", "c0"]

    with pytest.raises(InvalidRequest):  # too many columns
        parse_examples(_csv(1, examples.MAX_FEATURES + 1), "csv")
    with pytest.raises(InvalidRequest):  # one line longer than any row can be
        parse_examples(b"contributor,label,f1\na,0," + b"1" * 300_000 + b"\n", "csv")
    monkeypatch.setattr(examples, "MAX_FEATURE_VALUES", 100)
    with pytest.raises(InvalidRequest):  # too many rows: 26 x 4 values > 100
        parse_examples(_csv(26, 4), "csv")
    assert parse_examples(_csv(25, 4), "csv").features.shape == (25, 4)


@pytest.mark.parametrize("data", [
    b"contributor,label,f1\na,0,1\nb,1\n",  # a row short of a column
    b"contributor,label,f1\na,99999999999999999999999,1\n",  # a label past int64
    b"contributor,label,f1\n\"" + b"a" * 200_000 + b"\",0,1\n",  # a field past csv's limit
    b"contributor,label,f1\n\xff,0,1\n",  # not UTF-8
])
def test_malformed_csv_is_invalid_request(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_examples(data, "csv")
    assert refused.value.status == 400


async def test_running_out_of_memory_while_parsing_is_413(
        client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(data: bytes) -> Any:
        raise MemoryError

    monkeypatch.setattr(examples, "_read_npz", exhausted)
    status, body = await _upload(client, b"PK anything")
    assert status == 413
    assert body["error"]["code"] == "request_too_large"
    assert _nothing_bound(client, settings)
