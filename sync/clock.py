"""The one wall clock in unix milliseconds, shared by the node, the fleet and ``sync``.

Receipts, checkpoints, signed requests and journal rows all stamp time this way; code that
needs a settable clock takes a ``Callable[[], int]`` defaulting to :func:`unix_millis`.
It lives in ``sync`` (not ``edged``) because ``sync`` may not import ``edged``.
"""

from __future__ import annotations

import time


def unix_millis() -> int:
    """Unix time in whole milliseconds."""
    return time.time_ns() // 1_000_000
