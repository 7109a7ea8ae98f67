"""Waiting on state in async tests, bounded: never order events by sleeping.

``wait_until`` polls a condition until it holds and fails with a clear message at a
deadline (generous, for loaded CI machines: a passing test returns as soon as the
state is reached, so only a failing one ever waits that long).

``stays_true`` is for the rare negative check ("nothing happens") where the code under
test exposes no state that marks the point after which it would have acted: it checks
the condition throughout a short window. A slow machine can only make it miss a bug,
never fail a correct run.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.005


@overload
async def wait_until(condition: Callable[[], Awaitable[T]], *, what: str = "",
                     timeout: float = ..., interval: float = ...) -> T: ...


@overload
async def wait_until(condition: Callable[[], T], *, what: str = "",
                     timeout: float = ..., interval: float = ...) -> T: ...


async def wait_until(condition: Callable[[], Any], *, what: str = "",
                     timeout: float = DEFAULT_TIMEOUT_S,
                     interval: float = POLL_INTERVAL_S) -> Any:
    """Poll ``condition`` (a function, or one returning an awaitable) until its value is
    truthy and return that value; after ``timeout`` seconds fail, naming ``what`` and
    the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(condition, "__qualname__", repr(condition))
            raise AssertionError(f"timed out after {timeout} s waiting until {name} "
                                 f"(last value: {value!r})")
        await asyncio.sleep(interval)  # the poll interval, not an ordering


async def stays_true(condition: Callable[[], object], *, seconds: float, what: str = "",
                     interval: float = POLL_INTERVAL_S) -> None:
    """Assert that ``condition()`` holds now and at every poll for ``seconds``."""
    name = what or getattr(condition, "__qualname__", repr(condition))
    deadline = time.monotonic() + seconds
    while True:
        assert condition(), f"no longer true: {name}"
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(interval)
