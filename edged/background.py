"""Background tasks that live as long as an app context: cancelled and awaited at its end."""

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
