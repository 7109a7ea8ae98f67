"""The models directory: manifests plus content-addressed weight files.

Layout under ``<data_dir>/models``::

    manifests/<name>.json      one manifest per model
    blobs/sha256-<hex>         weight files, named by their SHA-256

Names and digests are validated before any path is built from them, and every
path is checked to resolve inside the store (no traversal, no symlink escape).

The manifests themselves are declared in :mod:`edged.manifest`.
"""


from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from edged.errors import Conflict, InvalidRequest, ModelNotFound, PayloadTooLarge
from edged.files import atomic_write_text
from edged.manifest import SERVING_RUNTIMES, Manifest, validate_digest, validate_name
from runtimes.gguf_file import GGUFError, check_gguf

BLOB_WRITE_BATCH = 4 << 20  # bytes of an upload gathered before one write off the loop
logger = logging.getLogger(__name__)


class BlobWriter:
    """A blob on its way into the store: written to a temporary file in the blobs folder
    and hashed on the way, so it is never read twice; :meth:`keep` moves it into place
    only if its SHA-256 matches, :meth:`discard` deletes whatever is left.

    Every method blocks (file I/O, hashing, fsync); the HTTP upload calls them from
    worker threads, one after another. A lock keeps them in order even when the upload
    is cancelled while a write is still running in its thread."""

    def __init__(self, blobs_dir: Path, target: Path, expected_digest: str) -> None:
        self._target = target
        self._expected_digest = expected_digest
        self._digest = hashlib.sha256()
        self._lock = threading.Lock()
        fd, temp_name = tempfile.mkstemp(dir=blobs_dir, prefix=".incoming-")
        self._temp = Path(temp_name)
        self._handle = os.fdopen(fd, "wb")
        self._finished = False

    def write(self, data: bytes | bytearray) -> None:
        with self._lock:
            self._digest.update(data)
            self._handle.write(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def keep(self) -> None:
        """Make the blob durable and move it into place. Raises :class:`InvalidRequest`
        (and keeps nothing) if what was written does not match the expected digest."""
        with self._lock:
            if self._digest.hexdigest() != self._expected_digest:
                raise InvalidRequest("the uploaded data does not match its digest",
                                     param="digest")
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._temp.chmod(0o644)
            os.replace(self._temp, self._target)
            self._finished = True

    def discard(self) -> None:
        """Close and delete the temporary file unless :meth:`keep` moved it. Idempotent."""
        with self._lock:
            self._handle.close()
            if not self._finished:
                self._temp.unlink(missing_ok=True)
                self._finished = True


class ModelStore:
    def __init__(self, root: Path, *, runtimes: tuple[str, ...] = SERVING_RUNTIMES) -> None:
        self.root = root
        self.runtimes = runtimes
        self._cache: dict[str, tuple[tuple[int, int, int], Manifest]] = {}
        self.blobs_dir = root / "blobs"
        self.manifests_dir = root / "manifests"
        for folder in (self.blobs_dir, self.manifests_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def _inside(self, folder: Path, filename: str) -> Path:
        path = folder / filename
        if path.is_symlink() or not path.resolve().is_relative_to(folder.resolve()):
            raise InvalidRequest("path escapes the models directory")
        return path

    def blob_path(self, digest: str) -> Path:
        return self._inside(self.blobs_dir, "sha256-" + validate_digest(digest))

    def _manifest_path(self, name: str) -> Path:
        return self._inside(self.manifests_dir, validate_name(name) + ".json")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, expected_digest: str) -> BlobWriter:
        """A :class:`BlobWriter` for the blob ``expected_digest``; the caller must end it
        with :meth:`BlobWriter.keep` or :meth:`BlobWriter.discard` (or both). Blocking."""
        return BlobWriter(self.blobs_dir, self.blob_path(expected_digest),
                          validate_digest(expected_digest))

    @contextlib.contextmanager
    def blob_writer(self, expected_digest: str) -> Iterator[BlobWriter]:
        """Write a blob through a temporary file; it appears only if its SHA-256 matches.
        Blocking: for code that is not on the event loop."""
        writer = self.open_blob(expected_digest)
        try:
            yield writer
            writer.keep()
        finally:
            writer.discard()

    async def receive_blob(self, expected_digest: str, chunks: AsyncIterable[bytes], *,
                           max_bytes: int) -> None:
        """Stream ``chunks`` into the blob ``expected_digest`` without blocking the event
        loop: the chunks are gathered into batches of :data:`BLOB_WRITE_BATCH` bytes and
        each batch is hashed and written in a worker thread, as are the fsync and rename.

        Raises :class:`PayloadTooLarge` past ``max_bytes`` and :class:`InvalidRequest`
        if the digest does not match; either way nothing is kept."""
        writer = await asyncio.to_thread(self.open_blob, expected_digest)
        try:
            received = 0
            batch = bytearray()
            async for chunk in chunks:
                received += len(chunk)
                if received > max_bytes:
                    raise PayloadTooLarge("the file exceeds max_blob_bytes")
                batch += chunk
                if len(batch) >= BLOB_WRITE_BATCH:
                    await asyncio.to_thread(writer.write, batch)
                    batch = bytearray()
            if batch:
                await asyncio.to_thread(writer.write, batch)
            await asyncio.to_thread(writer.keep)
        finally:
            await asyncio.to_thread(writer.discard)

    def add(self, manifest: Manifest, *, replace_existing: bool = False) -> Manifest:
        if manifest.runtime not in self.runtimes:
            raise InvalidRequest(f"this daemon serves the runtimes {list(self.runtimes)}",
                                 param="runtime")
        blob = self.blob_path(manifest.weights)
        if not blob.is_file():
            raise InvalidRequest("no blob with that digest; upload it first", param="weights")
        if manifest.tokenizer is not None and not self.blob_path(manifest.tokenizer).is_file():
            raise InvalidRequest("no blob with the tokenizer's digest; upload it first",
                                 param="tokenizer")
        if manifest.runtime == "onnx" and not manifest.inputs:
            manifest = replace(manifest, **onnx_metadata(blob))
        if manifest.runtime == "llama.cpp":
            try:
                summary = check_gguf(blob)
            except GGUFError as exc:
                raise InvalidRequest(f"the llama.cpp runtime needs a well-formed GGUF file: "
                                     f"{exc}", param="weights") from None
            if manifest.chat_format is None and not summary.values.get("tokenizer.chat_template"):
                raise InvalidRequest("this GGUF has no chat template: give a chat_format "
                                     "(gemma, chatml), or none for a model that serves "
                                     "completions only", param="chat_format")
        path = self._manifest_path(manifest.name)
        if path.exists() and not replace_existing:
            raise Conflict(f"a model named {manifest.name!r} exists already", param="name")
        manifest = replace(manifest, size=blob.stat().st_size,
                           created=manifest.created or int(time.time()))
        try:
            manifest.digest()  # anything that cannot be named in a receipt is refused here
        except ValueError:
            raise InvalidRequest("the manifest holds values out of range") from None
        atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
        logger.info("model %s added (%s)", manifest.name, manifest.weights[:12])
        return manifest

    def get(self, name: str) -> Manifest:
        try:
            path = self._manifest_path(name)
        except InvalidRequest:
            raise ModelNotFound(f"model {name!r} not found", param="model") from None
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ModelNotFound(f"model {name!r} not found", param="model") from None
        # Parsed manifests are cached per file version: requests look models up constantly.
        version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelNotFound(f"model {name!r} not found", param="model") from None
        manifest = Manifest.from_dict(data)
        self._cache[name] = (version, manifest)
        return manifest

    def list(self) -> list[Manifest]:
        manifests = []
        for path in sorted(self.manifests_dir.glob("*.json")):
            try:
                manifests.append(self.get(path.stem))
            except (InvalidRequest, ModelNotFound, ValueError):
                logger.warning("skipping an unreadable manifest: %s", path.name)
        return manifests

    def remove(self, name: str) -> Manifest:
        """Remove a model; its blob goes too unless another manifest uses it."""
        manifest = self.get(name)
        self._manifest_path(name).unlink()
        others = self.list()
        if all(other.weights != manifest.weights for other in others):
            self.blob_path(manifest.weights).unlink(missing_ok=True)
        if manifest.tokenizer is not None and all(
                manifest.tokenizer not in (other.weights, other.tokenizer) for other in others):
            self.blob_path(manifest.tokenizer).unlink(missing_ok=True)
        logger.info("model %s removed", name)
        return manifest

    def weights_path(self, manifest: Manifest) -> Path:
        return self.blob_path(manifest.weights)


def onnx_metadata(path: Path) -> dict[str, Any]:
    """Inputs and outputs read from the ONNX graph (no session needed)."""
    from runtimes.onnx_runtime import graph_metadata

    try:
        meta = graph_metadata(path)
    except Exception:
        raise InvalidRequest("the onnx runtime needs a valid ONNX model", param="weights") from None
    return {"inputs": tuple(meta["inputs"]), "outputs": tuple(meta["outputs"])}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


MODEL_STORE = web.AppKey("model_store", ModelStore)
"""The node's installed models: ``app[MODEL_STORE]`` (the services hold it too)."""
