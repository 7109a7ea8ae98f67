"""Predictions on tensor models (ONNX), with dynamic batching.

Concurrent requests to one model wait at most the model's batching window
(``batch_delay_us``) and are stacked along the first axis into one backend call of
at most ``max_batch_size`` rows, then split back. Requests stack only with requests of
the same input names, dtypes and trailing dimensions. If a stacked call is refused as
invalid input, each request of the batch runs alone, so a malformed request fails
alone. The receipts of one batch are committed in one transaction, and each request
gets its result only after that commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from attribution.receipt import SignedReceipt
from edged import errors
from edged.attributor import Attribution, Attributor
from edged.bindings import InfluenceBindings
from edged.inference import build_draft
from edged.keys import NodeKeys
from edged.ledger import Ledger
from edged.manifest import Manifest
from edged.models import ModelStore
from edged.scheduler import Scheduler
from runtimes.base import InvalidInput

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    outputs: Tensors
    rows: int
    receipt: SignedReceipt


@dataclass
class _Request:
    inputs: Tensors
    rows: int
    keep_alive: float | None
    future: asyncio.Future[Prediction]

    @property
    def signature(self) -> tuple[Any, ...]:
        return tuple(sorted((name, str(array.dtype), array.shape[1:])
                            for name, array in self.inputs.items()))


@dataclass
class _Queue:
    requests: list[_Request] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    flusher: asyncio.Task[None] | None = None


def tensor_commitment(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The canonical form receipts commit to: dtype, shape and raw bytes per tensor."""
    return {name: [str(array.dtype), list(array.shape), np.ascontiguousarray(array).tobytes()]
            for name, array in sorted(tensors.items())}


class PredictService:
    def __init__(self, *, store: ModelStore, scheduler: Scheduler, ledger: Ledger,
                 keys: NodeKeys, attributor: Attributor, bindings: InfluenceBindings,
                 clock_ms: Any) -> None:
        self.bindings = bindings
        self.store = store
        self.scheduler = scheduler
        self.ledger = ledger
        self.keys = keys
        self.attributor = attributor
        self.clock_ms = clock_ms
        self._queues: dict[str, _Queue] = {}
        self._attribution_failures: Counter[str] = Counter()
        self._failures_lock = threading.Lock()

    async def predict(self, model: str, inputs: Tensors,
                      keep_alive: float | None = None) -> Prediction:
        manifest = self.store.get(model)
        if manifest.runtime != "onnx":
            raise errors.Unsupported(f"model {model!r} does not serve predictions",
                                     param="model")
        self.attributor.check(manifest)
        rows = _rows(inputs)
        if rows > manifest.max_batch_size:
            raise errors.InvalidRequest(f"at most {manifest.max_batch_size} rows per request",
                                        param="inputs")
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(model, _Queue())
        queue.requests.append(_Request(inputs, rows, keep_alive, future))
        if sum(r.rows for r in queue.requests) >= manifest.max_batch_size:
            queue.full.set()
        if queue.flusher is None or queue.flusher.done():
            queue.flusher = asyncio.create_task(self._flush(manifest, queue))
        return await future

    async def _flush(self, manifest: Manifest, queue: _Queue) -> None:
        """Wait out the window (or until a batch is full), run, repeat while work waits."""
        while queue.requests:
            if manifest.batch_delay_us > 0:
                with contextlib.suppress(TimeoutError):  # the window ended before a full batch
                    await asyncio.wait_for(queue.full.wait(), manifest.batch_delay_us / 1e6)
            queue.full.clear()
            batch, rows = [], 0
            for request in list(queue.requests):
                if rows + request.rows > manifest.max_batch_size:
                    break
                batch.append(request)
                rows += request.rows
            del queue.requests[: len(batch)]
            groups: dict[tuple[Any, ...], list[_Request]] = {}
            for request in batch:
                groups.setdefault(request.signature, []).append(request)
            for group in groups.values():
                await self._run_group(manifest, group)

    async def _run_group(self, manifest: Manifest, group: list[_Request]) -> None:
        try:
            async with self.scheduler.lease(manifest.name,
                                            keep_alive=group[-1].keep_alive) as lease:
                valid = self._validated(lease.backend, group)
                results = await self._run(lease, valid) if valid else []
        except errors.EdgedError as exc:
            _fail(group, exc)
            return
        except Exception:
            logger.exception("prediction failed")
            _fail(group, errors.InternalError("prediction failed"))
            return
        if not valid:
            return
        try:
            receipts = await self._commit(manifest, valid, results)
        except Exception:
            logger.exception("committing prediction receipts failed")
            _fail(valid, errors.InternalError("prediction failed"))
            return
        for request, outputs, receipt in zip(valid, results, receipts, strict=True):
            if not request.future.done():
                request.future.set_result(Prediction(outputs, request.rows, receipt))

    @staticmethod
    def _validated(backend: Any, group: list[_Request]) -> list[_Request]:
        """Check each request on its own first, so a malformed one fails alone."""
        check = getattr(backend, "check_inputs", None)
        valid = []
        for request in group:
            try:
                if check is not None:
                    check(request.inputs)
            except InvalidInput as exc:
                _fail([request], errors.InvalidRequest(str(exc), param="inputs"))
                continue
            valid.append(request)
        return valid

    @staticmethod
    async def _run(lease: Any, group: list[_Request]) -> list[Tensors]:
        stacked = {name: np.concatenate([r.inputs[name] for r in group], axis=0)
                   for name in group[0].inputs}
        try:
            outputs: Tensors = await lease.run(lease.backend.predict, stacked)
        except InvalidInput as exc:
            raise errors.InvalidRequest(str(exc), param="inputs") from None
        results, start = [], 0
        for request in group:
            results.append({name: array[start:start + request.rows]
                            for name, array in outputs.items()})
            start += request.rows
        return results

    async def _commit(self, manifest: Manifest, group: list[_Request],
                      results: list[Tensors]) -> list[SignedReceipt]:
        if manifest.data_share_ppm and self.bindings.get(manifest.name) is None:
            await asyncio.to_thread(self.bindings.load, manifest,
                                    self.store.weights_path(manifest))
        attributions = await asyncio.to_thread(self._attribute_group, manifest, group, results)
        drafts = [build_draft(manifest, "predict", self.keys.commitment_key,
                              tensor_commitment(r.inputs), tensor_commitment(outputs), r.rows,
                              r.rows, manifest.price.fee(0, 0, rows=r.rows), attribution,
                              self.clock_ms())
                  for r, outputs, attribution in zip(group, results, attributions, strict=True)]
        return await asyncio.shield(self.ledger.append_group(
            drafts, [a.evidence for a in attributions]))

    def _attribute_group(self, manifest: Manifest, group: list[_Request],
                         results: list[Tensors]) -> list[Attribution]:
        """Blocking (index queries, matrix products): call it from a thread."""
        return [self._attribute(manifest, r.inputs, outputs)
                for r, outputs in zip(group, results, strict=True)]

    def _attribute(self, manifest: Manifest, inputs: Tensors,
                   outputs: Tensors) -> Attribution:
        """The prediction happened and is owed to someone: if data attribution fails (a
        binding that no longer fits the model, say), the receipt falls back to owner/1.
        Failures move money, so each is counted by cause (see :meth:`status`) and each
        cause is logged once; the log names the cause and the model, never the data."""
        try:
            return self.attributor.attribute_prediction(manifest, self.bindings, inputs,
                                                        outputs)
        except Exception as exc:
            cause = type(exc).__name__
            with self._failures_lock:
                self._attribution_failures[cause] += 1
                first_of_its_kind = self._attribution_failures[cause] == 1
            if first_of_its_kind:
                logger.warning("data attribution failed with %s (model %s); receipts fall "
                               "back to owner/1; further failures of this kind are only "
                               "counted", cause, manifest.name)
            return self.attributor.attribute(manifest, None)

    def status(self) -> dict[str, Any]:
        """What the node shows about predictions: data attribution failures by cause."""
        with self._failures_lock:
            return {"attribution_failures": dict(sorted(self._attribution_failures.items()))}


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    if not inputs:
        raise errors.InvalidRequest("no inputs", param="inputs")
    counts = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
    if len(counts) != 1 or -1 in counts or 0 in counts:
        raise errors.InvalidRequest("every input needs the same, non-zero first (batch) "
                                    "dimension", param="inputs")
    return counts.pop()


def _fail(group: list[_Request], error: errors.EdgedError) -> None:
    for request in group:
        if not request.future.done():
            request.future.set_exception(error)


PREDICT = web.AppKey("predict", PredictService)
"""The node's batched ONNX predictions: ``app[PREDICT]``."""
