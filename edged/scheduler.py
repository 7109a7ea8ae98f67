"""The model scheduler: which models are loaded, and who may use them when.

Why one module of ~530 lines: loading, slots, the FIFO queue, eviction, expiry and the
``Lease`` a request holds are one state machine over each load (``_Model``): a lease
frees its slot through it and ``close``/``unload`` reach into the leases, so apart they
would share private state. The generation's thread-to-loop stream is apart, in
``edged/token_stream.py``.

Modelled on Ollama's scheduler:

- A model is loaded on its first lease (the blocking loader runs in a thread);
  concurrent requests share that one load, and a failed load fails them all and
  leaves nothing behind.
- Each loaded model has its own ``ThreadPoolExecutor`` with
  ``backend.max_concurrency`` workers and as many slots. A lease holds one slot
  for its whole ``async with`` block. Requests waiting for a slot (or for the
  load) are served FIFO; when ``max_queue`` of them already wait, the next one
  gets :class:`~edged.errors.Overloaded` at once.
- ``keep_alive`` (seconds): after the last lease ends, the model expires at
  ``now + keep_alive``; ``0`` unloads it at once, a negative value keeps it
  forever. Every request sets it (its own value or the default): the latest wins.
- At most ``max_loaded_models`` are resident; a new load first unloads the least
  recently used idle model, and waits while every resident model is busy.
- ``unload`` (and eviction, expiry, ``close``) detaches the model at once, so new
  requests start a fresh load, but closes it only after the requests it already
  admitted (active and queued) have finished.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

import runtimes
from edged.background import wait_through_cancellation
from edged.errors import NotReady, Overloaded
from edged.token_stream import TokenStream, TokenTimer
from runtimes import Backend, GenerationParams, ModelSpec, Prompt

log = logging.getLogger(__name__)

T = TypeVar("T")
_DEFAULT_HOLD_S = 1.0  # assumed request duration before a model has served one
_MAX_RETRY_AFTER_S = 300


@dataclass(frozen=True)
class LoadPlan:
    """How to load one model: a runtime registry name and the model's spec.

    ``source`` is what the plan was made from (the node passes the model's manifest);
    every lease of this load hands it back, so a caller knows what really runs."""

    runtime: str
    spec: ModelSpec
    source: Any = None


@dataclass(frozen=True)
class LoadedModel:
    """A snapshot of one resident model. Times are in the scheduler's clock."""

    name: str
    runtime: str
    memory_bytes: int
    active: int  # leases holding a slot
    queued: int  # leases waiting for a slot
    expires_at: float | None  # None: never; projected from keep_alive while busy
    last_used: float
    details: dict[str, Any] = field(default_factory=dict)  # backend.describe(): providers...
    slots: int = 1  # leases served at once (the backend's max_concurrency)


class _Abandoned(NotReady):
    """Every request for a model still waiting to load went away."""


class _Model:
    """One load of one model. After it is unloaded, a new request makes a new one."""

    def __init__(self, name: str, plan: LoadPlan, keep_alive: float, now: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.plan = plan
        self.keep_alive = keep_alive
        self.ready: asyncio.Future[None] = loop.create_future()
        self.retire_task: asyncio.Task[None] | None = None
        self.backend: Backend | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.side_executor: ThreadPoolExecutor | None = None  # work that takes no slot
        self.capacity = 1
        self.memory = 0
        self.refs = 0  # leases and preloads that need this model now
        self.queued = 0  # leases waiting for the load or for a slot
        self.active = 0  # slots held
        self.slot_waiters: deque[asyncio.Future[None]] = deque()
        self.leases: set[Lease] = set()
        self.expires_at: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_used = now
        self.avg_hold: float | None = None  # moving average of slot hold times, for Retry-After


class Scheduler:
    """Loads, shares, queues and unloads models; see the module docstring."""

    def __init__(self, resolve: Callable[[str], LoadPlan], *, max_loaded_models: int = 2,
                 default_keep_alive: float = 300.0, max_queue: int = 16,
                 loader: Callable[[str, ModelSpec], Backend] = runtimes.load_backend,
                 clock: Callable[[], float] = time.monotonic,
                 token_timers: Callable[[str], TokenTimer] | None = None) -> None:
        """``resolve`` maps a model name to a plan and raises ``ModelNotFound``; it runs
        on the event loop when a load starts, so it must be quick. ``token_timers`` makes
        a timer per generation, by model name."""
        if max_loaded_models < 1 or max_queue < 0:
            raise ValueError("max_loaded_models must be >= 1 and max_queue >= 0")
        self._resolve = resolve
        self._max_loaded = max_loaded_models
        self._default_keep_alive = default_keep_alive
        self._max_queue = max_queue
        self._loader = loader
        self._clock = clock
        self._models: dict[str, _Model] = {}  # the current load of each name
        self._resident: set[_Model] = set()  # loading, loaded or closing: each takes a place
        self._tasks: set[asyncio.Task[Any]] = set()
        self._change = asyncio.Event()  # set and replaced on every notable change
        self._closed = False
        self._token_timers = token_timers

    async def start(self) -> None:
        """Start the scheduler. There is no background task (expiry uses one timer
        per idle model), so this only checks that it was not closed."""
        if self._closed:
            raise NotReady("the scheduler has been closed")

    async def close(self) -> None:
        """Refuse new work, cancel queued requests (``NotReady``), ask running
        generations to stop, then unload every model and shut its executor down.
        Returns once every backend is closed."""
        self._closed = True
        self._notify()  # loads waiting for a place give up
        entries = set(self._models.values()) | self._resident
        for m in entries:
            self._cancel_timer(m)
            while m.slot_waiters:
                waiter = m.slot_waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(NotReady("the server is shutting down"))
            for lease in m.leases:
                lease._interrupt()
        if entries:
            await asyncio.wait([m.ready for m in entries])  # loads in flight finish first
        await asyncio.gather(*(self._retire(m, "shutdown") for m in entries))
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    @asynccontextmanager
    async def lease(self, model: str, *, keep_alive: float | None = None,
                    embedding: bool = False) -> AsyncIterator[Lease]:
        """``async with`` context holding one slot of ``model``, loaded first if needed.

        With ``embedding``, a backend that embeds in a context of its own
        (``embeds_apart``) takes no slot: the lease runs on the model's side thread, and
        never waits behind generations. Raises ``ModelNotFound`` (from the resolver),
        ``Overloaded`` when ``max_queue`` requests already wait for this model,
        ``NotReady`` after ``close``, or the loader's exception. ``keep_alive`` as in the
        module docstring.
        """
        m = self._claim(model, keep_alive, queue=True)
        lease: Lease | None = None
        slot = True
        try:
            try:
                await asyncio.shield(m.ready)  # a cancelled waiter leaves the load running
                assert m.backend is not None
                slot = not (embedding and m.backend.embeds_apart)
                if slot:
                    await self._acquire_slot(m)
            finally:
                m.queued -= 1
            lease = Lease(m, self._clock(), side=not slot, token_timers=self._token_timers)
            m.leases.add(lease)
            yield lease
        finally:
            try:
                if lease is not None:
                    await lease._drain()  # the slot is free only once its thread returned
            finally:
                if lease is not None:
                    m.leases.discard(lease)
                    if slot:
                        self._release_slot(m, self._clock() - lease.started)
                self._unclaim(m)

    async def load(self, model: str, *, keep_alive: float | None = None) -> None:
        """Load ``model`` without using it (Ollama's empty request); it then
        expires per ``keep_alive`` like after a request. No slot is taken."""
        m = self._claim(model, keep_alive, queue=False)
        try:
            await asyncio.shield(m.ready)
        finally:
            self._unclaim(m)

    async def unload(self, model: str) -> bool:
        """Unload ``model``; False if it is neither loaded nor loading.

        The model stops taking new requests at once (a new request loads a fresh
        copy once this one is gone); requests already active or queued on it are
        served first, and this waits for them and for the backend to close.
        """
        targets = {m for m in self._resident | set(self._models.values()) if m.name == model}
        await asyncio.gather(*(asyncio.shield(self._retire(m, "unload")) for m in targets))
        return bool(targets)

    def reload(self, model: str) -> bool:
        """Make the next request for ``model`` load it afresh (its manifest changed).

        Like :meth:`unload`, but returns at once: the current load stops taking new
        requests now and closes after the requests it admitted have finished."""
        m = self._models.get(model)
        if m is not None:
            self._retire(m, "reload")
        return m is not None

    async def unload_expired(self) -> list[str]:
        """Unload the idle models whose keep-alive has run out by ``clock()`` now.
        The per-model timers do this on their own; this serves injected clocks."""
        now = self._clock()
        due = [m for m in self._models.values() if m.backend is not None and m.refs == 0
               and m.expires_at is not None and m.expires_at <= now]
        await asyncio.gather(*(self._retire(m, "expired") for m in due))
        return sorted(m.name for m in due)

    def loaded(self) -> list[LoadedModel]:
        """The resident models (loaded, or closing after an unload), by name."""
        now = self._clock()
        out = []
        for m in sorted(self._resident, key=lambda m: m.name):
            if m.backend is None:
                continue  # still loading
            expires_at = m.expires_at
            if m.retire_task is not None:
                expires_at = now
            elif m.refs:
                expires_at = None if m.keep_alive < 0 else now + m.keep_alive
            out.append(LoadedModel(m.name, m.plan.runtime, m.memory, m.active, m.queued,
                                   expires_at, m.last_used, m.backend.describe(), m.capacity))
        return out

    # -- claims and slots ------------------------------------------------------------

    def _claim(self, name: str, keep_alive: float | None, *, queue: bool) -> _Model:
        if self._closed:
            raise NotReady("the server is shutting down")
        m = self._models.get(name)
        if m is None:
            plan = self._resolve(name)  # ModelNotFound leaves no trace
            m = _Model(name, plan, self._default_keep_alive, self._clock(),
                       asyncio.get_running_loop())
            self._models[name] = m
            self._spawn(self._load(m))
        elif queue and m.queued >= self._max_queue and not (
                m.backend is not None and m.active < m.capacity and not m.slot_waiters):
            raise Overloaded(f"too many requests are waiting for model {name!r}",
                             retry_after=self._retry_after(m))
        m.keep_alive = self._default_keep_alive if keep_alive is None else keep_alive
        m.refs += 1
        m.queued += queue
        m.last_used = self._clock()
        self._cancel_timer(m)
        m.expires_at = None
        return m

    def _unclaim(self, m: _Model) -> None:
        m.refs -= 1
        m.last_used = self._clock()
        if m.refs:
            return
        self._notify()  # an idle model can be evicted; unload may proceed
        if self._models.get(m.name) is m and m.backend is not None and not self._closed:
            self._arm_expiry(m)

    def _retry_after(self, m: _Model) -> int:
        """Seconds until a slot is likely free: the queue ahead of the caller, served
        ``capacity`` at a time, each taking the recent average hold time."""
        hold = _DEFAULT_HOLD_S if m.avg_hold is None else m.avg_hold
        estimate = hold * (m.queued + 1) / m.capacity
        return max(1, min(_MAX_RETRY_AFTER_S, math.ceil(estimate)))

    async def _acquire_slot(self, m: _Model) -> None:
        if self._closed:
            raise NotReady("the server is shutting down")
        if m.active < m.capacity and not m.slot_waiters:
            m.active += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        m.slot_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release_slot(m, None)  # the slot reached us as we left: pass it on
            elif waiter in m.slot_waiters:
                m.slot_waiters.remove(waiter)
            raise

    def _release_slot(self, m: _Model, held: float | None) -> None:
        if held is not None:
            m.avg_hold = held if m.avg_hold is None else 0.8 * m.avg_hold + 0.2 * held
        while m.slot_waiters:
            waiter = m.slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over: strict FIFO, no barging
                return
        m.active -= 1

    # -- loading and unloading --------------------------------------------------------

    async def _load(self, m: _Model) -> None:
        try:
            await self._wait_for_place(m)
            self._resident.add(m)
            started = time.perf_counter()
            backend, memory, capacity = await self._run_loader(m.plan)
        except BaseException as exc:
            self._detach(m)
            self._resident.discard(m)
            self._notify()
            if not isinstance(exc, _Abandoned):
                log.warning("loading model %s failed: %s", m.name, type(exc).__name__)
            failure = exc if isinstance(exc, Exception) else NotReady("the load was interrupted")
            m.ready.set_exception(failure)
            m.ready.exception()  # mark retrieved: nobody may be waiting
            if not isinstance(exc, Exception):
                raise
            return
        m.backend, m.memory, m.capacity = backend, memory, max(1, capacity)
        m.executor = ThreadPoolExecutor(m.capacity, thread_name_prefix=f"edged-{m.name}")
        if backend.embeds_apart:
            m.side_executor = ThreadPoolExecutor(1, thread_name_prefix=f"edged-{m.name}-side")
        m.ready.set_result(None)
        log.info("loaded model %s in %.2f s", m.name, time.perf_counter() - started)
        if m.refs == 0 and self._models.get(m.name) is m and not self._closed:
            self._arm_expiry(m)

    async def _wait_for_place(self, m: _Model) -> None:
        while True:
            if self._closed:
                raise NotReady("the server is shutting down")
            if m.refs == 0:
                raise _Abandoned(f"nobody waits for model {m.name!r} any more")
            if len(self._resident) < self._max_loaded:
                return
            # Idle models already being closed free their place soon: evicting another
            # one for the same place would unload more than needed.
            closing = sum(1 for r in self._resident if r.retire_task and r.refs == 0)
            idle = [r for r in self._resident
                    if r.refs == 0 and r.backend is not None and r.retire_task is None]
            if idle and len(self._resident) - closing >= self._max_loaded:
                self._retire(min(idle, key=lambda r: r.last_used), "evicted")
            await self._changed()  # a model closed or went idle

    def _load_blocking(self, plan: LoadPlan) -> tuple[Backend, int, int]:
        backend = self._loader(plan.runtime, plan.spec)
        return backend, backend.memory_bytes(), backend.max_concurrency

    async def _run_loader(self, plan: LoadPlan) -> tuple[Backend, int, int]:
        pool = ThreadPoolExecutor(1, thread_name_prefix="edged-load")
        future = asyncio.get_running_loop().run_in_executor(pool, self._load_blocking, plan)
        pool.shutdown(wait=False)  # its one thread exits once the load returns
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_orphan)  # the thread cannot be stopped
            raise

    def _retire(self, m: _Model, reason: str) -> asyncio.Task[None]:
        """Detach ``m`` now and close it once idle; idempotent."""
        if m.retire_task is None:
            self._detach(m)
            m.retire_task = self._spawn(self._close_when_idle(m, reason))
        return m.retire_task

    async def _close_when_idle(self, m: _Model, reason: str) -> None:
        await asyncio.wait([m.ready])
        while m.refs:
            await self._changed()
        if m.backend is not None and m.executor is not None:
            started = time.perf_counter()
            try:  # close on the model's own threads: some libraries care which thread
                await asyncio.get_running_loop().run_in_executor(m.executor, m.backend.close)
            except Exception as exc:
                log.warning("closing model %s failed: %s", m.name, type(exc).__name__)
            m.executor.shutdown(wait=False)
            if m.side_executor is not None:
                m.side_executor.shutdown(wait=False)
            log.info("unloaded model %s (%s) in %.2f s",
                     m.name, reason, time.perf_counter() - started)
        self._resident.discard(m)
        self._notify()

    def _detach(self, m: _Model) -> None:
        if self._models.get(m.name) is m:
            del self._models[m.name]
        self._cancel_timer(m)

    # -- expiry -------------------------------------------------------------------------

    def _arm_expiry(self, m: _Model) -> None:
        if m.keep_alive < 0:
            m.expires_at = None
            return
        m.expires_at = self._clock() + m.keep_alive
        if m.keep_alive == 0:
            self._retire(m, "keep_alive 0")
        else:
            m.timer = asyncio.get_running_loop().call_later(m.keep_alive, self._on_timer, m)

    def _on_timer(self, m: _Model) -> None:
        m.timer = None
        if m.refs or m.expires_at is None or self._models.get(m.name) is not m:
            return
        remaining = m.expires_at - self._clock()
        if remaining <= 0:
            self._retire(m, "expired")
        else:  # an injected clock may run slower than the loop's
            m.timer = asyncio.get_running_loop().call_later(remaining, self._on_timer, m)

    def _cancel_timer(self, m: _Model) -> None:
        if m.timer is not None:
            m.timer.cancel()
            m.timer = None

    # -- plumbing --------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _changed(self) -> None:
        """Wait for the next change that may free a place or finish a drain."""
        await self._change.wait()

    def _notify(self) -> None:
        self._change.set()
        self._change = asyncio.Event()


class Lease:
    """One slot of a loaded model, held until the ``async with`` block ends.

    Use :meth:`run` and :meth:`stream` one at a time: the lease owns one executor
    thread. Leaving the block stops any unfinished stream and waits for every
    thread it started to return before the slot is freed.
    """

    def __init__(self, m: _Model, started: float, *, side: bool = False,
                 token_timers: Callable[[str], TokenTimer] | None = None) -> None:
        executor = m.side_executor if side else m.executor
        assert m.backend is not None and executor is not None
        self.model = m.name
        self.plan = m.plan
        self.backend: Backend = m.backend
        self.started = started
        self._executor = executor
        self._threads: set[asyncio.Future[Any]] = set()
        self._streams: list[TokenStream] = []
        self._ended = False
        self._token_timers = token_timers

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` on the model's executor. If the caller is
        cancelled, the cancellation takes effect only once ``fn`` has returned."""
        if self._ended:
            raise RuntimeError("this lease has ended")
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        self._threads.add(future)
        future.add_done_callback(self._threads.discard)
        await wait_through_cancellation(future)
        return future.result()

    def stream(self, prompt: Prompt, params: GenerationParams) -> TokenStream:
        """Generate on the model's executor, streaming events to the loop (see
        :class:`TokenStream`); ``generate``'s own exception surfaces from the first
        ``__anext__``."""
        if self._ended:
            raise RuntimeError("this lease has ended")
        timer = self._token_timers(self.model) if self._token_timers else None
        stream = TokenStream(self.backend, self._executor, prompt, params, timer)
        self._streams.append(stream)
        return stream

    def _interrupt(self) -> None:
        """Ask running generations to finish early (``Done`` still comes)."""
        for stream in self._streams:
            stream.cancel.set()

    async def _drain(self) -> None:
        self._ended = True
        threads = list(self._threads)
        threads += [t for t in (stream.stop() for stream in self._streams) if t is not None]
        interrupted = False
        for future in threads:  # wait for all even when cancelled, then re-raise
            try:
                await wait_through_cancellation(future)
            except asyncio.CancelledError:
                interrupted = True
        if interrupted:
            raise asyncio.CancelledError


def _close_orphan(future: asyncio.Future[tuple[Backend, int, int]]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result()[0].close()


SCHEDULER = web.AppKey("scheduler", Scheduler)
"""The node's model scheduler: ``app[SCHEDULER]``."""
