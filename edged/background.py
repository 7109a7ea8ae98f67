"""Work that must finish whatever happens to its caller: background tasks cancelled and
awaited at the end of an app context, and futures awaited through cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


@asynccontextmanager
async def running(tasks: list[asyncio.Task[Any]]) -> AsyncIterator[None]:
    """Yield while ``tasks`` run; then cancel them and wait until every one has ended."""
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_through_cancellation(future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` is done even if the caller is cancelled meanwhile; then
    re-raise that cancellation (the future's own outcome is left to the caller)."""
    interrupted = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
