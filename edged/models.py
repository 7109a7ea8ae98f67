"""The models directory: manifests plus content-addressed weight files.

Layout under ``<data_dir>/models``::

    manifests/<name>.json      one manifest per model
    blobs/sha256-<hex>         weight files, named by their SHA-256

Names and digests are validated before any path is built from them, and every
path is checked to resolve inside the store (no traversal, no symlink escape).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from attribution.commitments import digest as canonical_digest
from edged.errors import Conflict, InvalidRequest, ModelNotFound, PayloadTooLarge
from edged.files import atomic_write_text
from runtimes.gguf_file import GGUFError, check_gguf

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}[a-z0-9]$|^[a-z0-9]$")
DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}$")
RUNTIMES = ("llama.cpp", "onnx", "fake")  # every runtime a manifest may name
SERVING_RUNTIMES = ("llama.cpp", "onnx")  # what a daemon serves unless told otherwise (fake: tests)
MAX_PRICE = 2**40  # base units; keeps every fee far inside the receipt's 64-bit integers
# Built-in chat formats, and "none": a model that serves completions only. A llama.cpp
# model without one uses the chat template in its GGUF (refused at registration if none).
CHAT_FORMATS = ("gemma", "chatml", "none")
UNMATCHED_DATA_TO = ("owner", "operator")
BLOB_WRITE_BATCH = 4 << 20  # bytes of an upload gathered before one write off the loop


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidRequest(
            "model names are 1-64 characters of a-z, 0-9, '.', '_' and '-', starting and "
            "ending with a letter or digit", param="name")
    return name


def validate_digest(digest: str) -> str:
    """Accept ``<hex>`` or ``sha256:<hex>``; return the bare lowercase hex."""
    bare = digest.removeprefix("sha256:") if isinstance(digest, str) else ""
    if not DIGEST_PATTERN.fullmatch(bare):
        raise InvalidRequest("a digest is sha256:<64 lowercase hex digits>", param="digest")
    return bare


def _optional_digest(value: object, param: str) -> str | None:
    if value is None:
        return None
    try:
        return validate_digest(value if isinstance(value, str) else "")
    except InvalidRequest:
        raise InvalidRequest(f"'{param}' is sha256:<64 lowercase hex digits>",
                             param=param) from None


@dataclass(frozen=True)
class Price:
    """Fee in integer base units: per request, and per 1,000 input / output tokens."""

    request: int = 0
    input_per_1k: int = 0
    output_per_1k: int = 0
    per_row: int = 0  # predictions: per input row

    def fee(self, input_units: int, output_units: int, *, rows: int = 0) -> int:
        """Request price, per-1k-token parts (each rounded up, so a short request is never
        free by truncation) and, for predictions, ``per_row`` times the rows."""
        return (self.request + -(-input_units * self.input_per_1k // 1000)
                + -(-output_units * self.output_per_1k // 1000) + rows * self.per_row)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Price:
        unknown = set(data) - {"request", "input_per_1k", "output_per_1k", "per_row"}
        if unknown:
            raise InvalidRequest(f"unknown price fields {sorted(unknown)}", param="price")
        values = {}
        for key, value in data.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= \
                    MAX_PRICE:
                raise InvalidRequest(f"prices are integers within 0..{MAX_PRICE}",
                                     param="price")
            values[key] = value
        return cls(**values)


@dataclass(frozen=True)
class Manifest:
    name: str
    runtime: str
    weights: str  # sha256 hex of the weights file
    size: int
    owner: str
    price: Price = field(default_factory=Price)
    chat_format: str | None = None
    context_length: int = 2048
    datanets: tuple[str, ...] = ()
    data_share_ppm: int = 0  # share of each fee owed to the datanets' contributors
    unmatched_data_to: str = "owner"  # who gets the data share when no span matches
    # Tensor models (ONNX): dynamic batching, graph metadata, optional labels.
    max_batch_size: int = 32
    batch_delay_us: int = 2000
    inputs: tuple[dict[str, Any], ...] = ()  # [{"name", "datatype", "shape"}]
    outputs: tuple[dict[str, Any], ...] = ()
    label_names: tuple[str, ...] = ()
    embedding_output: str | None = None
    # Text-embedding models: sha256 hex of a Hugging Face tokenizer.json blob.
    tokenizer: str | None = None
    # influence/1: {"features": graph input feeding the final linear layer,
    # "weights": initializer, "bias": initializer}
    influence_layer: dict[str, str] | None = None
    created: int = 0  # unix seconds
    # llama.cpp models: engine options (see LLAMA_MANIFEST_OPTIONS), e.g. {"parallel": 8}
    options: dict[str, Any] = field(default_factory=dict)
    # Provenance (see check_lineage): {"base": weights sha256 hex, "trained_on":
    # [{"datanet", "state"}], "card": text}; every part optional.
    lineage: dict[str, Any] = field(default_factory=dict)
    # Federation: False keeps this model from being advertised to or served for peers.
    federate: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["datanets"] = list(self.datanets)
        data["inputs"] = [dict(item) for item in self.inputs]
        data["outputs"] = [dict(item) for item in self.outputs]
        data["label_names"] = list(self.label_names)
        if self.tokenizer is None:  # absent, so manifests without one keep their digests
            del data["tokenizer"]
        if not self.options:  # likewise
            del data["options"]
        if not self.lineage:  # likewise
            del data["lineage"]
        if self.federate:  # likewise: only the opt-out is written
            del data["federate"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            manifest = cls(
                name=validate_name(data["name"]),
                runtime=str(data["runtime"]),
                weights=validate_digest(data["weights"]),
                size=int(data["size"]),
                owner=str(data["owner"]),
                price=Price.from_dict(dict(data.get("price") or {})),
                chat_format=data.get("chat_format"),
                context_length=int(data.get("context_length", 2048)),
                datanets=tuple(data.get("datanets") or ()),
                data_share_ppm=int(data.get("data_share_ppm", 0)),
                unmatched_data_to=str(data.get("unmatched_data_to", "owner")),
                max_batch_size=int(data.get("max_batch_size", 32)),
                batch_delay_us=int(data.get("batch_delay_us", 2000)),
                inputs=tuple(data.get("inputs") or ()),
                outputs=tuple(data.get("outputs") or ()),
                label_names=tuple(data.get("label_names") or ()),
                embedding_output=data.get("embedding_output"),
                tokenizer=_optional_digest(data.get("tokenizer"), "tokenizer"),
                options=dict(data.get("options") or {}),
                lineage=dict(data.get("lineage") or {}),
                federate=data.get("federate", True),
                influence_layer=data.get("influence_layer"),
                created=int(data.get("created", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"invalid manifest: {exc.__class__.__name__}") from None
        return manifest.checked()

    def checked(self) -> Manifest:
        _check_types(self)
        _check_options(self)
        check_lineage(self.lineage)
        if self.runtime not in RUNTIMES:
            raise InvalidRequest(f"unknown runtime; known: {list(RUNTIMES)}", param="runtime")
        if self.chat_format is not None and self.chat_format not in CHAT_FORMATS:
            raise InvalidRequest(f"unknown chat format; known: {list(CHAT_FORMATS)}",
                                 param="chat_format")
        if not 16 <= self.context_length <= 1 << 20:
            raise InvalidRequest("context_length must be within 16..1048576",
                                 param="context_length")
        if not self.owner or len(self.owner) > 128:
            raise InvalidRequest("owner must be 1-128 characters", param="owner")
        for datanet in self.datanets:
            validate_name(datanet)
        if not 0 <= self.data_share_ppm <= 1_000_000:
            raise InvalidRequest("data_share must be within 0..1", param="data_share")
        if self.data_share_ppm and not self.datanets and self.runtime != "onnx":
            raise InvalidRequest("a data share needs a datanet (or, for ONNX models, bound "
                                 "examples)", param="data_share")
        if self.tokenizer is not None and (not isinstance(self.tokenizer, str)
                                           or not DIGEST_PATTERN.fullmatch(self.tokenizer)):
            raise InvalidRequest("'tokenizer' is the 64 lowercase hex digits of a blob",
                                 param="tokenizer")
        if self.unmatched_data_to not in UNMATCHED_DATA_TO:
            raise InvalidRequest(f"unmatched_data_to must be one of {list(UNMATCHED_DATA_TO)}",
                                 param="unmatched_data_to")
        return self

    def digest(self) -> bytes:
        """SHA-256 of the canonical manifest: what receipts name (computed once)."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> bytes:
        data = self.to_dict()
        data["price"] = asdict(self.price)
        if "options" in data:  # canonical encoding has no floats: name them by repr
            data["options"] = _floats_as_text(data["options"])
        return canonical_digest(data)

    def public_view(self) -> dict[str, Any]:
        return {**self.to_dict(), "weights": "sha256:" + self.weights,
                "manifest_digest": "sha256:" + self.digest().hex()}


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


MAX_GPUS = 16  # llama.cpp's llama_max_devices()
# The llama.cpp options a manifest may set: (type, lowest, highest), numbers inclusive.
LLAMA_MANIFEST_OPTIONS: dict[str, tuple[type, float, float]] = {
    "parallel": (int, 1, 64),  # generations at once (else the `parallel` setting)
    "n_gpu_layers": (int, -1, 10_000),  # layers offloaded to a GPU (-1: all; or "auto")
    "main_gpu": (int, 0, 255),  # the GPU that holds the model when it is not split
    "tensor_split": (list, 0, 1e6),  # share of the model per GPU, e.g. [3, 1]
    "n_batch": (int, 1, 65_536),  # prompt tokens per decode step
    "n_ubatch": (int, 1, 65_536),
    "flash_attn": (bool, 0, 1),
    "type_k": (int, 0, 255),  # ggml type of the KV cache (1: f16, 8: q8_0, ...)
    "type_v": (int, 0, 255),
    "use_mmap": (bool, 0, 1),
    "use_mlock": (bool, 0, 1),
    "repack": (bool, 0, 1),  # repack weights for the CPU's kernels
    "embedding_batch": (int, 1, 65_536),
    "top_k": (int, 0, 100_000),  # sampler defaults of the model
    "min_p": (float, 0, 1),
    "repeat_penalty": (float, 0, 10),
}


def _check_options(manifest: Manifest) -> None:
    options = manifest.options
    if not isinstance(options, dict):
        raise InvalidRequest("'options' must be an object", param="options")
    if options and manifest.runtime != "llama.cpp":
        raise InvalidRequest("'options' are for llama.cpp models", param="options")
    for name, value in options.items():
        if name not in LLAMA_MANIFEST_OPTIONS:
            raise InvalidRequest(f"unknown option {name!r}; known: "
                                 f"{sorted(LLAMA_MANIFEST_OPTIONS)}", param="options")
        if name == "n_gpu_layers" and value == "auto":
            continue
        kind, lowest, highest = LLAMA_MANIFEST_OPTIONS[name]
        if kind is list:
            if not (isinstance(value, list) and 0 < len(value) <= MAX_GPUS and all(
                    _is_kind(item, float) and lowest <= item <= highest for item in value)):
                raise InvalidRequest(f"option {name!r} must be a list of at most {MAX_GPUS} "
                                     f"numbers within {lowest}..{highest:g}", param="options")
            continue
        if not _is_kind(value, kind) or (kind is not bool and not lowest <= value <= highest):
            what = "true or false" if kind is bool else \
                f"{'a number' if kind is float else 'an integer'} within {lowest}..{highest}"
            if name == "n_gpu_layers":
                what += ', or "auto"'
            raise InvalidRequest(f"option {name!r} must be {what}", param="options")


MAX_CARD_CHARS = 8192  # a model card: what the model is for, how it was made
MAX_TRAINED_ON = 64  # training datanets one lineage names
LINEAGE_KEYS = ("base", "trained_on", "card")


def check_lineage(lineage: Any) -> None:
    """A manifest's ``lineage``: ``base`` (the SHA-256 hex of the base model's weights),
    ``trained_on`` (datanets, each with the state digest it was trained at) and ``card``
    (free text, at most :data:`MAX_CARD_CHARS` characters); every part optional. Anything
    else is a 400 that names the field."""
    if not isinstance(lineage, dict):
        raise InvalidRequest("'lineage' must be an object", param="lineage")
    unknown = sorted(set(lineage) - set(LINEAGE_KEYS))
    if unknown:
        raise InvalidRequest(f"unknown lineage fields {unknown}; known: {list(LINEAGE_KEYS)}",
                             param="lineage")
    if "base" in lineage and not (isinstance(lineage["base"], str)
                                  and DIGEST_PATTERN.fullmatch(lineage["base"])):
        raise InvalidRequest("lineage.base is the 64 lowercase hex digits of the base "
                             "model's weights", param="lineage.base")
    if "trained_on" in lineage:
        _check_trained_on(lineage["trained_on"])
    if "card" in lineage:
        card = lineage["card"]
        if not isinstance(card, str) or not 0 < len(card) <= MAX_CARD_CHARS or "\x00" in card:
            raise InvalidRequest(f"lineage.card is text of 1-{MAX_CARD_CHARS} characters",
                                 param="lineage.card")


def _check_trained_on(entries: Any) -> None:
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_TRAINED_ON:
        raise InvalidRequest(f"lineage.trained_on is a list of 1-{MAX_TRAINED_ON} "
                             "{datanet, state} objects", param="lineage.trained_on")
    seen = set()
    for number, entry in enumerate(entries):
        param = f"lineage.trained_on[{number}]"
        if not isinstance(entry, dict) or set(entry) != {"datanet", "state"}:
            raise InvalidRequest(f"{param} is an object with 'datanet' and 'state'",
                                 param=param)
        if not isinstance(entry["datanet"], str) or not NAME_PATTERN.fullmatch(
                entry["datanet"]):
            raise InvalidRequest(f"{param}.datanet is not a datanet name",
                                 param=f"{param}.datanet")
        if not isinstance(entry["state"], str) or not DIGEST_PATTERN.fullmatch(entry["state"]):
            raise InvalidRequest(f"{param}.state is the 64 lowercase hex digits of the "
                                 "datanet's state digest", param=f"{param}.state")
        if (entry["datanet"], entry["state"]) in seen:
            raise InvalidRequest(f"{param} names {entry['datanet']}@{entry['state'][:12]} "
                                 "twice", param=param)
        seen.add((entry["datanet"], entry["state"]))


def _floats_as_text(value: Any) -> Any:
    """``value`` with every float replaced by its shortest round-trip text (``0.05``)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {key: _floats_as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_floats_as_text(item) for item in value]
    return value


def _is_kind(value: object, kind: type) -> bool:
    """JSON's view of types: a bool is no number, and an integer is a float too."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, int) if kind is int else isinstance(value, int | float)


def _check_types(manifest: Manifest) -> None:
    """Wrong types are 400s, never 500s or junk on disk."""
    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    expected = {"name": str, "runtime": str, "weights": str, "owner": str,
                "unmatched_data_to": str}
    for field_name, kind in expected.items():
        if not isinstance(getattr(manifest, field_name), kind):
            raise InvalidRequest(f"'{field_name}' must be a string", param=field_name)
    for field_name in ("size", "context_length", "data_share_ppm", "created"):
        if not is_int(getattr(manifest, field_name)):
            raise InvalidRequest(f"'{field_name}' must be an integer", param=field_name)
    if not isinstance(manifest.federate, bool):
        raise InvalidRequest("'federate' must be true or false", param="federate")
    if manifest.embedding_output is not None and not isinstance(manifest.embedding_output, str):
        raise InvalidRequest("'embedding_output' must be a string", param="embedding_output")
    if manifest.chat_format is not None and not isinstance(manifest.chat_format, str):
        raise InvalidRequest("'chat_format' must be a string", param="chat_format")
    if not isinstance(manifest.price, Price):
        raise InvalidRequest("'price' must be an object", param="price")
    for field_name in ("max_batch_size", "batch_delay_us"):
        if not is_int(getattr(manifest, field_name)):
            raise InvalidRequest(f"'{field_name}' must be an integer", param=field_name)
    if not 1 <= manifest.max_batch_size <= 4096 or not 0 <= manifest.batch_delay_us <= 10**6:
        raise InvalidRequest("max_batch_size is 1..4096, batch_delay_us 0..1000000",
                             param="max_batch_size")
    layer = manifest.influence_layer
    names = {"features", "weights", "bias"}
    if layer is not None and (not isinstance(layer, dict) or not (
            set(layer) == names or (set(layer) == names | {"source"}
                                    and layer["source"] == "found"))
            or not all(isinstance(v, str) for v in layer.values())):
        raise InvalidRequest("influence_layer is {features, weights, bias} names (plus "
                             "source: found, when edged found it)", param="influence_layer")
    if not isinstance(manifest.datanets, tuple) or not all(
            isinstance(name, str) for name in manifest.datanets):
        raise InvalidRequest("'datanets' must be a list of names", param="datanets")


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
        manifest = manifest.checked()
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
