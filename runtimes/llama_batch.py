"""Continuous batching: several generations share one llama.cpp context.

One context holds ``parallel`` sequences (llama.cpp's ``n_seq_max``; each sequence has
its own ``context_length`` cells). A step thread loops: it admits waiting requests into
free slots, builds one ``llama_batch`` with the next token of every decoding sequence
and prompt chunks of newly admitted ones (at most ``n_batch`` tokens a step, so a long
prompt is prefilled over several steps while the others keep decoding), calls
``llama_decode`` once, and samples every sequence that has logits with its own
:class:`~runtimes.llama_sampling.SequenceSampler` (native chain, grammar, logprobs).
Each request reads its events (``Delta`` / ``Done``) from its own queue, so a slow
reader never stalls the others.

A finished sequence leaves its cells in place: the next request whose prompt shares
their prefix (a repeated system prompt) is put in that slot and evaluates only the rest,
as llama-server's slot selection does. ``cache_prompt=False`` clears the slot first.

This mirrors the reference programs in the llama.cpp sources (``tools/server``,
``examples/parallel``) on llama-cpp-python's low-level API.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from runtimes.base import (
    BackendError,
    Delta,
    Done,
    FinishReason,
    GenerationParams,
    InvalidInput,
    TokenLogprob,
)
from runtimes.llama_sampling import SequenceSampler
from runtimes.stop_text import StopTextStream

_END = object()  # queued after a request's Done


@dataclass
class _Request:
    prompt: list[int]
    params: GenerationParams
    stops: tuple[str, ...]
    limit: int
    cancel: threading.Event
    sampler: SequenceSampler
    events: queue.SimpleQueue[object] = field(default_factory=queue.SimpleQueue)


@dataclass
class _Slot:
    """One sequence of the context: the tokens whose cells it holds, and its request."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    request: _Request | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    next_token: int | None = None  # sampled, to be evaluated next step
    produced: int = 0
    unsent: int = 0
    text: StopTextStream | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of tokens not yet sent


class BatchEngine:
    """Serves :meth:`generate` calls from many threads on one context (see module doc)."""

    def __init__(self, llama_cpp: ModuleType, model: Any, *, parallel: int,
                 context_length: int, threads: int | None, n_batch: int,
                 context_options: dict[str, Any],
                 piece: Callable[[int], bytes | None]) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self._llama_cpp = llama_cpp
        self._piece = piece
        self.parallel = parallel
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = parallel * context_length
        params.n_seq_max = parallel
        params.n_batch = params.n_ubatch = n_batch
        params.kv_unified = False  # each sequence owns context_length cells
        params.no_perf = True
        if threads:
            params.n_threads = params.n_threads_batch = threads
        known = {name for name, *_ in params._fields_}
        for name, value in context_options.items():
            if name not in known:  # a ctypes struct would take any name and ignore it
                raise BackendError(f"llama.cpp has no context parameter {name!r}")
            setattr(params, name, value)
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if self._ctx is None:
            raise BackendError("llama.cpp could not create the batched context")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.context_length = llama_cpp.llama_n_ctx_seq(self._ctx)
        self._n_batch = n_batch
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._slots = [_Slot(seq_id) for seq_id in range(parallel)]
        self._waiting: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.prompt_tokens_evaluated = 0  # prompt tokens decoded (reused prefixes are not)
        self._thread = threading.Thread(target=self._run, name="edged-llama-batch",
                                        daemon=True)
        self._thread.start()

    # -- the callers' side ------------------------------------------------------------

    def generate(self, prompt: list[int], params: GenerationParams, stops: tuple[str, ...],
                 limit: int, cancel: threading.Event,
                 sampler: SequenceSampler) -> Iterator[Delta | Done]:
        """Queue a generation; iterate its events. Closing the iterator cancels it. The
        engine owns ``sampler`` from here on and frees it when the request ends."""
        request = _Request(prompt, params, stops, limit, cancel, sampler)
        with self._wake:
            if self._closed:
                sampler.close()
                raise BackendError("the model is closed")
            self._waiting.append(request)
            self._wake.notify()
        return self._events(request)

    @staticmethod
    def _events(request: _Request) -> Iterator[Delta | Done]:
        try:
            while True:
                item = request.events.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            request.cancel.set()  # a reader that stops early ends the sequence

    def busy(self) -> int:
        """Slots generating now (for status displays)."""
        return sum(slot.request is not None for slot in self._slots)

    def close(self) -> None:
        """Stop the step thread (ending every request with an error), free the context."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        llama_cpp = self._llama_cpp
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)

    # -- the step thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._active():
                    self._wake.wait()
                if self._closed:
                    break
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a failed decode fails the requests in it
                for slot in self._active():
                    self._finish(slot, None, error=BackendError(
                        f"llama.cpp failed to evaluate the batch ({type(exc).__name__})"))
        error = BackendError("the model was unloaded")
        for slot in self._active():
            self._finish(slot, None, error=error)
        for request in self._waiting:
            request.sampler.close()
            request.events.put(error)
        self._waiting.clear()

    def _active(self) -> list[_Slot]:
        return [slot for slot in self._slots if slot.request is not None]

    def _admit(self) -> None:
        """FIFO: each waiting request takes the free slot that shares most of its prompt."""
        while self._waiting:
            free = [slot for slot in self._slots if slot.request is None]
            if not free:
                return
            request = self._waiting.popleft()
            if request.cancel.is_set() or request.limit <= 0:
                reason: FinishReason = "cancelled" if request.cancel.is_set() else "length"
                request.sampler.close()
                request.events.put(Done(len(request.prompt), 0, reason))
                request.events.put(_END)
                continue
            reuse = {slot.seq_id: _common_prefix(slot.cached, request.prompt)
                     if request.params.cache_prompt else 0 for slot in free}
            slot = max(free, key=lambda s: (reuse[s.seq_id], -len(s.cached)))
            keep = min(reuse[slot.seq_id], len(request.prompt) - 1)  # last token: logits
            self._llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1)
            slot.cached = request.prompt[:keep]
            slot.pending = request.prompt[keep:]
            slot.request = request
            slot.next_token = None
            slot.produced = slot.unsent = 0
            slot.text = StopTextStream(request.stops)
            slot.logprobs = []

    def _step(self) -> None:
        llama_cpp, batch = self._llama_cpp, self._batch
        outputs: list[tuple[_Slot, int]] = []  # (slot, index of its logits in the batch)
        count = 0
        for slot in self._active():
            assert slot.request is not None
            if slot.request.cancel.is_set():
                self._finish(slot, "cancelled")
            elif slot.next_token is not None:
                count = self._add(count, slot.next_token, len(slot.cached), slot.seq_id, True)
                slot.cached.append(slot.next_token)
                slot.next_token = None
                outputs.append((slot, count - 1))
        for slot in self._active():  # prefill with what is left of this step's budget
            if not slot.pending or count >= self._n_batch:
                continue
            chunk = slot.pending[: self._n_batch - count]
            del slot.pending[: len(chunk)]
            self.prompt_tokens_evaluated += len(chunk)
            for token in chunk:
                count = self._add(count, token, len(slot.cached), slot.seq_id, False)
                slot.cached.append(token)
            if not slot.pending:  # the prompt's last token: its logits give the first token
                batch.logits[count - 1] = True
                outputs.append((slot, count - 1))
        if count == 0:
            return
        batch.n_tokens = count
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise BackendError(f"llama_decode returned {status}")
        for slot, index in outputs:
            if slot.request is None:  # finished by an earlier output of this step
                continue
            try:
                token, logprob = slot.request.sampler.sample(self._ctx, index)
            except InvalidInput as exc:  # the grammar allows no token: this request ends
                self._finish(slot, None, error=exc)
                continue
            self._take(slot, token, logprob)

    def _add(self, count: int, token: int, position: int, seq_id: int, logits: bool) -> int:
        batch = self._batch
        batch.token[count] = token
        batch.pos[count] = position
        batch.n_seq_id[count] = 1
        batch.seq_id[count][0] = seq_id
        batch.logits[count] = logits
        return count + 1

    def _take(self, slot: _Slot, token: int, logprob: TokenLogprob | None) -> None:
        """Handle one sampled token: end of generation, stop string, limit, or text."""
        request, text = slot.request, slot.text
        assert request is not None and text is not None
        piece = self._piece(token)
        if piece is None:  # end of generation: not emitted, not counted
            self._finish(slot, "stop")
            return
        slot.produced += 1
        slot.unsent += 1
        if logprob is not None:
            slot.logprobs.append(logprob)
        out = text.push(piece)
        if out:
            request.events.put(Delta(out, slot.unsent, self._take_logprobs(slot)))
            slot.unsent = 0
        if text.stopped:
            self._finish(slot, "stop")
        elif slot.produced >= request.limit or len(slot.cached) + 1 >= self.context_length:
            self._finish(slot, "length")
        else:
            slot.next_token = token

    def _finish(self, slot: _Slot, reason: FinishReason | None, *,
                error: BaseException | None = None) -> None:
        request, text = slot.request, slot.text
        assert request is not None
        if error is not None:
            request.events.put(error)
            # Cells of a failed evaluation cannot be trusted for reuse.
            self._llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cached = []
        else:
            assert reason is not None and text is not None
            tail = text.finish()
            if tail:
                request.events.put(Delta(tail, slot.unsent, self._take_logprobs(slot)))
            request.events.put(Done(len(request.prompt), slot.produced, reason))
            request.events.put(_END)
        slot.pending = []  # cancelled mid-prefill: cached holds what was evaluated
        slot.request = None
        slot.next_token = None
        slot.logprobs = []
        request.sampler.close()

    @staticmethod
    def _take_logprobs(slot: _Slot) -> tuple[TokenLogprob, ...]:
        taken = tuple(slot.logprobs)
        slot.logprobs.clear()
        return taken


def _common_prefix(a: list[int], b: list[int]) -> int:
    size = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        size += 1
    return size

