"""The event-loop watchdog of the in-process HTTP tests (tests/support/loop_watchdog.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.loop_watchdog import (
    BLOCKED,
    GIL,
    ROOT,
    RUNNING,
    UNKNOWN,
    Frame,
    LoopWatchdog,
    Stall,
    Tick,
    _SchedStat,
    _Syscall,
    asleep_blocking_ns,
    gil_wait_ns,
)

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
HERE = Path(__file__).resolve()


def _line_of(marker: str) -> int:
    return next(number for number, line in enumerate(HERE.read_text().splitlines(), 1)
                if marker in line and "_line_of" not in line)


async def blocking(request: web.Request) -> web.Response:
    time.sleep(0.2)  # BLOCKS-THE-LOOP
    return web.Response(text="slept")


async def off_the_loop(request: web.Request) -> web.Response:
    await asyncio.to_thread(time.sleep, 0.2)
    return web.Response(text="slept")


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:  # SPINS-ON-A-CPU
        pass


async def busy_for_30ms_of_cpu(request: web.Request) -> web.Response:
    _spin(0.030)
    return web.Response(text="spun")


@pytest.fixture
async def watched(aiohttp_client: ClientFactory) -> Any:
    async for watching in _watching(aiohttp_client, warm=False):
        yield watching


@pytest.fixture
async def warm_and_watched(aiohttp_client: ClientFactory) -> Any:
    """``watched``, after requests made before the watchdog starts: the threads a first
    request starts (the loop's executor) then run before any CPU is pinned. One
    started later, under ``hogs_on_the_loop_cpu``, inherits the loop thread's one CPU and
    waits behind the hogs inside ``Thread.start``, which the watchdog sees as the loop
    asleep, not preempted (a rare failure of the test below on a fresh machine)."""
    async for watching in _watching(aiohttp_client, warm=True):
        yield watching


async def _watching(aiohttp_client: ClientFactory, *, warm: bool) -> Any:
    app = web.Application()
    app.router.add_get("/blocking", blocking)
    app.router.add_get("/off", off_the_loop)
    app.router.add_get("/cpu", busy_for_30ms_of_cpu)
    client = await aiohttp_client(app)
    if warm:  # an executor thread started, a connection open, the handler's code warm
        for path in ("/off", "/cpu"):
            assert (await client.get(path)).status == 200
    watchdog = LoopWatchdog(asyncio.get_running_loop())
    watchdog.start()
    try:
        yield client, watchdog
    finally:
        watchdog.stop()


async def test_a_handler_that_sleeps_on_the_loop_is_caught_and_named(watched: Any) -> None:
    client, watchdog = watched
    reply = await client.get("/blocking")
    assert reply.status == 200
    await asyncio.sleep(0)
    stalls = [stall for stall in watchdog.stalls
              if stall.location is not None and stall.location.name == "blocking"]
    assert len(stalls) == 1, watchdog.stalls
    stall: Stall = stalls[0]
    assert stall.blocked_s >= 0.15
    assert stall.location is not None
    assert stall.location.filename == str(HERE)
    assert stall.location.name == "blocking"
    assert stall.location.lineno == _line_of("BLOCKS-THE-LOOP")
    described = stall.describe()
    assert f"tests/test_loop_watchdog.py:{_line_of('BLOCKS-THE-LOOP')} in blocking" in described
    assert stall.cpu_s < 0.1  # it slept: blocked, but not on a CPU


async def test_sleeping_in_a_thread_is_not_blocking(watched: Any) -> None:
    client, watchdog = watched
    replies = await asyncio.gather(*(client.get("/off") for _ in range(3)))
    assert [reply.status for reply in replies] == [200] * 3
    assert watchdog.stalls == []


async def test_the_tests_own_work_on_the_loop_is_set_apart(watched: Any) -> None:
    """Building a big input in the test body blocks no request: listed, not counted."""
    client, watchdog = watched
    await asyncio.sleep(0)
    _spin(0.1)  # THE-TEST-ITSELF
    await asyncio.sleep(0.01)
    assert (await client.get("/off")).status == 200
    assert watchdog.stalls == []
    assert len(watchdog.by_the_test) == 1
    assert str(watchdog.by_the_test[0].location).startswith(
        f"tests/test_loop_watchdog.py:{_line_of('SPINS-ON-A-CPU')} in _spin")


def _stack(*frames: tuple[str, str, bool]) -> tuple[Frame, ...]:
    """Frames innermost first, down to asyncio's Handle._run."""
    run = Frame(asyncio.events.__file__, 80, "_run")
    return (*(Frame(str(ROOT / path) if not path.startswith("/") else path, 1, name, is_async)
              for path, name, is_async in frames), run)


AIOHTTP = str(Path(web.__file__).parent / "web_protocol.py")


@pytest.mark.parametrize(("stack", "by_the_test"), [
    # the test signs receipts to push: product code, called synchronously by the test
    (_stack(("attribution/receipt.py", "finalise", False),
            ("edged/devtools/simulated_node.py", "append", False),
            ("tests/edged/fleet/test_api.py", "test_push", True)), True),
    # a fixture builds an app (edged serve does that before its loop runs)
    (_stack(("edged/app.py", "create_app", False),
            ("tests/edged/conftest.py", "client", True)), True),
    # the test awaits a product coroutine that blocks
    (_stack(("edged/ledger.py", "append", False), ("edged/scheduler.py", "run", True),
            ("tests/edged/test_scheduler.py", "test_run", True)), False),
    # a request handler, even one a test defined
    (_stack(("tests/edged/http/test_exchange.py", "handler", True),
            (AIOHTTP, "_handle_request", True)), False),
    # an app's startup context, run while a fixture starts the server
    (_stack(("edged/fleet/app.py", "chain_adapter", False),
            ("edged/fleet/app.py", "_fleet_service", True),
            (AIOHTTP, "startup", True), ("tests/edged/fleet/test_settlement.py", "fleet", True)),
     False),
])
def test_what_counts_as_the_tests_own_work(stack: tuple[Frame, ...], by_the_test: bool) -> None:
    stall = Stall(wall_s=0.1, run_delay_s=0.0, cpu_s=0.1, gc_s=0.0, samples=(stack, stack))
    assert stall.by_the_test is by_the_test
    no_samples = Stall(wall_s=0.1, run_delay_s=0.0, cpu_s=0.1, gc_s=0.0, samples=())
    assert not no_samples.by_the_test  # nothing shows whose it was: counted


MS = 1_000_000


def _ticks(*intervals: tuple[float, float, float, str]) -> list[Tick]:
    """Ticks 10 ms apart; each interval: (ms waiting for a CPU, ms run, ms late, doing)."""
    ticks: list[Tick] = [(0, 0, 0, 0, RUNNING)]
    for delay, ran, late, doing in intervals:
        at, cpu, run_delay = ticks[-1][:3]
        ticks.append((at + 10 * MS, cpu + int(ran * MS), run_delay + int(delay * MS),
                      int(late * MS), doing))
    return ticks


@pytest.mark.parametrize(("intervals", "gil_ms"), [
    ([(0, 10, 0, RUNNING)] * 3, 0),  # ran throughout: no sleep to explain
    ([(6, 4, 0, RUNNING)] * 3, 0),  # the rest of the time it waited for a CPU
    ([(0, 0, 0, BLOCKED)] * 3, 0),  # asleep in a blocking call
    ([(0, 0, 0, GIL)] * 3, 30),  # caught waiting for the GIL
    ([(0, 5, 0, RUNNING)] * 3, 15),  # ran half of each interval: Python sharing the GIL
    ([(0, 1, 1, RUNNING)] * 3, 0),  # a call slept through, then a little work
    ([(0, 0, 9, RUNNING)] * 3, 30),  # another thread held the GIL from the watchdog too
    ([(0, 0, 0, BLOCKED), (0, 5, 0, RUNNING), (0, 0, 0, GIL)], 15),
])
def test_the_gil_wait_estimate(intervals: list[tuple[float, float, float, str]],
                               gil_ms: int) -> None:
    ticks = _ticks(*intervals)
    assert gil_wait_ns(ticks, 0, ticks[-1][0]) == gil_ms * MS


@pytest.mark.parametrize(("intervals", "asleep_ms"), [
    ([(0, 10, 0, RUNNING)] * 3, 0),  # ran throughout: no sleep at all
    ([(0, 0, 0, BLOCKED)] * 3, 30),  # asleep in a blocking call throughout
    ([(0, 0, 0, GIL)] * 3, 0),  # waiting for the GIL is no blocking call
    ([(0, 0, 9, RUNNING)] * 3, 0),  # unexplained sleep (the watchdog was starved) is excused
    ([(4, 2, 0, BLOCKED), (0, 0, 0, GIL), (0, 10, 0, RUNNING)], 4),
])
def test_blocking_sleep_counts_only_where_the_kernel_says_so(
        intervals: list[tuple[float, float, float, str]], asleep_ms: int) -> None:
    ticks = _ticks(*intervals)
    assert asleep_blocking_ns(ticks, 0, ticks[-1][0]) == asleep_ms * MS


def test_a_stall_counts_cpu_time_and_blocking_sleep_only() -> None:
    gil_starved = Stall(wall_s=0.1, run_delay_s=0.015, cpu_s=0.002, gc_s=0.0, samples=(),
                        gil_wait_s=0.001, asleep_blocking_s=0.0)
    assert gil_starved.blocked_s == pytest.approx(0.002)
    sleeping = Stall(wall_s=0.2, run_delay_s=0.0, cpu_s=0.001, gc_s=0.0, samples=(),
                     asleep_blocking_s=0.19)
    assert sleeping.blocked_s == pytest.approx(0.191)
    # Asleep while asyncio's executor starts a worker thread that waits for a CPU.
    starting = (Frame(threading.__file__, 990, "start"),
                Frame(asyncio.base_events.__file__, 850, "run_in_executor"))
    starting_a_thread = Stall(wall_s=0.08, run_delay_s=0.0, cpu_s=0.001, gc_s=0.0,
                              samples=(starting,), asleep_blocking_s=0.077)
    assert starting_a_thread.blocked_s == pytest.approx(0.001)
    elsewhere = Stall(wall_s=0.08, run_delay_s=0.0, cpu_s=0.001, gc_s=0.0,
                      samples=(starting, starting[1:]), asleep_blocking_s=0.077)
    assert elsewhere.blocked_s == pytest.approx(0.078)


def test_only_the_part_of_an_interval_within_the_trip_counts() -> None:
    ticks = _ticks(*[(0, 0, 0, GIL)] * 3)
    assert gil_wait_ns(ticks, 5 * MS, 25 * MS) == 20 * MS
    assert gil_wait_ns(ticks, 30 * MS, 40 * MS) == 0


def test_what_the_loop_thread_is_doing_is_read_from_the_kernel() -> None:
    syscall = _Syscall(threading.get_native_id())
    if syscall.doing() == UNKNOWN:
        pytest.skip("no /proc/self/task/<tid>/syscall or no _PyRuntime symbol")
    seen: list[str] = []
    lock = threading.Lock()
    lock.acquire()

    def watch() -> None:
        time.sleep(0.05)
        seen.append(syscall.doing())  # main thread in time.sleep
        lock.release()
        time.sleep(0.05)
        seen.append(syscall.doing())  # main thread waiting for the lock again
        lock.release()

    try:
        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(0.1)  # the first reading
        lock.acquire()  # waits 50 ms for the watcher: the second
        lock.acquire()
        watcher.join()
    finally:
        syscall.close()
    assert seen == [BLOCKED, BLOCKED]


HOG = """
import os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
print("spinning", flush=True)
while True:
    pass
"""


@pytest.fixture
def hogs_on_the_loop_cpu() -> Iterator[None]:
    """Pins this (the loop's) thread and two CPU-burning processes to one CPU."""
    if not hasattr(os, "sched_setaffinity") or _SchedStat().run_delay_ns() is None:
        pytest.skip("needs Linux CPU affinity and /proc/<pid>/task/<tid>/schedstat")
    before = os.sched_getaffinity(0)  # 0: this thread, on Linux
    cpu = min(before)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG, str(cpu)], stdout=subprocess.PIPE,
                             text=True) for _ in range(2)]
    try:
        for hog in hogs:
            assert hog.stdout is not None and hog.stdout.readline().strip() == "spinning"
        os.sched_setaffinity(0, {cpu})
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
            if hog.stdout is not None:
                hog.stdout.close()


async def test_a_preempted_loop_is_not_blocked(warm_and_watched: Any,
                                              hogs_on_the_loop_cpu: None) -> None:
    """30 ms of work shares its CPU with two hogs: about 90 ms of wall time, not blocked."""
    client, watchdog = warm_and_watched
    for _ in range(5):
        assert (await client.get("/cpu")).status == 200
    assert watchdog.stalls == []
    # Wall time alone would have failed this test: the loop took more than 50 ms to come
    # back, but most of that it spent waiting for the CPU the hogs were using.
    assert any(stall.wall_s >= watchdog.threshold_s and (stall.run_delay_s or 0) > 0.02
               for stall in watchdog.excused), "the hogs never delayed the loop"


INNER_TESTS = '''
import asyncio
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer


async def sleeps(request):
    time.sleep(0.2)  # INNER-BLOCK
    return web.Response()


async def off(request):
    await asyncio.to_thread(time.sleep, 0.2)
    return web.Response()


def app():
    app = web.Application()
    app.router.add_get("/sleeps", sleeps)
    app.router.add_get("/off", off)
    return app


async def test_blocks(aiohttp_client):
    client = await aiohttp_client(app())
    assert (await client.get("/sleeps")).status == 200


async def test_blocks_without_the_fixture():
    async with TestClient(TestServer(app())) as client:
        assert (await client.get("/sleeps")).status == 200


async def test_off_the_loop(aiohttp_client):
    client = await aiohttp_client(app())
    assert (await client.get("/off")).status == 200


@pytest.mark.allow_loop_blocking(reason="blocking is what this test is about")
async def test_exempt(aiohttp_client):
    client = await aiohttp_client(app())
    assert (await client.get("/sleeps")).status == 200


@pytest.mark.allow_loop_blocking
async def test_exempt_without_a_reason(aiohttp_client):
    client = await aiohttp_client(app())


async def test_blocks_in_cleanup(aiohttp_client):
    application = app()

    async def cleanup(app):
        time.sleep(0.2)  # INNER-CLEANUP

    application.on_cleanup.append(cleanup)
    client = await aiohttp_client(application)
    assert (await client.get("/off")).status == 200
'''


def test_the_fixture_fails_blocking_tests_and_honours_the_marker(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(textwrap.dedent("""
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        addopts = --strict-markers -p no:cacheprovider
        filterwarnings = error
        markers =
            allow_loop_blocking(reason): exempt from the loop watchdog
        """))
    (tmp_path / "conftest.py").write_text(
        "from tests.support.loop_watchdog import loop_watchdog, pytest_runtest_call"
        "  # noqa: F401\n")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    lines = INNER_TESTS.splitlines()
    block_line = next(n for n, line in enumerate(lines, 1) if "INNER-BLOCK" in line)
    cleanup_line = next(n for n, line in enumerate(lines, 1) if "INNER-CLEANUP" in line)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("EDGED_TEST_LOOP_BLOCK_MS", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-q", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    outcomes = {(line.split(" ")[0], line.split(" ")[1].split("::")[-1])
                for line in out.splitlines()
                if line.startswith(("PASSED ", "FAILED ", "ERROR "))}
    assert outcomes == {
        ("FAILED", "test_blocks"),
        ("FAILED", "test_blocks_without_the_fixture"),
        ("PASSED", "test_off_the_loop"),
        ("PASSED", "test_exempt"),
        ("ERROR", "test_exempt_without_a_reason"),
        ("PASSED", "test_blocks_in_cleanup"),  # its body passed,
        ("ERROR", "test_blocks_in_cleanup"),  # its teardown did not
    }, out
    assert out.count(f"/test_inner.py:{block_line} in sleeps") >= 2, out
    assert f"/test_inner.py:{cleanup_line} in cleanup" in out, out
    assert "needs reason=" in out, out
