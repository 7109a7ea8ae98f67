"""The inference service: scheduler in, receipt out.

Handlers call this module and nothing deeper. Each inference runs on a leased
model, and ends with a receipt committed to the ledger; the receipt id
reaches the caller only after that commit. A generation that stops early
(the client went away mid-stream) still gets a receipt, for the tokens
actually produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from attribution.commitments import commit
from attribution.receipt import ModelRef, ReceiptDraft, SignedReceipt
from edged import errors
from edged.attributor import Attribution, Attributor
from edged.background import wait_through_cancellation
from edged.keys import NodeKeys
from edged.ledger import Ledger
from edged.manifest import Manifest
from edged.models import ModelStore
from edged.openai_requests import EmbeddingRequest, GenerateRequest
from edged.scheduler import Lease, Scheduler
from edged.settings import Settings
from edged.token_stream import TokenStream
from runtimes import (
    ContextLengthExceeded,
    Delta,
    Done,
    InvalidInput,
    TokenLogprob,
    UnsupportedOperation,
)
from sync.clock import unix_millis


def build_draft(manifest: Manifest, kind: str, commitment_key: bytes, committed_input: Any,
                committed_output: Any, input_units: int, output_units: int, fee: int,
                attribution: Attribution, ts: int) -> ReceiptDraft:
    """The receipt of one inference, before the ledger gives it its place in the chain."""
    return ReceiptDraft(
        ts=ts,
        model=ModelRef(manifest.name, bytes.fromhex(manifest.weights), manifest.digest()),
        kind=kind,
        input_commitment=commit(commitment_key, committed_input),
        output_commitment=commit(commitment_key, committed_output),
        input_units=input_units,
        output_units=output_units,
        fee=fee,
        payees=attribution.payees,
        attr=attribution.ref,
    )


@dataclass(frozen=True)
class Completion:
    text: str
    done: Done
    receipt: SignedReceipt
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token, when the request asked


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    receipt: SignedReceipt


def manifest_of(lease: Lease, requested: Manifest) -> Manifest:
    """The manifest the leased model was loaded from: the one a receipt must name, even
    when the model's manifest changed between the request's arrival and its lease."""
    source = lease.plan.source
    return source if isinstance(source, Manifest) else requested


class InferenceService:
    def __init__(self, *, settings: Settings, store: ModelStore, scheduler: Scheduler,
                 ledger: Ledger, keys: NodeKeys, attributor: Attributor,
                 clock_ms: Callable[[], int] = unix_millis) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.ledger = ledger
        self.keys = keys
        self.attributor = attributor
        self.clock_ms = clock_ms

    async def complete(self, request: GenerateRequest) -> Completion:
        """Run a generation to its end and commit its receipt."""
        async with self.stream(request) as stream:
            deltas = [delta async for delta in stream]
        assert stream.receipt is not None and stream.done is not None
        return Completion("".join(delta.text for delta in deltas), stream.done, stream.receipt,
                          tuple(entry for delta in deltas for entry in delta.logprobs))

    def stream(self, request: GenerateRequest) -> GenerationStream:
        """An async context manager; entering it raises request errors (bad model, context
        too long, queue full) before any output, so callers can still answer with an error."""
        return GenerationStream(self, request)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        manifest = self.store.get(request.model)
        self.attributor.check(manifest)
        async with self._lease(manifest, request.keep_alive, embedding=True) as lease:
            manifest = manifest_of(lease, manifest)
            try:
                result = await lease.run(lease.backend.embed, list(request.inputs))
            except ContextLengthExceeded as exc:
                raise errors.ContextLengthExceeded(str(exc), param="input") from None
            except UnsupportedOperation as exc:
                raise errors.Unsupported(str(exc), param="model") from None
        packed = b"".join(struct.pack(f"<{len(v)}f", *v) for v in result.vectors)
        receipt = await self._commit(manifest, "embedding", {"input": list(request.inputs)},
                                     {"embedding": packed}, None, result.prompt_tokens,
                                     len(result.vectors))
        return Embeddings(result.vectors, result.prompt_tokens, receipt)

    def _lease(self, manifest: Manifest, keep_alive: float | None, *,
               embedding: bool = False) -> AbstractAsyncContextManager[Lease]:
        return self.scheduler.lease(manifest.name, keep_alive=keep_alive, embedding=embedding)

    async def _commit(self, manifest: Manifest, kind: str, committed_input: Any,
                      committed_output: Any, output_text: str | None, input_units: int,
                      output_units: int) -> SignedReceipt:
        """Attribute, build the draft, and append it (with its evidence) to the ledger.

        Shielded: once the inference happened its receipt is written, even if the client
        has gone away meanwhile."""
        return await asyncio.shield(self._attribute_and_append(
            manifest, kind, committed_input, committed_output, output_text, input_units,
            output_units))

    async def _attribute_and_append(self, manifest: Manifest, kind: str, committed_input: Any,
                                    committed_output: Any, output_text: str | None,
                                    input_units: int, output_units: int) -> SignedReceipt:
        attribution = await asyncio.to_thread(self.attributor.attribute, manifest, output_text)
        draft = build_draft(manifest, kind, self.keys.commitment_key, committed_input,
                            committed_output, input_units, output_units,
                            manifest.price.fee(input_units, output_units), attribution,
                            self.clock_ms())
        return await self.ledger.append(draft, attribution.evidence)


class GenerationStream:
    """One streamed generation: ``async with service.stream(req) as s: async for delta in
    s`` (each :class:`Delta` has its text, its tokens and, when asked for, their logprobs).

    Leaving the block early cancels the generation; the receipt for the tokens produced so
    far is still committed, and is available as ``s.receipt`` after the block.
    """

    def __init__(self, service: InferenceService, request: GenerateRequest) -> None:
        self.service = service
        self.request = request
        self.manifest = service.store.get(request.model)
        service.attributor.check(self.manifest)
        self.receipt: SignedReceipt | None = None
        self.done: Done | None = None
        self._text: list[str] = []
        self._tokens = 0  # the generated tokens behind the text in ``_text``
        self._stack = contextlib.AsyncExitStack()
        self._events: TokenStream | None = None
        self._first: Delta | Done | None = None

    async def __aenter__(self) -> GenerationStream:
        lease = await self._stack.enter_async_context(
            self.service._lease(self.manifest, self.request.keep_alive))
        self.manifest = manifest_of(lease, self.manifest)
        try:
            prompt, params = self.request.backend_input(lease.backend.renders_tools)
            self._events = lease.stream(prompt, params)
            self._first = await anext(self._events)
        except BaseException as exc:
            await self._stack.aclose()
            param = "messages" if self.request.kind == "chat" else "prompt"
            if isinstance(exc, ContextLengthExceeded):
                raise errors.ContextLengthExceeded(str(exc), param=param) from None
            if isinstance(exc, UnsupportedOperation):  # no chat template; not a generator
                raise errors.Unsupported(str(exc), param="model") from None
            if isinstance(exc, InvalidInput):  # a grammar or bias this model cannot take
                raise errors.InvalidRequest(str(exc), param=exc.param) from None
            raise
        return self

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[Delta]:
        assert self._events is not None
        event = self._first
        while event is not None:
            if isinstance(event, Done):
                self.done = event
                return
            self._text.append(event.text)
            self._tokens += event.tokens
            yield event
            event = await anext(self._events, None)

    async def __aexit__(self, *exc_info: object) -> None:
        # Runs to its end even if the caller is cancelled meanwhile (a server cancels the
        # handler of a client that went away): what was produced still gets its receipt.
        finishing = asyncio.ensure_future(self._finish())
        try:
            await wait_through_cancellation(finishing)
        except asyncio.CancelledError:
            finishing.result()  # an error of its own is reported first
            raise
        finishing.result()

    async def _finish(self) -> None:
        try:
            if self.done is None:
                # Left early: stop the backend and wait for its end. Text it produced after
                # the consumer left was never delivered, so neither it nor its tokens are
                # committed or billed: the receipt covers the text handed out, exactly.
                assert self._events is not None
                self._events.cancel.set()
                async for event in self._events:
                    if isinstance(event, Done):
                        self.done = Done(event.prompt_tokens, self._tokens, "cancelled")
        finally:
            await self._stack.aclose()
        if self.done is None:  # the backend failed; nothing was produced that we can count
            return
        text = "".join(self._text)
        self.receipt = await self.service._commit(
            self.manifest, self.request.kind, self.request.committed_input(), {"text": text},
            text, self.done.prompt_tokens, self.done.completion_tokens)


SERVICE = web.AppKey("service", InferenceService)
"""The node's inference service: ``app[SERVICE]``."""
