"""The scheduler with the fake backend: loads, queues, keep-alive, eviction, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from edged.errors import ModelNotFound, NotReady, Overloaded
from edged.scheduler import LoadPlan, Scheduler
from runtimes import BackendError, ContextLengthExceeded, Delta, Done, GenerationParams, ModelSpec
from runtimes.fake import FakeBackend
from tests.support.waiting import stays_true, wait_until

MODELS: dict[str, dict[str, Any]] = {
    "a": {},
    "b": {},
    "c": {},
    "pair": {"max_concurrency": 2},
    "slow": {"token_delay": 0.05},
    "duo": {"token_delay": 0.02, "max_concurrency": 2},
    "loady": {"load_delay": 0.1},
    "broken": {"fail": True},
    "sticky": {},  # the test holds its close open with a gate (Loader.close_gates)
    "deaf": {"token_delay": 0.05, "ignore_cancel": True},
    "apart": {"embeds_apart": True},  # embeds in a context of its own, as llama.cpp
}


def resolve(name: str) -> LoadPlan:
    if name not in MODELS:
        raise ModelNotFound(f"model {name!r} not found")
    context = 8 if name == "tiny" else 2048
    return LoadPlan("fake", ModelSpec(name, Path("unused.gguf"), context_length=context,
                                      options=MODELS[name]))


MODELS["tiny"] = {}
GATE_TIMEOUT_S = 30.0  # a gate nobody opens fails the backend call instead of hanging


class RecordingFake(FakeBackend):
    """The fake backend, also recording cancel events and peak concurrency."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.cancels: list[threading.Event] = []
        self.peak = 0
        self.closing = False
        self.close_gate: threading.Event | None = None  # close waits for it when set
        self.generate_gate: threading.Event | None = None  # each event waits for it when set

    @property
    def embeds_apart(self) -> bool:
        return bool(self.spec.options.get("embeds_apart"))

    def close(self) -> None:
        self.closing = True
        if self.close_gate is not None and not self.close_gate.wait(GATE_TIMEOUT_S):
            raise RuntimeError("the test never let the close finish")
        super().close()

    def generate(self, prompt: Any, params: GenerationParams,
                 cancel: threading.Event) -> Iterator[Delta | Done]:
        self.cancels.append(cancel)
        if self.spec.options.get("ignore_cancel"):  # a backend that never checks it
            return super().generate(prompt, params, threading.Event())
        return super().generate(prompt, params, cancel)

    def _run(self, *args: Any) -> Iterator[Delta | Done]:
        inner = cast(Generator[Delta | Done, None, None], super()._run(*args))
        try:
            for event in inner:
                with self._lock:
                    self.peak = max(self.peak, self.active)
                gate = self.generate_gate
                if gate is not None and not gate.wait(GATE_TIMEOUT_S):
                    raise RuntimeError("the test never let the generation go on")
                yield event
        finally:
            inner.close()


class Loader:
    """Counts loads, keeps every backend, and notes which were open at each load."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.backends: dict[str, list[RecordingFake]] = {}
        self.open_at_load: dict[str, list[str]] = {}
        self.threads: list[str] = []
        self.close_gates: dict[str, threading.Event] = {}  # model name: its close waits
        self.generate_gates: dict[str, threading.Event] = {}  # model name: its tokens wait

    def __call__(self, runtime: str, spec: ModelSpec) -> RecordingFake:
        assert runtime == "fake"
        self.threads.append(threading.current_thread().name)
        self.loads.append(spec.name)
        self.open_at_load[spec.name] = sorted(
            name for name, bs in self.backends.items() if any(not b.closed for b in bs))
        if spec.options.get("fail"):
            # A failing load that takes a while, as real ones do. Nothing is ordered by
            # it: every waiter joins the load on the loop before this thread starts.
            time.sleep(0.05)
            raise BackendError("the weights are corrupt")
        backend = RecordingFake.load(spec)
        assert isinstance(backend, RecordingFake)
        backend.close_gate = self.close_gates.get(spec.name)
        backend.generate_gate = self.generate_gates.get(spec.name)
        self.backends.setdefault(spec.name, []).append(backend)
        return backend

    def last(self, name: str) -> RecordingFake:
        return self.backends[name][-1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Make = Callable[..., tuple[Scheduler, Loader, Clock]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[Scheduler] = []

    def factory(**options: Any) -> tuple[Scheduler, Loader, Clock]:
        loader, clock = Loader(), Clock()
        options.setdefault("clock", clock)
        scheduler = Scheduler(resolve, loader=loader, **options)
        made.append(scheduler)
        return scheduler, loader, clock

    yield factory
    for scheduler in made:  # bounded, so that a failed test cannot hang the run
        await asyncio.wait_for(scheduler.close(), 5)


async def use(s: Scheduler, model: str, **options: Any) -> list[float]:
    async with s.lease(model, **options) as lease:
        return (await lease.run(lease.backend.embed, ["x"])).vectors[0]


async def collect(s: Scheduler, model: str, prompt: str = "hi",
                  max_tokens: int = 3) -> list[Delta | Done]:
    async with s.lease(model) as lease:
        return [e async for e in lease.stream(prompt, GenerationParams(max_tokens=max_tokens))]


async def hold(s: Scheduler, model: str, entered: asyncio.Event, release: asyncio.Event,
               **options: Any) -> None:
    async with s.lease(model, **options):
        entered.set()
        await release.wait()


def started(coro: Awaitable[Any]) -> asyncio.Task[Any]:
    return asyncio.ensure_future(coro)


def names(s: Scheduler) -> list[str]:
    return [m.name for m in s.loaded()]


def model_threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix + "_")]


async def test_loads_on_demand_once_under_concurrency(make: Make) -> None:
    s, loader, _ = make()
    assert s.loaded() == []
    vectors = await asyncio.gather(*(use(s, "loady") for _ in range(5)))
    assert loader.loads == ["loady"]
    assert all(v == vectors[0] for v in vectors)
    assert loader.threads[0].startswith("edged-load")  # never the event loop's thread
    [model] = s.loaded()
    assert (model.name, model.runtime, model.memory_bytes) == ("loady", "fake", 1024)
    assert (model.active, model.queued) == (0, 0)


async def test_run_uses_the_models_own_executor(make: Make) -> None:
    s, _, _ = make()
    async with s.lease("a") as lease:
        thread = await lease.run(lambda: threading.current_thread().name)
    assert thread.startswith("edged-a_")


async def test_default_loader_is_the_runtime_registry() -> None:
    s = Scheduler(resolve)
    await s.start()
    try:
        async with s.lease("a") as lease:
            assert type(lease.backend) is FakeBackend
            assert lease.backend.runtime == "fake"
    finally:
        await s.close()


async def test_lru_idle_model_is_unloaded_before_a_new_load(make: Make) -> None:
    s, loader, clock = make(max_loaded_models=2)
    for model in ("a", "b", "a"):  # b ends up least recently used
        await use(s, model)
        clock.now += 1
    await use(s, "c")
    assert names(s) == ["a", "c"]
    assert loader.open_at_load["c"] == ["a"]  # b was closed before c loaded
    assert loader.last("b").closed and not loader.last("a").closed
    await use(s, "b")
    assert names(s) == ["b", "c"] and loader.last("a").closed


async def test_busy_models_are_not_evicted(make: Make) -> None:
    s, loader, clock = make(max_loaded_models=1)
    entered, release = asyncio.Event(), asyncio.Event()
    holder = started(hold(s, "a", entered, release))
    await entered.wait()
    waiting = started(use(s, "b"))
    # A negative check: the scheduler shows no state for "b waits for a place", so watch
    # for a while that b neither loads nor evicts a (a retired model's expiry reads "now").
    await stays_true(lambda: not waiting.done() and loader.loads == ["a"]
                     and names(s) == ["a"] and not loader.last("a").closed
                     and s.loaded()[0].expires_at != clock.now, seconds=0.1,
                     what="b waits; the busy a is neither evicted nor closed")
    release.set()
    await holder
    await waiting
    assert loader.loads == ["a", "b"] and names(s) == ["b"]
    assert loader.open_at_load["b"] == [] and loader.last("a").closed


async def test_an_eviction_in_progress_is_not_repeated(make: Make) -> None:
    s, loader, clock = make(max_loaded_models=2)
    close_gate = loader.close_gates["sticky"] = threading.Event()
    await use(s, "sticky")
    clock.now += 1
    entered, release = asyncio.Event(), asyncio.Event()
    holder = started(hold(s, "b", entered, release))
    await entered.wait()
    try:
        loading = started(use(s, "c"))  # evicts sticky, the only idle model
        await wait_until(lambda: loader.last("sticky").closing, what="sticky starts closing")
        release.set()
        await holder  # b goes idle while sticky is still closing (held by the gate)
        assert not loader.last("sticky").closed
    finally:
        close_gate.set()  # the scheduler has seen b go idle: it woke before this test did
    await loading
    assert names(s) == ["b", "c"] and not loader.last("b").closed


async def test_keep_alive_default_and_override(make: Make) -> None:
    s, loader, clock = make(default_keep_alive=300)
    async with s.lease("a"):
        [busy] = s.loaded()
        assert (busy.active, busy.expires_at) == (1, 1300.0)  # projected while busy
    [idle] = s.loaded()
    assert (idle.active, idle.expires_at, idle.last_used) == (0, 1300.0, 1000.0)
    clock.now = 1299.5
    assert await s.unload_expired() == []
    clock.now = 1300.0
    assert await s.unload_expired() == ["a"]
    assert s.loaded() == [] and loader.last("a").closed
    await use(s, "a", keep_alive=10)
    assert s.loaded()[0].expires_at == 1310.0


async def test_negative_keep_alive_is_forever_and_latest_request_wins(make: Make) -> None:
    s, _, clock = make(default_keep_alive=300)
    await use(s, "a", keep_alive=-1)
    assert s.loaded()[0].expires_at is None
    clock.now += 1e9
    assert await s.unload_expired() == [] and names(s) == ["a"]
    await use(s, "a", keep_alive=5)
    assert s.loaded()[0].expires_at == clock.now + 5
    await use(s, "a")  # no keep_alive: the default again, as in Ollama
    assert s.loaded()[0].expires_at == clock.now + 300


async def test_keep_alive_zero_unloads_when_the_last_request_ends(make: Make) -> None:
    s, loader, _ = make()
    first = (asyncio.Event(), asyncio.Event())
    second = (asyncio.Event(), asyncio.Event())
    one = started(hold(s, "pair", *first, keep_alive=0))
    two = started(hold(s, "pair", *second, keep_alive=0))
    await first[0].wait()
    await second[0].wait()
    first[1].set()
    await one
    # A negative check: no state tells "the scheduler decided to keep it" (a retiring and
    # a busy keep_alive 0 model both read expires_at == now), so watch for a while.
    await stays_true(lambda: names(s) == ["pair"] and not loader.last("pair").closed,
                     seconds=0.05, what="pair stays loaded while the second request runs")
    second[1].set()
    await two
    await wait_until(lambda: s.loaded() == [])
    assert loader.last("pair").closed


async def test_expiry_timer_and_new_lease_cancels_it() -> None:
    loader = Loader()
    s = Scheduler(resolve, loader=loader, default_keep_alive=0.15)
    try:
        await use(s, "a")
        entered, release = asyncio.Event(), asyncio.Event()
        holder = started(hold(s, "a", entered, release))
        await entered.wait()
        # The real keep_alive timer is under test: sleeping on the loop past its due time
        # (0.15 s after the first request) guarantees it ran, however slow the machine.
        await asyncio.sleep(0.3)  # past the first expiry: the lease cancelled it
        assert names(s) == ["a"]
        release.set()
        await holder
        assert names(s) == ["a"]
        await wait_until(lambda: s.loaded() == [])
        assert loader.last("a").closed and loader.loads == ["a"]
        await wait_until(lambda: model_threads("edged-a") == [])  # executor shut down
    finally:
        await s.close()


async def test_full_queue_is_overloaded_and_nothing_else_is_affected(make: Make) -> None:
    s, _, clock = make(max_queue=2)
    entered, release = asyncio.Event(), asyncio.Event()
    holder = started(hold(s, "a", entered, release))
    await entered.wait()
    clock.now += 10  # the held request takes 10 s on the scheduler's clock
    release.set()
    await holder
    entered, release = asyncio.Event(), asyncio.Event()
    holder = started(hold(s, "a", entered, release))
    await entered.wait()
    waiters = [started(use(s, "a")) for _ in range(2)]
    await wait_until(lambda: s.loaded()[0].queued == 2)
    with pytest.raises(Overloaded) as refused:
        async with s.lease("a"):
            pytest.fail("a request beyond the queue bound got a slot")
    # two waiting ahead plus this one, one at a time, ~10 s each
    assert refused.value.retry_after == 30
    assert refused.value.headers == {"Retry-After": "30"} and refused.value.status == 503
    assert s.loaded()[0].queued == 2
    assert len(await use(s, "b")) == 8  # another model is served meanwhile
    release.set()
    await holder
    assert all(len(v) == 8 for v in await asyncio.gather(*waiters))
    assert [(m.active, m.queued) for m in s.loaded()] == [(0, 0), (0, 0)]


async def test_retry_after_is_at_least_one_second(make: Make) -> None:
    s, _, _ = make(max_queue=0)
    await use(s, "a")  # the clock did not move: holds of 0 s
    entered, release = asyncio.Event(), asyncio.Event()
    holder = started(hold(s, "a", entered, release))
    await entered.wait()
    with pytest.raises(Overloaded) as refused:
        await use(s, "a")
    assert refused.value.retry_after == 1
    release.set()
    await holder


async def test_waiting_requests_are_served_fifo(make: Make) -> None:
    s, _, _ = make()
    entered, release = asyncio.Event(), asyncio.Event()
    holder = started(hold(s, "a", entered, release))
    await entered.wait()
    order: list[int] = []

    async def worker(index: int) -> None:
        async with s.lease("a"):
            order.append(index)
            await asyncio.sleep(0)  # a yield while holding the slot (not a timing)

    workers = []
    for index in range(5):
        workers.append(started(worker(index)))
        await wait_until(lambda n=index + 1: s.loaded()[0].queued == n)  # type: ignore[misc]
    release.set()
    await asyncio.gather(holder, *workers)
    assert order == [0, 1, 2, 3, 4]


async def test_breaking_out_of_a_stream_cancels_and_waits_for_the_backend(make: Make) -> None:
    s, _, _ = make()
    events: list[Delta | Done] = []
    async with s.lease("slow") as lease:
        backend = lease.backend
        assert isinstance(backend, RecordingFake)
        async for event in lease.stream("hello", GenerationParams(max_tokens=1000)):
            events.append(event)
            if len(events) == 2:
                break
    assert backend.active == 0  # the thread had returned before the slot was freed
    assert backend.cancels[0].is_set()
    assert all(isinstance(e, Delta) for e in events)
    assert s.loaded()[0].active == 0
    following = await collect(s, "slow", max_tokens=2)
    assert following[-1] == Done(prompt_tokens=2, completion_tokens=2, finish_reason="length")


async def test_a_backend_ignoring_cancel_is_stopped_between_tokens(make: Make) -> None:
    s, loader, _ = make()
    async with s.lease("deaf") as lease:
        async for _ in lease.stream("hello", GenerationParams(max_tokens=1000)):
            break
        left_at = time.monotonic()
    assert time.monotonic() - left_at < 1.0  # not the 50 s the whole generation takes
    assert loader.last("deaf").active == 0


async def test_cancelled_consumer_frees_the_slot_only_after_the_backend_returned(
    make: Make,
) -> None:
    s, loader, _ = make()
    first_token = asyncio.Event()

    async def consume() -> None:
        async with s.lease("slow") as lease:
            async for _ in lease.stream("hello", GenerationParams(max_tokens=1000)):
                first_token.set()

    seen_active: list[int] = []

    async def next_request() -> None:
        async with s.lease("slow") as lease:
            seen_active.append(lease.backend.active)  # type: ignore[attr-defined]

    consumer = started(consume())
    await first_token.wait()
    follower = started(next_request())
    await wait_until(lambda: s.loaded()[0].queued == 1)
    consumer.cancel()  # as when the HTTP client disconnects
    with pytest.raises(asyncio.CancelledError):
        await consumer
    backend = loader.last("slow")
    assert backend.cancels[0].is_set()
    await follower
    assert seen_active == [0]
    assert backend.active == 0 and s.loaded()[0].active == 0


async def test_aclose_stops_the_stream(make: Make) -> None:
    s, _, _ = make()
    async with s.lease("slow") as lease:
        stream = lease.stream("hello", GenerationParams(max_tokens=1000))
        assert isinstance(await anext(stream), Delta)
        await stream.aclose()
        assert lease.backend.active == 0  # type: ignore[attr-defined]
        with pytest.raises(StopAsyncIteration):
            await anext(stream)


async def test_generate_error_surfaces_on_first_anext_and_frees_the_slot(make: Make) -> None:
    s, _, _ = make()
    async with s.lease("tiny") as lease:
        stream = lease.stream("far too long for eight", GenerationParams())
        with pytest.raises(ContextLengthExceeded):
            await anext(stream)
    assert s.loaded()[0].active == 0
    events = await collect(s, "tiny", prompt="hi", max_tokens=2)
    assert [type(e) for e in events] == [Delta, Delta, Done]


async def test_failed_load_reaches_every_waiter_and_leaves_nothing(make: Make) -> None:
    s, loader, _ = make()
    results = await asyncio.gather(*(use(s, "broken") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, BackendError) and str(r) == "the weights are corrupt"
               for r in results)
    assert loader.loads == ["broken"] and s.loaded() == []
    with pytest.raises(BackendError):
        await use(s, "broken")  # a later request tries again
    assert loader.loads == ["broken", "broken"]
    with pytest.raises(ModelNotFound):
        await use(s, "missing")
    with pytest.raises(ModelNotFound):
        await s.load("missing")
    assert s.loaded() == [] and loader.loads == ["broken", "broken"]
    await use(s, "a")
    assert names(s) == ["a"]


async def test_executor_size_follows_max_concurrency(make: Make) -> None:
    s, loader, _ = make()
    gate = loader.generate_gates["duo"] = threading.Event()
    try:  # the generations holding the two slots wait at the gate after their first token
        duo = started(asyncio.gather(*(collect(s, "duo", max_tokens=10) for _ in range(3))))
        await wait_until(lambda: bool(s.loaded()) and s.loaded()[0].active == 2,
                         what="two requests hold duo's slots")
        assert s.loaded()[0].queued == 1
        assert len(model_threads("edged-duo")) == 2
        await wait_until(lambda: loader.last("duo").peak == 2,
                         what="two generations run at once")
    finally:
        gate.set()
    assert all(r[-1].completion_tokens == 10 for r in await duo)  # type: ignore[union-attr]
    assert loader.last("duo").peak == 2
    await asyncio.gather(*(collect(s, "slow", max_tokens=2) for _ in range(2)))
    assert loader.last("slow").peak == 1


async def test_unload_waits_for_admitted_requests(make: Make) -> None:
    s, loader, clock = make(max_loaded_models=1)
    entered, release = asyncio.Event(), asyncio.Event()
    holder = started(hold(s, "a", entered, release))
    await entered.wait()
    unloading = started(s.unload("a"))
    # A retiring model's expiry reads "now" (it would read now + 300 while merely busy).
    await wait_until(lambda: s.loaded()[0].expires_at == clock.now,
                     what="the unload detached a")
    old = loader.last("a")
    # Negative checks: nothing shows "the unload waits for the lease" or "the fresh copy
    # waits for a place", so watch for a while that neither closes nor loads anything.
    await stays_true(lambda: not unloading.done() and not old.closed, seconds=0.05,
                     what="the unload waits for the admitted request")
    later = started(use(s, "a"))  # a fresh copy, loaded once the old one is gone
    await stays_true(lambda: loader.loads == ["a"] and not later.done(), seconds=0.05,
                     what="the fresh copy waits for the old one to close")
    release.set()
    await holder
    assert await unloading is True
    assert old.closed
    await later
    assert loader.loads == ["a", "a"] and names(s) == ["a"]
    assert await s.unload("a") is True and s.loaded() == []
    assert await s.unload("a") is False


async def test_load_preloads_without_a_slot(make: Make) -> None:
    s, loader, _ = make()
    await s.load("a", keep_alive=-1)
    [model] = s.loaded()
    assert (model.name, model.active, model.expires_at) == ("a", 0, None)
    await s.load("a", keep_alive=0)
    await wait_until(lambda: s.loaded() == [])
    assert loader.loads == ["a"] and loader.last("a").closed


async def test_close_stops_streams_refuses_queued_and_unloads_all(make: Make) -> None:
    s, loader, _ = make()
    await use(s, "a")
    first_token = asyncio.Event()

    async def consume() -> list[Delta | Done]:
        events: list[Delta | Done] = []
        async with s.lease("slow") as lease:
            async for event in lease.stream("hello", GenerationParams(max_tokens=1000)):
                events.append(event)
                first_token.set()
        return events

    consumer = started(consume())
    await first_token.wait()
    queued = started(use(s, "slow"))
    await wait_until(lambda: s.loaded()[1].queued == 1)
    await s.close()
    events = await consumer
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "cancelled"
    with pytest.raises(NotReady):
        await queued
    assert s.loaded() == []
    assert loader.last("a").closed and loader.last("slow").closed
    with pytest.raises(NotReady):
        await use(s, "a")
    await wait_until(lambda: model_threads("edged-a") == model_threads("edged-slow") == [])


@pytest.mark.parametrize(("model", "waits"), [("apart", False), ("a", True)])
async def test_embeddings_wait_behind_generations_only_without_their_own_context(
        make: Make, model: str, waits: bool) -> None:
    s, loader, _ = make()
    loader.generate_gates[model] = gate = threading.Event()
    try:
        streaming = asyncio.create_task(collect(s, model, max_tokens=2))
        await wait_until(lambda: [(m.active, m.queued) for m in s.loaded()] == [(1, 0)],
                         what="the generation holding the only slot")
        embedding = asyncio.create_task(use(s, model, embedding=True))
        if waits:
            await wait_until(lambda: s.loaded()[0].queued == 1, what="the embedding queued")
            assert not embedding.done()
        else:
            assert len(await asyncio.wait_for(embedding, 10)) > 0  # beside the generation
            assert [(m.active, m.queued) for m in s.loaded()] == [(1, 0)]
    finally:
        gate.set()
    await asyncio.wait_for(asyncio.gather(streaming, embedding), 10)
