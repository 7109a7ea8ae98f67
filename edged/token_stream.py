"""The events of one generation, carried from the model's worker thread to the event loop.

A backend's ``generate`` is a blocking generator; :class:`TokenStream` pulls it on one
executor thread and hands each event to the loop with ``call_soon_threadsafe`` (no
executor round trip per token). The scheduler's lease (``edged/scheduler.py``) makes one
per generation and frees its slot only once the stream's thread has returned.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, cast

from edged.background import wait_through_cancellation
from runtimes import Backend, Delta, Done, GenerationParams, Prompt

_END = object()  # the stream's last queue item after a normal finish


class TokenTimer(Protocol):
    """Told of each batch of tokens one generation hands to the loop (edged.metrics)."""

    def tokens(self, count: int) -> None: ...


class TokenStream:
    """The events of one generation. A worker thread, started by the first
    ``__anext__``, pulls the backend's generator and hands each event to the loop
    with ``call_soon_threadsafe``: no executor round trip per token. Setting
    ``cancel`` makes the backend finish early with ``Done("cancelled")``."""

    def __init__(self, backend: Backend, executor: ThreadPoolExecutor, prompt: Prompt,
                 params: GenerationParams, timer: TokenTimer | None = None) -> None:
        self.cancel = threading.Event()  # handed to the backend
        self._gone = threading.Event()  # the consumer left: stop pulling events
        self._backend = backend
        self._executor = executor
        self._prompt = prompt
        self._params = params
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._thread: asyncio.Future[None] | None = None
        self._finished = False
        self._timer = timer

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> Delta | Done:
        if self._finished:
            raise StopAsyncIteration
        if self._thread is None:
            loop = asyncio.get_running_loop()
            self._thread = loop.run_in_executor(self._executor, self._pump, loop)
        item = await self._queue.get()
        if item is _END:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if self._timer is not None and isinstance(item, Delta) and item.tokens:
            self._timer.tokens(item.tokens)
        return cast("Delta | Done", item)

    async def aclose(self) -> None:
        """Stop the generation and wait until the backend has returned."""
        thread = self.stop()
        if thread is not None:
            await wait_through_cancellation(thread)

    def stop(self) -> asyncio.Future[None] | None:
        """End the stream without waiting; return the worker's future if it still runs
        (the lease waits for it before it frees the slot)."""
        self._finished = True
        if self._thread is None or self._thread.done():
            return None
        self._gone.set()
        self.cancel.set()
        return self._thread

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening
                self._gone.set()
                self.cancel.set()

        try:
            events = self._backend.generate(self._prompt, self._params, self.cancel)
        except BaseException as exc:  # anything, or the consumer would wait forever
            emit(exc)
            return
        try:
            for event in events:
                if self._gone.is_set():
                    break
                emit(event)
            else:
                emit(_END)
        except BaseException as exc:
            emit(exc)
        finally:
            close = getattr(events, "close", None)
            if callable(close):
                close()  # runs the generator's cleanup here, before the slot is freed

