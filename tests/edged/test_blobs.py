"""Blob uploads: streamed into the store off the event loop, kept only when whole and right."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edged import models
from edged.app import create_app
from edged.errors import InvalidRequest, PayloadTooLarge
from edged.inference import SERVICE
from edged.manifest import RUNTIMES
from edged.models import ModelStore
from edged.settings import Settings
from tests.edged.conftest import AppClientFactory, fake_loader

Client = TestClient[Any, web.Application]
SMALL_BATCH = 1000  # so a small upload is written in several batches


def blob_files(store: ModelStore) -> set[str]:
    """Every file in the blobs folder, temporary ones included."""
    return {path.name for path in store.blobs_dir.iterdir()}


async def in_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def record_threads(monkeypatch: pytest.MonkeyPatch, module: Any, name: str
                   ) -> list[threading.Thread]:
    """Replace ``module.name`` by a wrapper that records the thread of every call."""
    threads: list[threading.Thread] = []
    original = getattr(module, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return threads


async def make_client(aiohttp_client: AppClientFactory, settings: Settings) -> Client:
    return await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))


async def test_upload_is_kept_and_its_file_work_runs_off_the_loop(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    store = client.app[SERVICE].store
    before = blob_files(store)
    data = os.urandom(10_000)
    digest = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(models, "BLOB_WRITE_BATCH", SMALL_BATCH)
    fsync_threads = record_threads(monkeypatch, os, "fsync")
    replace_threads = record_threads(monkeypatch, os, "replace")
    write_threads = record_threads(monkeypatch, models.BlobWriter, "write")

    response = await client.put(f"/api/blobs/sha256:{digest}", data=in_chunks(data, 300))

    assert response.status == 201, await response.text()
    assert await response.json() == {"digest": "sha256:" + digest}
    assert store.blob_path(digest).read_bytes() == data
    assert blob_files(store) == before | {"sha256-" + digest}
    assert (await client.head(f"/api/blobs/sha256:{digest}")).status == 200
    loop_thread = threading.current_thread()
    assert fsync_threads and loop_thread not in fsync_threads
    assert replace_threads and loop_thread not in replace_threads
    assert write_threads and loop_thread not in write_threads
    # 300-byte chunks went out in batches of at least SMALL_BATCH bytes.
    assert len(write_threads) <= len(data) // SMALL_BATCH + 1


async def test_upload_with_the_wrong_digest_keeps_nothing(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    store = client.app[SERVICE].store
    before = blob_files(store)
    monkeypatch.setattr(models, "BLOB_WRITE_BATCH", SMALL_BATCH)
    wrong = hashlib.sha256(b"other data").hexdigest()
    response = await client.put(f"/api/blobs/sha256:{wrong}",
                                data=in_chunks(os.urandom(5000), 700))
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_request"
    assert blob_files(store) == before
    assert (await client.head(f"/api/blobs/sha256:{wrong}")).status == 404


async def test_upload_over_the_limit_keeps_nothing(aiohttp_client: AppClientFactory,
                                                   settings: Settings) -> None:
    client = await make_client(aiohttp_client,
                               dataclasses.replace(settings, max_blob_bytes=1000))
    store = client.app[SERVICE].store
    before = blob_files(store)
    data = b"GGUF" + b"\0" * 5000
    response = await client.put(f"/api/blobs/sha256:{hashlib.sha256(data).hexdigest()}",
                                data=in_chunks(data, 600))
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "request_too_large"
    assert blob_files(store) == before


async def test_a_broken_stream_keeps_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, runtimes=RUNTIMES)
    data = os.urandom(3000)

    async def breaks_halfway() -> AsyncIterator[bytes]:
        yield data[:1500]
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await store.receive_blob(hashlib.sha256(data).hexdigest(), breaks_halfway(),
                                 max_bytes=1 << 20)
    assert blob_files(store) == set()


async def test_receive_blob_limits_and_checks_before_keeping(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, runtimes=RUNTIMES)
    data = os.urandom(3000)
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(PayloadTooLarge):
        await store.receive_blob(digest, in_chunks(data, 1000), max_bytes=2999)
    with pytest.raises(InvalidRequest):
        await store.receive_blob(digest, in_chunks(data[:-1], 1000), max_bytes=3000)
    assert blob_files(store) == set()
    await store.receive_blob(digest, in_chunks(data, 1000), max_bytes=3000)
    assert blob_files(store) == {"sha256-" + digest}
    assert store.blob_path(digest).read_bytes() == data
    assert store.blob_path(digest).stat().st_mode & 0o777 == 0o644


def test_the_blocking_writer_keeps_only_a_matching_blob(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, runtimes=RUNTIMES)
    digest = hashlib.sha256(b"weights").hexdigest()
    with pytest.raises(RuntimeError), store.blob_writer(digest) as writer:
        writer.write(b"weights")
        raise RuntimeError("the caller failed before the end")
    assert blob_files(store) == set()
    with store.blob_writer(digest) as writer:
        writer.write(b"weights")
    assert writer.hexdigest() == digest
    assert blob_files(store) == {"sha256-" + digest}
